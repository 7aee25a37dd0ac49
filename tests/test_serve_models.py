"""``compress serve`` with several models (a run's exports folder, a Triton repository), the comparison series, scans
of several slices, contrasts and repetitions, and replay of recorded streams (``--save-data``), on the tiny model and
scans of ``tests/test_mrd_server.py``."""

from __future__ import annotations

import dataclasses
import logging
import struct
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli.reconstruct_command import reconstruct_command
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import SliceAssembler
from compressor.data.mrd_readout import SliceKey, readout_from_ismrmrd
from compressor.errors import InputError
from compressor.export.exported_file import (
    ModelOrigin,
    Precision,
    QualityRecord,
    load_exported,
    metadata_of,
    write_exported,
)
from compressor.export.run_models import simulated_kspace
from compressor.export.runtimes.session import open_exported
from compressor.export.scanner.image_formats import image_format
from compressor.export.scanner.mrd_client import stream_scan
from compressor.export.scanner.mrd_server import ReconstructionServer, ServeOptions
from compressor.export.scanner.raw_input import prepare_slice
from compressor.export.scanner.server_limits import ServerLimits
from compressor.export.serving.repository import ServedExport
from compressor.export.serving.triton import write_triton_repository
from compressor.export.targets.export import export_model
from compressor.models import ModelOptions, build_model
from tests.synthetic_scans import synthetic_scan
from tests.test_mrd_server import (
    TIMEOUT,
    acquired_lines,
    assert_same_images,
    coil_images,
    head_bytes,
    line_mask,
    meta_without_reason,
    offline_images,
    raw_exchange,
    serving,
)

RESULTS_NAME = "sft_kd/at/d2c2@4x"
STEM = "sft_kd_at_d2c2@4x"
TRITON_NAME = "sft_kd-at-d2c2-4x"


