"""Export of the DC-CNN with its data-fidelity layers: formulations, parity, metadata, providers, benchmark.

Tiny models (d2c2, 8 channels) on 16x16 images keep every export to a couple of seconds on a 2-core CPU.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from benchmarks.dft_formulations import dft_accuracy
from compressor.cli import main
from compressor.cli.export_command import export_command
from compressor.config import RunConfig
from compressor.data import build_mask
from compressor.data.dataset import normalise_kspace
from compressor.data.project_h5 import write_project_volume
from compressor.errors import InputError
from compressor.export.benchmark.report import write_benchmark
from compressor.export.benchmark.run import benchmark_models, benchmark_run
from compressor.export.exported_file import ExportMetadata, ModelOrigin
from compressor.export.graph.scanner_graph import ChannelSumConv, ScannerGraph
from compressor.export.graph.validate import AtolError, ExportValidationError, pytorch_reference
from compressor.export.runtimes import RUNTIMES, choose_runtime, open_exported
from compressor.export.runtimes.onnxruntime_provider import CPU
from compressor.export.targets.export import export_model, phantom_kspace, resolve_formulation, simulated_kspace
from compressor.io import save_json
from compressor.json_record import decode_bits, encode_bits
from compressor.masks import SamplingMask, make_mask
from compressor.models import ModelOptions, build_model
from compressor.physics import (
    MatmulDFT,
    TorchFFT,
    data_fidelity,
    dft_matrix,
    line_data_fidelity,
    line_projection,
    zero_filled,
)
from compressor.training.checkpoint import save_weights

SIZE = (16, 16)
TINY = ModelOptions(width=8)


def tiny_model(arch: str = "d2c2", seed: int = 0, options: ModelOptions = TINY):
    torch.manual_seed(seed)
    return build_model(arch, options).eval()


def column_mask(lines: list[int], shape: tuple[int, int] = SIZE) -> SamplingMask:
    """Whole columns ``lines`` (uncentred indices) sampled."""
    values = np.zeros(shape, np.float32)
    values[:, lines] = 1
    return SamplingMask(values, acceleration=shape[1] / len(lines))


def random_images(count: int, shape: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def mask() -> SamplingMask:
    return make_mask("random", 4, SIZE, seed=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mask):
    """A tiny model exported with the default ('lines') formulation, validated on one phantom slice."""
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    model = tiny_model()
    result = export_model(model, path, mask=mask, validation_kspace=phantom_kspace(mask, 1), config_key="abc123",
                          origin=ModelOrigin(role="sft_kd"))
    return model, result


# --- the DF formulations -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 8])
def test_line_projection_is_re_of_fh_diag_m_f(n):
    lines = np.array([1, 0, 1, 1, 0, 0, 1, 0][:n], dtype=np.float64)
    fourier = np.fft.fft(np.eye(n), norm="ortho")  # F[k, m] = exp(-2πi km/n)/sqrt(n)
    expected = np.real(fourier.conj().T @ np.diag(lines) @ fourier)
    projection = line_projection(torch.from_numpy(lines).float(), *dft_matrix(n))
    np.testing.assert_allclose(projection.real.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("dc_lambda", [None, 3.0])
def test_lines_equals_dft_equals_torch_fft_data_fidelity(axis, dc_lambda):
    height, width = 12, 10
    rng = np.random.default_rng(0)
    pattern = (rng.random(width if axis == -1 else height) < 0.4).astype(np.float32)
    pattern[0] = 1
    values = np.broadcast_to(pattern[None, :], (height, width)) if axis == -1 else \
        np.broadcast_to(pattern[:, None], (height, width))
    mask = torch.from_numpy(values.copy())[None, None]
    image = torch.from_numpy(rng.standard_normal((2, 1, height, width)).astype(np.float32))
    measured = torch.from_numpy(rng.standard_normal((2, 1, height, width, 2)).astype(np.float32)) * mask[..., None]
    weight = None if dc_lambda is None else torch.tensor(dc_lambda)

    via_fft = data_fidelity(image, measured, mask, TorchFFT(), weight)
    via_dft = data_fidelity(image, measured, mask, MatmulDFT(height, width), weight)
    line_dft = dft_matrix(width if axis == -1 else height)
    projection = line_projection(torch.from_numpy(pattern), *line_dft)
    via_lines = line_data_fidelity(image, zero_filled(measured), projection, axis, weight)

    np.testing.assert_allclose(via_dft.numpy(), via_fft.numpy(), atol=1e-5)
    np.testing.assert_allclose(via_lines.numpy(), via_fft.numpy(), atol=1e-5)


@pytest.mark.parametrize("formulation", ["lines", "dft", "fft"])
def test_scanner_graph_equals_trained_model_on_the_training_data_path(formulation, mask):
    """The graph's in-graph masking, zero filling and normalisation equal ``normalise_kspace`` + the model."""
    model = tiny_model()
    kspace = simulated_kspace(random_images(2), mask.values) * 37.0  # raw units: the graph must normalise
    line_axis = -1 if formulation == "lines" else None
    graph = ScannerGraph(model, SIZE, formulation, line_axis).eval()
    with torch.no_grad():
        image, scale = graph(torch.from_numpy(kspace.real.copy()), torch.from_numpy(kspace.imag.copy()),
                             torch.from_numpy(mask.values))
    reference = pytorch_reference(model, kspace, mask.values)
    expected_scale = normalise_kspace(torch.view_as_real(torch.from_numpy(kspace))[:, None]).scale[:, 0]
    np.testing.assert_allclose(scale.numpy(), expected_scale.numpy(), rtol=1e-6)
    np.testing.assert_allclose(image.numpy(), reference["image"], atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_channel_sum_conv_equals_the_convolution_it_replaces(bias):
    conv = torch.nn.Conv2d(8, 1, 3, padding=1, bias=bias)
    image = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        np.testing.assert_allclose(ChannelSumConv(conv)(image).numpy(), conv(image).numpy(), atol=1e-6)


def test_scanner_graph_rewrites_only_its_copy_of_the_single_output_convs():
    model = tiny_model()
    block = ScannerGraph(model, SIZE, "dft").cascades[0].block
    assert isinstance(block.conv2, ChannelSumConv) and type(block.conv1) is torch.nn.Conv2d  # conv1 is 1 -> 8
    assert type(model.cascades[0].block.conv2) is torch.nn.Conv2d


def test_resolve_formulation_prefers_lines_for_line_masks():
    columns = column_mask([0, 3, 5])
    rows = SamplingMask(columns.values.T.copy())
    scattered = SamplingMask(np.eye(16, dtype=np.float32) + np.roll(np.eye(16, dtype=np.float32), 1, axis=0))
    assert (resolve_formulation("auto", columns).name, resolve_formulation("auto", columns).line_axis) == ("lines", -1)
    assert resolve_formulation("auto", rows).line_axis == -2
    assert resolve_formulation("auto", scattered).name == "dft"
    with pytest.raises(InputError, match="whole lines"):
        resolve_formulation("lines", scattered)


# --- export, parity, metadata -----------------------------------------------------------------------------------

def test_export_passes_validation_well_inside_the_tolerance(exported):
    _, result = exported
    assert result.path.is_file() and result.formulation == "lines" and result.runtime.name == CPU
    assert result.max_abs_error < 1e-5 < result.tolerance == pytest.approx(1e-4 * result.max_abs_error
                                                                           / result.relative_error)
    assert result.reference_evaluator_error < 1e-5
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["tiny.onnx"]


def test_exported_graph_has_dynamic_batch_and_matches_pytorch(exported, mask):
    model, result = exported
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == ["kspace_real", "kspace_imag", "mask"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    kspace = simulated_kspace(random_images(3, seed=5), mask.values)  # exported with 1 slice, run with 3
    image, scale = open_exported(result.path, "cpu").run(kspace, mask.values)
    reference = pytorch_reference(model, kspace, mask.values)
    assert image.shape == (3, *SIZE) and scale.shape == (3,)
    np.testing.assert_allclose(image, reference["image"], atol=1e-5)
    np.testing.assert_allclose(scale, reference["scale"], rtol=1e-5)


def test_metadata_round_trip(exported, mask):
    model, result = exported
    metadata = open_exported(result.path, "cpu").metadata
    assert metadata.architecture == "d2c2" and metadata.parameters == model.num_parameters()
    assert metadata.image_size == SIZE and metadata.acceleration == 4.0
    assert metadata.mask_digest == mask.digest() and np.array_equal(metadata.mask, mask.values)
    assert (metadata.formulation, metadata.line_axis, metadata.config_key) == ("lines", -1, "abc123")
    assert metadata.model_options == TINY.to_dict() and metadata.origin.role == "sft_kd"
    properties = json.loads(json.dumps(metadata.to_properties()))
    assert ExportMetadata.from_properties(properties).to_properties() == metadata.to_properties()
    assert {"normalisation", "kspace_convention", "tool_version"} <= set(properties)


def test_mask_encoding_round_trips_odd_shapes():
    values = (np.random.default_rng(0).random((5, 7)) < 0.5).astype(np.float32)
    assert np.array_equal(decode_bits(json.loads(json.dumps(encode_bits(values))), "mask", "mask"), values)


def test_full_mask_returns_the_image_whose_kspace_it_was_given(exported):
    _, result = exported
    images = random_images(2, seed=3)
    full = np.ones(SIZE, np.float32)
    image, scale = open_exported(result.path, "cpu").run(simulated_kspace(images, full), full)
    np.testing.assert_allclose(scale, np.abs(images).max(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(image, images / scale[:, None, None], atol=1e-5)


def test_graph_ignores_kspace_outside_the_mask(exported, mask):
    """The graph applies the mask itself, so stray samples outside it change neither formulation's input."""
    _, result = exported
    full = simulated_kspace(random_images(2, seed=6), np.ones(SIZE, np.float32))
    model = open_exported(result.path, "cpu")
    np.testing.assert_allclose(model.run(full, mask.values)[0], model.run(full * mask.values, mask.values)[0],
                               atol=1e-6)


def test_conjugate_symmetric_mask_keeps_the_sampled_kspace_lines(exported):
    """Lines k and -k both sampled: the corrected k-space is Hermitian, so taking Re keeps the measurement."""
    _, result = exported
    mask = column_mask([0, 1, 15, 4, 12])  # 1 <-> 15, 4 <-> 12 mirror each other (mod 16)
    measured = simulated_kspace(random_images(2, seed=4), mask.values)
    image, scale = open_exported(result.path, "cpu").run(measured, mask.values)
    output_kspace = np.fft.fft2(image * scale[:, None, None], norm="ortho")
    sampled = mask.values == 1
    np.testing.assert_allclose(output_kspace[:, sampled], measured[:, sampled], atol=1e-4)
    assert not np.allclose(output_kspace[:, ~sampled], 0, atol=1e-3)  # the CNN filled the rest


def test_dft_formulation_exports_for_a_mask_that_is_not_lines(tmp_path):
    values = np.zeros(SIZE, np.float32)
    values[:4, :4] = values[-3:, -3:] = 1
    values[::3, ::2] = 1
    mask = SamplingMask(values, acceleration=4.0)
    result = export_model(tiny_model(seed=2), tmp_path / "dft.onnx", mask=mask,
                          validation_kspace=phantom_kspace(mask, 2))
    assert result.formulation == "dft" and result.max_abs_error < 1e-5


def test_failed_validation_raises_with_the_excess_and_leaves_no_file(tmp_path, mask):
    with pytest.raises(ExportValidationError, match=r"x over") as caught:
        export_model(tiny_model(), tmp_path / "strict.onnx", mask=mask, validation_kspace=phantom_kspace(mask, 1),
                     relative_tolerance=1e-15)
    assert any(isinstance(failure, AtolError) for failure in caught.value.failures)
    assert list(tmp_path.iterdir()) == []


def test_models_without_data_fidelity_are_not_exported(tmp_path, mask):
    with pytest.raises(InputError, match="no data-fidelity layers"):
        export_model(tiny_model("rcnn5"), tmp_path / "x.onnx", mask=mask, validation_kspace=phantom_kspace(mask, 1))
    assert list(tmp_path.iterdir()) == []


def test_validation_kspace_of_the_wrong_size_is_an_input_error(tmp_path, mask):
    with pytest.raises(InputError, match="validation k-space"):
        export_model(tiny_model(), tmp_path / "x.onnx", mask=mask, validation_kspace=np.zeros((1, 8, 8), complex))


# --- a run directory (docs/run-directory.md) ---------------------------------------------------------------------

def write_run(run_dir, model, name: str = "sft_kd/at/d2c2@4x"):
    """A minimal finished run: config.json, results.json and one stage with weights and validation targets."""
    config = RunConfig()
    config.data.image_size, config.data.mask_seed = SIZE[0], 3
    mask = build_mask(config.data, 4.0)
    stage = run_dir / "stages" / "sft_kd-at-d2c2-0123456789ab"
    stage.mkdir(parents=True)
    save_json(run_dir / "config.json", config.to_dict())
    save_json(stage / "stage.json", {"stage": stage.name, "role": "sft_kd", "arch": "d2c2", "method": "at",
                                     "acceleration": 4.0, "key": "0123456789ab", "name": name,
                                     "model_options": TINY.to_dict(), "mask_digest": mask.digest(),
                                     "image_size": list(SIZE), "parameters": model.num_parameters(),
                                     "complete": True})
    save_weights(stage / "best.safetensors", model)
    with h5py.File(stage / "reconstructions_validation.h5", "w") as file:
        file["target"] = random_images(5, seed=8)
    save_json(run_dir / "results.json", {"schema": 1, "split": "validation", "teacher": "d2c2", "models": [
        {"name": name, "role": "sft_kd", "arch": "d2c2", "acceleration": 4.0, "split": "validation",
         "stage_dir": f"stages/{stage.name}",
         "psnr": {"mean": 31.5, "std": 1.0}, "ssim": {"mean": 0.9, "std": 0.01}}]})
    return mask


def test_export_command_exports_a_named_model_of_a_run(tmp_path):
    model = tiny_model(seed=11)
    mask = write_run(tmp_path, model)
    result = CliRunner().invoke(export_command, ["--run", str(tmp_path), "--model", "sft_kd/at/d2c2@4x"])
    assert result.exit_code == 0, result.output
    exported_model = open_exported(tmp_path / "exports" / "sft_kd_at_d2c2@4x.onnx", "cpu")
    metadata = exported_model.metadata
    assert (metadata.config_key, metadata.origin.name, metadata.mask_digest) == ("0123456789ab",
                                                                                 "sft_kd/at/d2c2@4x", mask.digest())
    kspace = simulated_kspace(random_images(2, seed=9), mask.values)
    np.testing.assert_allclose(exported_model.run(kspace, mask.values)[0],
                               pytorch_reference(model, kspace, mask.values)["image"], atol=1e-5)
    unknown = CliRunner().invoke(export_command, ["--run", str(tmp_path), "--model", "teacher/d5c5@4x"])
    assert unknown.exit_code == 2 and "no model 'teacher/d5c5@4x'" in unknown.output


def test_benchmark_of_a_run_lists_its_trained_models_with_their_metrics(tmp_path):
    write_run(tmp_path, tiny_model(seed=12))
    result = benchmark_run(tmp_path, [], threads=1, iterations=30, warmup=0, log=lambda _: None)
    (row,) = json.loads((tmp_path / "benchmark.json").read_text())["models"]
    assert (row["name"], row["role"], row["psnr"], row["ssim"]) == ("sft_kd/at/d2c2@4x", "sft_kd", 31.5, 0.9)
    assert result.models[0].parity_max_abs_error < 1e-5 and (tmp_path / "benchmark.csv").is_file()


# --- providers ---------------------------------------------------------------------------------------------------

def test_auto_provider_really_runs_and_every_node_ran_on_it(exported, mask):
    _, result = exported
    chosen = choose_runtime("auto")
    assert open_exported(result.path, "auto").session.get_providers()[0] == chosen.name
    kspace = phantom_kspace(mask, 1)
    providers = RUNTIMES.get("cpu").node_providers(result.path, {"kspace_real": kspace.real.astype(np.float32),
                                                                 "kspace_imag": kspace.imag.astype(np.float32),
                                                                 "mask": mask.values})
    assert providers and set(providers.values()) == {CPU}


# --- benchmark ---------------------------------------------------------------------------------------------------

def test_benchmark_writes_the_documented_schema(tmp_path, mask):
    result = benchmark_models(["d2c2"], SIZE, mask, threads=1, iterations=30, warmup=0, teacher="d2c2",
                              options=TINY, log=lambda _: None)
    json_path, csv_path = write_benchmark(result, tmp_path / "benchmark.json", tmp_path / "benchmark.csv")
    data = json.loads(json_path.read_text())
    assert data["provider"] == CPU and data["threads"] == 1 and data["image_size"] == list(SIZE)
    (row,) = data["models"]
    assert {"arch", "role", "parameters", "compression", "ort_ms_median", "ort_ms_p90", "torch_ms_median",
            "torch_ms_p90", "speedup", "ort_throughput_b16", "df_share", "psnr", "ssim"} <= set(row)
    assert (row["arch"], row["role"], row["compression"]) == ("d2c2", "teacher", 0.0)
    assert row["ort_ms_p90"] >= row["ort_ms_median"] > 0 and row["parity_max_abs_error"] < 1e-5
    assert csv_path.read_text().splitlines()[0].startswith("name,arch,role")


def test_matmul_dft_is_exact_where_the_dft_operator_is_not():
    accuracy = dft_accuracy(15, repeats=3)  # 15 is not a power of two: ORT's DFT goes through Bluestein
    assert accuracy.matmul_relative_error < 1e-6
    assert accuracy.dft_op_relative_error > accuracy.matmul_relative_error


# --- command line ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(main.commands.values(), key=lambda c: c.name), ids=lambda c: c.name)
def test_every_command_has_help(command):
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_export_command_with_bare_weights_validates_on_a_data_file(tmp_path):
    weights = save_weights(tmp_path / "w.safetensors", tiny_model(seed=7))
    volume = write_project_volume(tmp_path / "validation.h5", random_images(3, seed=10) + 1.0)
    out = tmp_path / "w.onnx"
    result = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", str(weights), "--width", "8",
                                                 "--image-size", "16", "--acceleration", "4", "--out", str(out),
                                                 "--validation", str(volume)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "validated on 3 slices" in result.output
    assert open_exported(out, "cpu").metadata.origin.weights == "w.safetensors"


def test_export_command_rejects_ambiguous_sources(tmp_path):
    result = CliRunner().invoke(export_command, ["--run", str(tmp_path), "--weights", str(tmp_path / "w")])
    assert result.exit_code == 2 and "exactly one of" in result.output
