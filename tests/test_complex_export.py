"""Measured k-space end to end, the export half: 2-channel (complex image) models through the line-mask DF, the
scanner graph, ONNX export and validation, ``compress reconstruct`` and the benchmark.

Tiny models (d2c2, 8 channels) on 16x12 images (a non-square grid, so that the two axes cannot be mixed up).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from benchmarks import onnx_latency
from compressor import rundir
from compressor.cli.export_command import export_command
from compressor.cli.reconstruct_command import reconstruct_command
from compressor.data.coils import virtual_coil
from compressor.data.project_h5 import write_project_volume
from compressor.errors import InputError
from compressor.export.benchmark.run import benchmark_models
from compressor.export.exported_file import ExportMetadata, graph_outputs, metadata_properties
from compressor.export.graph.scanner_graph import ChannelSumConv, ScannerGraph
from compressor.export.graph.validate import pytorch_reference
from compressor.export.run_models import run_validation_kspace, simulated_kspace
from compressor.export.runtimes import open_exported
from compressor.export.scanner.scanner_input import imaginary_energy_fraction
from compressor.export.targets.export import export_model, phantom_kspace
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model
from compressor.physics import (
    TorchFFT,
    data_fidelity,
    dft_matrix,
    fft2,
    line_data_fidelity,
    line_projection,
    zero_filled,
)
from compressor.training.checkpoint import save_weights
from tests.test_exported_file import save_with_properties

SIZE = (16, 12)
COMPLEX = ModelOptions(width=8, image_channels=2)
REAL = ModelOptions(width=8)


def tiny_model(options: ModelOptions = COMPLEX, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("d2c2", options).eval()


def complex_images(count: int, shape: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """Images with a smooth phase (as measured data have), ``(count, H, W)`` complex64."""
    rng = np.random.default_rng(seed)
    magnitude = rng.random((count, *shape)) + 0.5
    phase = np.linspace(0, 2.5, shape[1])[None, None, :] + np.linspace(0, 1, shape[0])[None, :, None]
    return (magnitude * np.exp(1j * phase)).astype(np.complex64)


def line_mask(axis: int, shape: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """A random pattern of whole columns (``axis=-1``) or rows (``-2``), DC line included, ``(H, W)`` float32."""
    length = shape[1] if axis == -1 else shape[0]
    pattern = (np.random.default_rng(seed).random(length) < 0.4).astype(np.float32)
    pattern[0] = 1
    return np.broadcast_to(pattern[None, :] if axis == -1 else pattern[:, None], shape).copy()


@pytest.fixture(scope="module")
def mask() -> SamplingMask:
    """Columns 0, 1, 3, 6 and 10 of 12: whole lines along W, 2.4x."""
    values = np.zeros(SIZE, np.float32)
    values[:, [0, 1, 3, 6, 10]] = 1
    return SamplingMask(values, acceleration=SIZE[1] / 5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mask):
    """The tiny 2-channel model exported with ``lines`` and with ``dft``, each validated on two complex slices."""
    folder = tmp_path_factory.mktemp("complex")
    model = tiny_model()
    validation = simulated_kspace(complex_images(2, seed=1), mask.values)
    results = {formulation: export_model(model, folder / f"{formulation}.onnx", mask=mask,
                                         validation_kspace=validation, formulation=formulation)
               for formulation in ("lines", "dft")}
    return model, results


# --- the line-mask DF on complex images ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 8])
def test_complex_line_projection_is_fh_diag_m_f_and_hermitian(n):
    lines = np.array([1, 0, 1, 1, 0, 0, 1, 0][:n], dtype=np.float64)
    fourier = np.fft.fft(np.eye(n), norm="ortho")  # F[k, m] = exp(-2πi km/n)/sqrt(n)
    expected = fourier.conj().T @ np.diag(lines) @ fourier
    projection = line_projection(torch.from_numpy(lines).float(), *dft_matrix(n))
    got = projection.real.numpy() + 1j * projection.imag.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got, got.conj().T, atol=1e-6)  # Hermitian
    assert np.abs(projection.imag.numpy()).max() > 1e-3  # ... and not symmetric


def _line_case(axis: int, channels: int, seed: int = 0):
    """A line mask ``(1, 1, H, W)``, its projection, an image ``(2, C, H, W)`` and measured k-space."""
    height, width = SIZE
    rng = np.random.default_rng(seed)
    values = line_mask(axis, seed=seed)
    pattern = values[0, :] if axis == -1 else values[:, 0]
    mask = torch.from_numpy(values)[None, None]
    image = torch.from_numpy(rng.standard_normal((2, channels, height, width)).astype(np.float32))
    measured = torch.from_numpy(rng.standard_normal((2, 1, height, width, 2)).astype(np.float32)) * mask[..., None]
    projection = line_projection(torch.from_numpy(pattern), *dft_matrix(len(pattern)))
    return mask, projection, image, measured


@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("dc_lambda", [None, 3.0])
def test_complex_line_data_fidelity_equals_the_fft_data_fidelity(axis, dc_lambda):
    mask, projection, image, measured = _line_case(axis, channels=2)
    weight = None if dc_lambda is None else torch.tensor(dc_lambda)
    via_fft = data_fidelity(image, measured, mask, TorchFFT(), weight)
    via_lines = line_data_fidelity(image, zero_filled(measured, channels=2), projection, axis, weight)
    assert via_lines.shape == image.shape
    np.testing.assert_allclose(via_lines.numpy(), via_fft.numpy(), atol=1e-5)


@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("dc_lambda", [None, 3.0])
def test_real_line_data_fidelity_keeps_its_arithmetic(axis, dc_lambda):
    """1 channel: ``z + w (x_u - z P_r)`` (or ``P_r z``), the formula of the exports made before complex images."""
    mask, projection, image, measured = _line_case(axis, channels=1, seed=3)
    weight = None if dc_lambda is None else torch.tensor(dc_lambda)
    x_u = zero_filled(measured)
    projected = image @ projection.real if axis == -1 else projection.real @ image
    w = 1.0 if dc_lambda is None else dc_lambda / (1.0 + dc_lambda)
    expected = image + w * (x_u - projected)
    got = line_data_fidelity(image, x_u, projection, axis, weight)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(got.numpy(), data_fidelity(image, measured, mask, TorchFFT(), weight).numpy(),
                               atol=1e-5)


def _point_case(seed: int = 0):
    """A binary mask of random points (not lines) ``(1, 1, H, W)``, a complex CNN output and measured k-space."""
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy((rng.random(SIZE) < 0.35).astype(np.float32))[None, None]
    image = torch.from_numpy(rng.standard_normal((2, 2, *SIZE)).astype(np.float32))
    measured = torch.from_numpy(rng.standard_normal((2, 1, *SIZE, 2)).astype(np.float32)) * mask[..., None]
    return mask, image, measured


def _kspace_of(image: torch.Tensor) -> torch.Tensor:
    """``F x`` of a 2-channel image ``(B, 2, H, W)`` as complex ``(B, H, W)``."""
    return torch.view_as_complex(fft2(image.movedim(1, -1).contiguous()))


def test_complex_df_with_infinite_lambda_keeps_the_measurement_exactly_and_is_idempotent():
    mask, image, measured = _point_case()
    output = data_fidelity(image, measured, mask, TorchFFT())
    sampled = mask[0, 0].bool()
    measurement = torch.view_as_complex(measured[:, 0].contiguous())
    np.testing.assert_allclose(_kspace_of(output)[:, sampled].numpy(), measurement[:, sampled].numpy(), atol=1e-5)
    np.testing.assert_allclose(_kspace_of(output)[:, ~sampled].numpy(), _kspace_of(image)[:, ~sampled].numpy(),
                               atol=1e-5)
    again = data_fidelity(output, measured, mask, TorchFFT())
    np.testing.assert_allclose(again.numpy(), output.numpy(), atol=1e-5)


def test_complex_df_with_finite_lambda_blends_the_sampled_kspace_and_is_not_idempotent():
    mask, image, measured = _point_case(seed=1)
    dc_lambda = 2.5
    output = data_fidelity(image, measured, mask, TorchFFT(), torch.tensor(dc_lambda))
    sampled = mask[0, 0].bool()
    measurement = torch.view_as_complex(measured[:, 0].contiguous())
    expected = (_kspace_of(image) + dc_lambda * measurement) / (1 + dc_lambda)
    np.testing.assert_allclose(_kspace_of(output)[:, sampled].numpy(), expected[:, sampled].numpy(), atol=1e-5)
    again = data_fidelity(output, measured, mask, TorchFFT(), torch.tensor(dc_lambda))
    assert not np.allclose(again.numpy(), output.numpy(), atol=1e-3)


# --- ChannelSumConv ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_channel_sum_conv_equals_the_convolution_it_replaces(outputs, bias):
    torch.manual_seed(outputs)
    conv = torch.nn.Conv2d(32, outputs, 3, padding=1, bias=bias)
    image = torch.randn(2, 32, 9, 7)
    with torch.no_grad():
        np.testing.assert_allclose(ChannelSumConv(conv)(image).numpy(), conv(image).numpy(), atol=1e-5)


def test_the_complex_graph_rewrites_the_last_conv_only():
    block = ScannerGraph(tiny_model(), SIZE, "dft").cascades[0].block
    assert isinstance(block.conv2, ChannelSumConv) and type(block.conv1) is torch.nn.Conv2d  # conv1 is 2 -> 8
    with pytest.raises(ValueError, match="at most 2"):
        ChannelSumConv(torch.nn.Conv2d(32, 3, 3))


# --- the scanner graph and its export -----------------------------------------------------------------------------

@pytest.mark.parametrize("formulation", ["lines", "dft", "fft"])
def test_complex_scanner_graph_equals_the_trained_model(formulation, mask):
    model = tiny_model()
    kspace = simulated_kspace(complex_images(2, seed=2), mask.values) * 37.0  # raw units: the graph normalises
    graph = ScannerGraph(model, SIZE, formulation, -1 if formulation == "lines" else None).eval()
    assert graph.output_names == ("image_real", "image_imag", "magnitude", "scale")
    with torch.no_grad():
        outputs = graph(torch.from_numpy(kspace.real.copy()), torch.from_numpy(kspace.imag.copy()),
                        torch.from_numpy(mask.values))
    got = dict(zip(graph.output_names, (output.numpy() for output in outputs), strict=True))
    reference = pytorch_reference(model, kspace, mask.values)
    for name in graph.output_names:
        np.testing.assert_allclose(got[name], reference[name], rtol=1e-5, atol=1e-5 * np.abs(reference[name]).max())
    np.testing.assert_allclose(got["magnitude"], np.hypot(got["image_real"], got["image_imag"]), atol=1e-6)


@pytest.mark.parametrize("formulation", ["lines", "dft"])
def test_complex_export_matches_pytorch_with_a_dynamic_batch(exported, mask, formulation):
    model, results = exported
    result = results[formulation]
    assert result.formulation == formulation and result.max_abs_error < 1e-5 < result.tolerance
    assert result.reference_evaluator_error < 1e-5
    proto = onnx.load(str(result.path))
    assert [o.name for o in proto.graph.output] == ["image_real", "image_imag", "magnitude", "scale"]
    assert all(o.type.tensor_type.shape.dim[0].dim_param for o in proto.graph.output)
    opened = open_exported(result.path, "cpu")
    assert opened.metadata.image_channels == 2 and opened.metadata.outputs == graph_outputs(2)
    assert json.loads(opened.metadata.to_properties()["outputs"]) == list(graph_outputs(2).names)
    kspace = simulated_kspace(complex_images(3, seed=5), mask.values)  # validated with 2 slices, run with 3
    reference = pytorch_reference(model, kspace, mask.values)
    outputs = opened.run_outputs(kspace, mask.values)
    for name, expected in reference.items():
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    image, scale = opened.run(kspace, mask.values)
    assert image.dtype == np.complex64 and image.shape == (3, *SIZE) and scale.shape == (3,)
    np.testing.assert_allclose(image, reference["image_real"] + 1j * reference["image_imag"], atol=1e-5)


def test_full_mask_gives_back_the_complex_image(exported):
    _, results = exported
    images = complex_images(2, seed=6)
    full = np.ones(SIZE, np.float32)
    image, scale = open_exported(results["dft"].path, "cpu").run(simulated_kspace(images, full), full)
    np.testing.assert_allclose(image * scale[:, None, None], images, atol=1e-5 * np.abs(images).max())


def test_a_file_without_image_channels_metadata_is_a_real_image_model(tmp_path, mask):
    result = export_model(tiny_model(REAL), tmp_path / "real.onnx", mask=mask,
                          validation_kspace=simulated_kspace(np.abs(complex_images(1)), mask.values))
    proto = onnx.load(str(result.path))
    properties = {key: value for key, value in metadata_properties(proto).items() if key != "image_channels"}
    save_with_properties(proto, tmp_path / "old.onnx", properties)
    old = open_exported(tmp_path / "old.onnx", "cpu")
    assert old.metadata.image_channels == 1 and old.metadata.to_properties()["image_channels"] == "1"
    image, _ = old.run(simulated_kspace(np.abs(complex_images(2)), mask.values), mask.values)
    assert image.dtype == np.float32
    assert ExportMetadata.from_properties(old.metadata.to_properties()).image_channels == 1
    save_with_properties(proto, tmp_path / "odd.onnx", {**properties, "image_channels": "3"})
    with pytest.raises(InputError, match="image_channels 3"):
        open_exported(tmp_path / "odd.onnx", "cpu")


def test_export_command_takes_the_width_and_the_image_channels_of_bare_weights(tmp_path):
    weights = save_weights(tmp_path / "w.safetensors", tiny_model(seed=7))
    result = CliRunner().invoke(export_command, ["--arch", "d2c2", "--weights", str(weights), "--width", "8",
                                                 "--channels", "2", "--image-size", "16", "--acceleration", "4"])
    assert result.exit_code == 0, result.output
    assert open_exported(tmp_path / "w.onnx", "cpu").metadata.image_channels == 2


# --- a run's validation slices ------------------------------------------------------------------------------------

def test_run_validation_kspace_prefers_the_complex_targets(tmp_path, mask):
    targets = complex_images(3, seed=8)
    stage = SimpleNamespace(stage_dir=tmp_path, mask=mask)
    with h5py.File(tmp_path / "reconstructions_validation.h5", "w") as file:
        file["target"] = np.abs(targets)
    np.testing.assert_allclose(run_validation_kspace(stage), np.fft.fft2(np.abs(targets), norm="ortho") * mask.values,
                               atol=1e-5)
    with h5py.File(tmp_path / "reconstructions_validation.h5", "a") as file:
        file[rundir.COMPLEX_TARGET_KEY] = targets
    kspace = run_validation_kspace(stage)
    assert kspace.dtype == np.complex64
    np.testing.assert_allclose(kspace, np.fft.fft2(targets, norm="ortho") * mask.values, atol=1e-5)


# --- compress reconstruct -----------------------------------------------------------------------------------------

def invoke(*args) -> object:
    return CliRunner().invoke(reconstruct_command, [*map(str, args), "--no-progress"])


def _assert_refused(result, out, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not out.exists()


def test_reconstruct_complex_npy_with_a_complex_model(tmp_path, exported, mask):
    model, results = exported
    kspace = simulated_kspace(complex_images(3, seed=9), mask.values) * 50.0
    np.save(tmp_path / "k.npy", kspace)
    out = tmp_path / "recon.h5"
    result = invoke(results["lines"].path, tmp_path / "k.npy", "--out", out, "--previews", tmp_path / "previews")
    assert result.exit_code == 0, result.output
    reference = pytorch_reference(model, kspace, mask.values)
    expected = (reference["image_real"] + 1j * reference["image_imag"]) * reference["scale"][:, None, None]
    with h5py.File(out) as file:
        reconstruction, magnitude = file["reconstruction"][()], file["magnitude"][()]
        assert file.attrs["image_channels"] == "2" and file.attrs["took_real_part"] == "False"
    assert reconstruction.dtype == np.complex64 and magnitude.dtype == np.float32
    np.testing.assert_allclose(reconstruction, expected, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(magnitude, np.abs(reconstruction), rtol=1e-6)
    assert len(list((tmp_path / "previews").iterdir())) == 3


def test_reconstruct_a_project_volume_with_phase_with_a_complex_model(tmp_path, exported, mask):
    _, results = exported
    images = complex_images(2, seed=10)
    full = np.fft.fft2(images, norm="ortho").astype(np.complex64)
    volume = write_project_volume(tmp_path / "v.h5", np.abs(images), kspace=full)
    np.save(tmp_path / "k.npy", full * mask.values)
    assert invoke(results["lines"].path, volume, "--out", tmp_path / "a.h5").exit_code == 0
    assert invoke(results["lines"].path, tmp_path / "k.npy", "--out", tmp_path / "b.h5").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a.attrs["kspace"] == "measured"
        np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()], atol=1e-5)


def test_reconstruct_measured_fastmri_kspace_on_its_measured_grid(tmp_path, exported, mask):
    """fastMRI stores centred k-space with the readout (rows) oversampled 2x: the reader crops the readout to the
    model's rows and keeps the phase-encode columns, which is what the model was exported for."""
    _, results = exported
    oversampled = np.zeros((2, 2 * SIZE[0], SIZE[1]), np.complex64)
    oversampled[:, SIZE[0] // 2:SIZE[0] // 2 + SIZE[0]] = complex_images(2, seed=11)
    centred = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(oversampled, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    with h5py.File(tmp_path / "file1000.h5", "w") as file:
        file["kspace"] = centred.astype(np.complex64)
    measured = np.fft.fft2(complex_images(2, seed=11), norm="ortho") * mask.values
    np.save(tmp_path / "k.npy", measured.astype(np.complex64))
    assert invoke(results["lines"].path, tmp_path / "file1000.h5", "--source", "fastmri", "--out",
                  tmp_path / "a.h5").exit_code == 0
    assert invoke(results["lines"].path, tmp_path / "k.npy", "--out", tmp_path / "b.h5").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()],
                                   atol=1e-4 * np.abs(b["reconstruction"][()]).max())


