"""OpenVINO's CPU runtime as a backend (``--provider openvino``): the same ONNX files, the same ``run`` call, the same
validation as ONNX Runtime, and the same one-line errors.

OpenVINO is in the ``test`` extra, so these tests run in CI; tiny models (d2c2, 8 channels, 16x16) as in
``test_export.py``.
"""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli.benchmark_command import benchmark_command
from compressor.cli.reconstruct_command import reconstruct_command
from compressor.errors import InputError
from compressor.export.exported_file import Precision
from compressor.export.precision.options import PrecisionOptions
from compressor.export.runtimes import RUNTIMES, choose_runtime, graph_feed, open_exported, runtime_choices
from compressor.export.runtimes.openvino_runtime import OPENVINO, OpenVINORuntime
from compressor.export.targets.export import export_model, phantom_kspace
from tests.test_export import SIZE, tiny_model


@pytest.fixture(scope="module")
def mask():
    from compressor.masks import make_mask

    return make_mask("random", 4, SIZE, seed=1)


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory, mask):
    """A tiny fp32 export, validated on ONNX Runtime's CPU provider."""
    model = tiny_model()
    return export_model(model, tmp_path_factory.mktemp("fp32") / "tiny.onnx", mask=mask,
                        validation_kspace=phantom_kspace(mask, 2), provider="cpu").path


def test_openvino_is_a_registered_provider_that_auto_never_picks():
    assert "openvino" in runtime_choices() and RUNTIMES.get("openvino").name == OPENVINO
    assert choose_runtime("openvino").name == OPENVINO
    assert choose_runtime("auto").name != OPENVINO  # its fp32 is slower than ONNX Runtime's on the CPUs measured


def test_openvino_gives_onnx_runtimes_image_to_fp32_rounding(fp32_file, mask):
    kspace = phantom_kspace(mask, 3)
    on_ort, on_openvino = (open_exported(fp32_file, provider) for provider in ("cpu", "openvino"))
    assert on_openvino.runtime.name == OPENVINO and on_openvino.runtime.label.startswith("OpenVINO ")
    assert on_openvino.metadata.to_properties() == on_ort.metadata.to_properties()
    image, scale = on_openvino.run(kspace, mask.values)
    reference_image, reference_scale = on_ort.run(kspace, mask.values)
    assert image.dtype == np.float32 and image.shape == (3, *SIZE)
    np.testing.assert_allclose(scale, reference_scale, rtol=1e-6)
    assert np.max(np.abs(image - reference_image)) <= 1e-5 * np.max(np.abs(reference_image))


def test_concurrent_calls_from_threads_each_get_their_own_answer(fp32_file, mask):
    """The streaming server calls one session from several threads: every call must return its own slice's image."""
    session = RUNTIMES.get("openvino").session(fp32_file, threads=1)
    slices = phantom_kspace(mask, 4)
    expected = [RUNTIMES.get("cpu").session(fp32_file).run(["image"], graph_feed(k[None], mask.values))[0]
                for k in slices]
    results: dict[int, list[np.ndarray]] = {index: [] for index in range(len(slices))}

    def reconstruct(index: int) -> None:
        for _ in range(5):
            results[index].append(session.run(["image"], graph_feed(slices[index][None], mask.values))[0])

    threads = [threading.Thread(target=reconstruct, args=(index,)) for index in range(len(slices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, images in results.items():
        for image in images:
            np.testing.assert_allclose(image, expected[index], atol=1e-5 * np.max(np.abs(expected[index])))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_export_validates_on_openvino_the_same_way(tmp_path, mask, precision):
    """fp32 against PyTorch at the usual tolerance; INT8 in image terms against the fp32 export, with the sampled
    lines at fp32 rounding (the DF stays fp32 on OpenVINO too)."""
    result = export_model(tiny_model(), tmp_path / f"tiny.{precision}.onnx", mask=mask,
                          validation_kspace=phantom_kspace(mask, 2), target=Precision(precision).target,
                          provider="openvino",
                          precision_options=PrecisionOptions(max_psnr_loss=10.0))
    assert result.runtime.name == OPENVINO
    if precision == "fp32":
        assert result.relative_error <= result.tolerance
    else:
        check = result.precision_check
        assert check.line_deviation <= 1e-5 and check.quality.psnr_loss <= 10.0
        # the layer choice was measured on the runtime that validated it, and the file says so
        assert result.metadata.quality.measured_on.startswith("OpenVINO ")


def test_the_int8_speed_check_times_openvino_too(tmp_path, mask):
    result = export_model(tiny_model(), tmp_path / "tiny.int8.onnx", mask=mask,
                          validation_kspace=phantom_kspace(mask, 2), target="onnx-int8",
                          precision_options=PrecisionOptions(max_psnr_loss=10.0))
    speed = result.metadata.int8_speed
    assert speed.openvino_int8_median_ms > 0
    assert speed.openvino_speedup == pytest.approx(speed.fp32_median_ms / speed.openvino_int8_median_ms)


def test_a_corrupt_file_is_a_one_line_input_error_naming_it(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all \x00\x01")
    with pytest.raises(InputError, match=r"corrupt\.onnx.*not a loadable ONNX model"):
        open_exported(corrupt, "openvino")


def test_a_foreign_onnx_file_is_refused_as_such_before_openvino_compiles_it(tmp_path, fp32_file):
    import onnx

    foreign = onnx.load(str(fp32_file))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(InputError, match=r"foreign\.onnx.*not exported by this tool"):
        open_exported(tmp_path / "foreign.onnx", "openvino")


def test_with_threads_per_call_as_many_calls_run_at_once_as_cores_allow(fp32_file):
    """As ONNX Runtime's intra-op threads: ``threads`` per inference, ``cores // threads`` inferences at once (the
    streaming server's parallel runs); without ``threads`` one inference at a time on every core."""
    import os

    cores = os.cpu_count() or 1
    streams = {threads: RUNTIMES.get("openvino").session(fp32_file, threads)._compiled.get_property("NUM_STREAMS")
               for threads in (None, 1)}
    assert streams == {None: 1, 1: cores}


def test_without_openvino_asking_for_it_is_a_one_line_error(monkeypatch, fp32_file):
    monkeypatch.setattr(OpenVINORuntime, "usable", lambda self: False)
    with pytest.raises(InputError, match=r"OpenVINO was asked for but cannot run here.*pip install openvino"):
        open_exported(fp32_file, "openvino")


def test_reconstruct_runs_on_openvino_and_gives_onnx_runtimes_image(tmp_path, fp32_file, mask):
    from tests.test_reconstruct import images, write_project_volume

    volume = write_project_volume(tmp_path / "volume.h5", images(3, seed=2) * 300.0)
    outputs = {}
    for provider in ("cpu", "openvino"):
        out = tmp_path / f"{provider}.h5"
        result = CliRunner().invoke(reconstruct_command, [str(fp32_file), str(volume), "--out", str(out),
                                                          "--provider", provider, "--no-progress"])
        assert result.exit_code == 0, result.output
        with h5py.File(out, "r") as file:
            outputs[provider] = file["reconstruction"][()]
    assert f"reconstructed with {OPENVINO}" in result.output
    reference = outputs["cpu"]
    assert np.max(np.abs(outputs["openvino"] - reference)) <= 1e-5 * np.max(np.abs(reference))


def test_the_benchmark_refuses_openvino_in_one_line_before_timing_anything(tmp_path):
    result = CliRunner().invoke(benchmark_command, ["--archs", "d2c2", "--image-size", "16", "--provider", "openvino",
                                                    "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 2 and "runs on ONNX Runtime only" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "bench.json").exists()