def comment(image: ismrmrd.Image) -> list[str]:
    return ismrmrd.Meta.deserialize(image.attribute_string)["ImageComment"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder whose exports are a tiny 2-channel d2c2 (fp32, with its results name) and an "int8" copy (the
    same graph with int8 metadata and a validated ΔPSNR: what selection and ImageComment read)."""
    import torch

    folder = tmp_path_factory.mktemp("run")
    exports = folder / "exports"
    torch.manual_seed(0)
    model = build_model("d2c2", ModelOptions(width=8, image_channels=2)).eval()
    images = coil_images(2, 1, seed=5)[:, 0]
    fp32 = exports / f"{STEM}.onnx"
    export_model(model, fp32, mask=line_mask(), validation_kspace=simulated_kspace(images, line_mask().values),
                 origin=ModelOrigin(name=RESULTS_NAME, role="sft_kd", method="at", stage="kd_at"))
    proto = load_exported(fp32)
    quality = QualityRecord(-0.12, -0.001, 30.0, 8, "fp32 export", "CPU", "validation")
    metadata = dataclasses.replace(metadata_of(proto), precision=Precision.INT8, quality=quality)
    write_exported(proto, exports / f"{STEM}.int8.onnx", metadata)
    return folder


@pytest.fixture(scope="module")
def repository(run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("triton")
    write_triton_repository([ServedExport(RESULTS_NAME, run / "exports" / f"{STEM}.onnx")], folder, provider="cpu")
    return folder


@pytest.fixture(scope="module")
def scan():
    return synthetic_scan(coil_images(seed=3), acquired_lines=acquired_lines(), measurement_uid=33)


@pytest.fixture(scope="module")
def expected(run, scan, tmp_path_factory):
    return offline_images(run / "exports" / f"{STEM}.onnx", scan, tmp_path_factory.mktemp("offline"))


# ------------------------------------------------------------------------------------------------ many models
def test_a_run_serves_each_export_by_stem_and_its_results_name_selects_fp32(run, scan, expected, caplog):
    with caplog.at_level(logging.INFO, logger="compressor.serve"), serving(run) as server:
        assert [model.name for model in server.models] == [f"{STEM}.int8", STEM]  # sorted file names
        int8 = stream_scan(server.address, scan.xml, scan.acquisitions, config="openrecon",
                           parameters={"customconfig": f"{STEM}.int8"}, timeout=TIMEOUT)
        fp32 = stream_scan(server.address, scan.xml, scan.acquisitions, config="openrecon",
                           parameters={"config": RESULTS_NAME}, timeout=TIMEOUT)
        generic = stream_scan(server.address, scan.xml, scan.acquisitions, config="openrecon", timeout=TIMEOUT)
    assert comment(int8.images[0]) == [f"{STEM}.int8", "int8", "dPSNR -0.12 dB vs fp32",
                                       "named by parameters.customconfig"]
    assert comment(fp32.images[0]) == [STEM, "fp32", "fp32 reference", "named by parameters.config"]
    assert_same_images(fp32.images, expected)
    assert generic.images == [] and len(generic.texts) == 1
    assert generic.texts[0].startswith("ERROR ") and "2 served models fit this scan" in generic.texts[0]
    assert f"{STEM}.int8, {STEM}; name one with parameters.customconfig" in generic.texts[0]
    logged = [record.getMessage() for record in caplog.records]
    assert any(f"model {STEM}.int8 (d2c2, int8): named by parameters.customconfig" in line for line in logged)


@pytest.fixture(scope="module")
def two_masks(run, tmp_path_factory) -> Path:
    """A folder serving the run's fp32 model and a model trained for one more line (column 2)."""
    import torch

    from compressor.masks import SamplingMask

    folder = tmp_path_factory.mktemp("two_masks")
    (folder / f"{STEM}.onnx").write_bytes((run / "exports" / f"{STEM}.onnx").read_bytes())
    values = line_mask().values.copy()
    values[:, 2] = 1
    mask = SamplingMask(values, acceleration=values.shape[1] / 6)
    torch.manual_seed(1)
    model = build_model("d2c2", ModelOptions(width=8, image_channels=2)).eval()
    export_model(model, folder / "six_lines.onnx", mask=mask,
                 validation_kspace=simulated_kspace(coil_images(2, 1, seed=5)[:, 0], values))
    return folder


def test_the_first_slice_lines_choose_among_models_that_fit_the_header(two_masks, scan, expected, caplog):
    wider = acquired_lines()
    wider[2] = True
    both = synthetic_scan(coil_images(seed=3), acquired_lines=wider)
    with caplog.at_level(logging.INFO, logger="compressor.serve"), serving(two_masks) as server:
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, config="openrecon", timeout=TIMEOUT)
        refused = stream_scan(server.address, both.xml, both.acquisitions, config="openrecon", timeout=TIMEOUT)
    assert_same_images(reply.images, expected)  # the 5-line model: the other needs line 2, not acquired
    assert comment(reply.images[0])[0] == STEM and comment(reply.images[0])[3] == "the only served model that fits"
    logged = [record.getMessage() for record in caplog.records]
    assert any(f"2 fit the header; waiting for the first slice's lines: {STEM}, six_lines" in line for line in logged)
    assert refused.images == [] and f"2 served models fit this scan (the config message 'openrecon' is generic): " \
        f"{STEM}, six_lines" in refused.texts[0]


def test_default_model_chooses_among_those_that_fit(run, scan):
    options = ServeOptions(provider="cpu", threads=1, default_model=f"{STEM}.INT8")
    with ReconstructionServer(run, "127.0.0.1", 0, options) as server:
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, config="invertcontrast", timeout=TIMEOUT)
    assert comment(reply.images[0])[1:] == ["int8", "dPSNR -0.12 dB vs fp32", "the default model among those that fit"]


def test_a_triton_repository_serves_its_models_by_their_names(repository, scan, expected):
    with serving(repository) as server:
        assert [model.name for model in server.models] == [TRITON_NAME]
        assert server.models[0].metadata.inputs == ("kspace_real", "kspace_imag")  # the mask folded in
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, config=TRITON_NAME, timeout=TIMEOUT)
    assert comment(reply.images[0])[0] == TRITON_NAME and reply.texts == []
    for got, want in zip(reply.images, expected, strict=True):
        assert head_bytes(got) == head_bytes(want)
        assert np.abs(got.data.astype(int) - want.data.astype(int)).max() <= 1


@pytest.mark.parametrize(("arguments", "message"), [
    (lambda run, repository: [run, repository], f"two served models answer to '{RESULTS_NAME}'"),
    (lambda run, repository: [run / "exports" / f"{STEM}.onnx", run], f"the model '{STEM}' is given twice"),
    (lambda run, repository: [run / "masks"], "no such file or folder"),
    (lambda run, repository: [run.parent], "no exported model here"),
])
def test_served_names_are_checked_at_start_up(run, repository, arguments, message):
    with pytest.raises(InputError, match=message):
        ReconstructionServer(arguments(run, repository), "127.0.0.1", 0, ServeOptions(provider="cpu"))