def test_reconstruct_compresses_multi_coil_npy_for_a_complex_model(tmp_path, exported, mask):
    _, results = exported
    rng = np.random.default_rng(11)
    sensitivities = (rng.random((4, *SIZE)) + 1j * rng.random((4, *SIZE))).astype(np.complex64)
    coil_images = complex_images(2, seed=12)[:, None] * sensitivities[None]
    coil_kspace = np.fft.fft2(coil_images, norm="ortho").astype(np.complex64) * mask.values
    np.save(tmp_path / "coils.npy", coil_kspace)
    virtual = np.stack([virtual_coil(np.fft.ifft2(k, norm="ortho")) for k in coil_kspace])
    np.save(tmp_path / "virtual.npy", np.fft.fft2(virtual, norm="ortho").astype(np.complex64) * mask.values)
    assert invoke(results["lines"].path, tmp_path / "coils.npy", "--out", tmp_path / "a.h5").exit_code == 0
    assert invoke(results["lines"].path, tmp_path / "virtual.npy", "--out", tmp_path / "b.h5").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        expected = b["reconstruction"][()]
        np.testing.assert_allclose(a["reconstruction"][()], expected, atol=1e-4 * np.abs(expected).max())


def test_a_real_model_refuses_complex_images_and_multi_coil_data(tmp_path, mask):
    model_path = tmp_path / "real.onnx"
    export_model(tiny_model(REAL), model_path, mask=mask,
                 validation_kspace=simulated_kspace(np.abs(complex_images(1)), mask.values))
    kspace = simulated_kspace(complex_images(2, seed=13), mask.values)
    np.save(tmp_path / "complex.npy", kspace)
    np.save(tmp_path / "coils.npy", np.stack([kspace, kspace], axis=1))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "complex.npy", "--out", out), out, "complex-valued image")
    _assert_refused(invoke(model_path, tmp_path / "coils.npy", "--out", out), out,
                    "multi-coil data needs a 2-channel model: coil compression gives a complex virtual coil")