def test_an_unknown_default_model_is_refused_at_start_up(run):
    with pytest.raises(InputError) as caught:
        ReconstructionServer(run, "127.0.0.1", 0, ServeOptions(provider="cpu", default_model="nope"))
    assert str(caught.value) == (f"--default-model 'nope' is not a served name; served: {STEM}.int8, {STEM}, "
                                 f"{RESULTS_NAME}")


# ------------------------------------------------------------------------------------------------ images
def zero_filled_oracle(model_path: Path, scan, key: SliceKey) -> np.ndarray:
    """The zero-filled image of the model's input for slice ``key``: the assembler's slice prepared as the server
    prepares it, ``F^-1`` orthonormal."""
    geometry = EncodingGeometry.from_xml(scan.xml, "scan")
    assembler = SliceAssembler(geometry, "scan")
    slices = [item for acquisition in scan.acquisitions for item in assembler.add(readout_from_ismrmrd(acquisition))]
    (assembled,) = [item for item in slices if item.key == key]
    metadata = open_exported(model_path, "cpu").metadata
    prepared = prepare_slice(assembled, geometry, metadata.mask, metadata, "scan")
    return np.fft.ifft2(prepared.kspace, norm="ortho")


def test_the_comparison_series_holds_the_zero_filled_image(run, scan, expected):
    model_path = run / "exports" / f"{STEM}.onnx"
    with serving(model_path) as server:
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, parameters={"zerofilled": True},
                            timeout=TIMEOUT)
    network = [image for image in reply.images if image.image_series_index == 1]
    comparison = [image for image in reply.images if image.image_series_index == 2]
    assert_same_images(network, expected)
    assert [image.image_index for image in comparison] == [1, 2, 3]
    for image in comparison:
        meta = ismrmrd.Meta.deserialize(image.attribute_string)
        assert meta["ImageComment"] == ["zero-filled", f"input of {STEM}"]
        assert meta["SequenceDescriptionAdditional"] == "_ZEROFILLED"
        oracle = zero_filled_oracle(model_path, scan, SliceKey(image.slice, 0, 0, 0, 0))
        np.testing.assert_array_equal(image.data, image_format("magnitude16").pixels(oracle, 12).data)


def test_slices_contrasts_and_repetitions_each_get_an_image_in_their_contrast_series(run, tmp_path):
    model_path = run / "exports" / f"{STEM}.onnx"
    scan = synthetic_scan(coil_images(seed=9), acquired_lines=acquired_lines(), contrasts=2, repetitions=2)
    assert len(scan.expected_kspace) == 12
    expected = offline_images(model_path, scan, tmp_path)
    with serving(model_path) as server:
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, timeout=TIMEOUT)
        compared = stream_scan(server.address, scan.xml, scan.acquisitions, parameters={"zerofilled": "true"},
                               timeout=TIMEOUT)
    assert_same_images(reply.images, expected)
    keys = {(image.slice, image.contrast, image.repetition) for image in reply.images}
    assert len(reply.images) == 12 and keys == {(s, c, r) for s in range(3) for c in range(2) for r in range(2)}
    for contrast in (0, 1):
        series = [image for image in reply.images if image.contrast == contrast]
        assert {image.image_series_index for image in series} == {1 + contrast}
        assert [image.image_index for image in series] == list(range(1, 7))
    assert len(compared.images) == 24
    assert {(image.contrast, image.image_series_index) for image in compared.images} == {(0, 1), (0, 2), (1, 3),
                                                                                          (1, 4)}


# ------------------------------------------------------------------------------------------------ replay
def saved_files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_a_saved_stream_replays_to_the_served_images(run, scan, tmp_path, caplog):
    model_path = run / "exports" / f"{STEM}.onnx"
    folder = tmp_path / "saved" / "streams"  # created by the server
    options = ServeOptions(provider="cpu", threads=1, save_data=folder, limits=ServerLimits(idle_timeout=TIMEOUT))
    with caplog.at_level(logging.INFO, logger="compressor.serve"), \
            ReconstructionServer(model_path, "127.0.0.1", 0, options) as server:
        reply = stream_scan(server.address, scan.xml, scan.acquisitions, config="openrecon",
                            parameters={"customconfig": STEM}, timeout=TIMEOUT)
    (saved,) = saved_files(folder)  # one file per connection, no temporary left
    assert saved.suffix == ".h5" and saved.name.startswith("MRD_input_")
    assert any(f"stream saved as {saved}" in record.getMessage() for record in caplog.records)
    with ismrmrd.Dataset(str(saved), "dataset", create_if_needed=False) as dataset:
        assert dataset.number_of_acquisitions() == len(scan.acquisitions)
        assert dataset.read_xml_header().decode() == scan.xml
        assert dataset._dataset["config_file"][0] == b"openrecon"
        assert dataset._dataset["configAdditional"][0] == f'{{"parameters": {{"customconfig": "{STEM}"}}}}'.encode()
        first = dataset.read_acquisition(0)
        assert bytes(first.getHead()) == bytes(scan.acquisitions[0].getHead())
        np.testing.assert_array_equal(first.data, scan.acquisitions[0].data)
    images = tmp_path / "replayed.h5"
    result = CliRunner().invoke(reconstruct_command, [str(model_path), str(saved), "--source", "ismrmrd", "--out",
                                                      str(tmp_path / "replayed_recon.h5"), "--ismrmrd-out", str(images),
                                                      "--batch-size", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    with ismrmrd.Dataset(str(images), "dataset", create_if_needed=False) as dataset:
        replayed = [dataset.read_image("images_0", index) for index in range(3)]
    for got, want in zip(reply.images, replayed, strict=True):  # exactly: same code, batch 1
        assert head_bytes(got) == head_bytes(want)
        np.testing.assert_array_equal(got.data, want.data)
        assert meta_without_reason(got) == meta_without_reason(want)


def test_a_stream_over_the_cap_is_not_saved_and_a_refused_one_is(run, scan, tmp_path, caplog):
    model_path = run / "exports" / f"{STEM}.onnx"
    lines = acquired_lines()
    lines[6] = False
    lacking = synthetic_scan(coil_images(), acquired_lines=lines)
    for cap, stream, files in [(4096, scan, 0), (64 << 20, lacking, 1)]:
        folder = tmp_path / str(cap)
        options = ServeOptions(provider="cpu", threads=1, save_data=folder, save_cap=cap,
                               limits=ServerLimits(idle_timeout=TIMEOUT))
        with caplog.at_level(logging.INFO, logger="compressor.serve"), \
                ReconstructionServer(model_path, "127.0.0.1", 0, options) as server:
            reply = stream_scan(server.address, stream.xml, stream.acquisitions, timeout=TIMEOUT)
        assert len(saved_files(folder)) == files
        assert (reply.texts == []) is (files == 0)
    assert any("not recording the stream: the stream passed the 0.00390625 MiB cap (--save-data-cap); nothing "
               "saved" in record.getMessage() for record in caplog.records)


def test_waveforms_are_counted_and_recorded(run, scan, tmp_path):
    model_path = run / "exports" / f"{STEM}.onnx"
    waveform = ismrmrd.Waveform.from_array(np.arange(12, dtype=np.uint32).reshape(2, 6))
    waveform.waveform_id = 1
    payload = (struct.pack("<HI", 3, len(scan.xml)) + scan.xml.encode() + struct.pack("<H", 1026) + waveform.to_bytes()
               + b"".join(struct.pack("<H", 1008) + a.to_bytes() for a in scan.acquisitions) + struct.pack("<H", 4))
    options = ServeOptions(provider="cpu", threads=1, save_data=tmp_path, limits=ServerLimits(idle_timeout=TIMEOUT))
    with ReconstructionServer(model_path, "127.0.0.1", 0, options) as server:
        reply = raw_exchange(server.address, payload)
    assert len(reply) == 4 and reply[-1] == "<close>"
    (saved,) = saved_files(tmp_path)
    with ismrmrd.Dataset(str(saved), "dataset", create_if_needed=False) as dataset:
        assert dataset.number_of_waveforms() == 1 and dataset.number_of_acquisitions() == len(scan.acquisitions)
        np.testing.assert_array_equal(dataset.read_waveform(0).data, waveform.data)