def test_nan_in_multi_coil_kspace_is_refused_naming_the_file(tmp_path, exported, mask):
    _, results = exported
    kspace = simulated_kspace(complex_images(2, seed=14), mask.values)
    coils = np.stack([kspace, kspace], axis=1)
    coils[1, 0, 0, 0] = np.inf
    np.save(tmp_path / "coils.npy", coils)
    out = tmp_path / "o.h5"
    result = invoke(results["lines"].path, tmp_path / "coils.npy", "--out", out)
    _assert_refused(result, out, "slice 1 contains NaN or Inf")
    assert "coils.npy" in result.output


# --- benchmark ----------------------------------------------------------------------------------------------------

def test_benchmark_times_the_complex_graph_next_to_the_real_one(mask):
    result = benchmark_models(["d2c2"], SIZE, mask, threads=1, iterations=30, warmup=0, teacher="d2c2",
                              options=REAL, log=lambda _: None)
    (row,) = result.models
    assert row.image_channels == 1 and row.ort_1ch_ms_median == row.ort_ms_median
    assert row.ort_2ch_ms_median > 0
    assert row.complex_latency_ratio == pytest.approx(row.ort_2ch_ms_median / row.ort_1ch_ms_median)
    assert row.df_share_1ch == row.df_share and 0 <= row.df_share_1ch <= 1 and 0 <= row.df_share_2ch <= 1
    (summary,) = onnx_latency.complex_images(result.to_json()["models"])
    assert summary["arch"] == "d2c2" and summary["ratio"] == row.complex_latency_ratio
    assert "2-ch / 1-ch" in onnx_latency.complex_table([summary])


def test_phantoms_of_a_complex_model_carry_a_phase(mask):
    assert imaginary_energy_fraction(phantom_kspace(mask, 2), mask.values) < 1e-6
    assert imaginary_energy_fraction(phantom_kspace(mask, 2, image_channels=2), mask.values) > 0.05
