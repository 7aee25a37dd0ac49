"""``compress reconstruct --source ismrmrd``: a synthetic multi-slice multi-coil raw scan through a tiny exported
model, against the oracle k-space run through the model directly; ISMRMRD image output; bad input."""

from __future__ import annotations

import dataclasses

import h5py
import ismrmrd
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.cli.reconstruct_command import reconstruct_command
from compressor.data.coils import virtual_coil
from compressor.data.mrd_header import EncodingGeometry
from compressor.data.mrd_raw import SliceAssembler
from compressor.data.mrd_readout import SliceKey, readout_from_ismrmrd
from compressor.data.project_h5 import write_project_volume
from compressor.export.runtimes import open_exported
from compressor.export.scanner.image_formats import image_format
from compressor.export.scanner.image_meta import ImageLabels
from compressor.export.scanner.ismrmrd_images import ImageStyle, image_header, ismrmrd_image
from compressor.export.scanner.raw_input import prepare_slice
from compressor.export.scanner.reconstruct import reconstruct_file
from compressor.export.targets.export import export_model, simulated_kspace
from compressor.masks import SamplingMask
from compressor.models import ModelOptions, build_model
from tests.conftest import shorten_acquisition_headers, smooth_image
from tests.synthetic_scans import synthetic_scan

SIZE = (16, 12)  # readout rows, phase-encode columns: non-square on purpose
MASK_COLUMNS = [0, 1, 3, 6, 10]  # uncentred
EXTRA_COLUMNS = [2, 11]  # acquired too, outside the mask
FOV = (220.0, 165.0)


def coil_images(slices: int, coils: int, shape: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """``(slices, coils, H, W)`` complex: a phantom with a smooth phase seen by smooth complex coil sensitivities."""
    height, width = shape
    rows, columns = np.mgrid[0:height, 0:width] / max(shape)
    images = []
    for index in range(slices):
        phase = np.exp(1j * (1.5 * columns + 0.7 * rows + index))
        sensitivities = [np.exp(-((rows - 0.3 * c) ** 2 + (columns - 0.2 * c) ** 2)) * np.exp(0.5j * c)
                         for c in range(coils)]
        image = smooth_image(height, width, seed + index) * phase
        images.append(np.stack([image * sensitivity for sensitivity in sensitivities]))
    return np.asarray(images)


def lines(columns: list[int], width: int = SIZE[1]) -> np.ndarray:
    pattern = np.zeros(width, bool)
    pattern[columns] = True
    return pattern


@pytest.fixture(scope="module")
def mask() -> SamplingMask:
    values = np.zeros(SIZE, np.float32)
    values[:, MASK_COLUMNS] = 1
    return SamplingMask(values, acceleration=SIZE[1] / len(MASK_COLUMNS))


@pytest.fixture(scope="module")
def models(tmp_path_factory, mask) -> dict[str, object]:
    """Tiny d2c2 models: 2-channel exported with ``lines`` and ``dft``, 1-channel with ``lines``."""
    folder = tmp_path_factory.mktemp("models")
    complex_validation = simulated_kspace(coil_images(2, 1)[:, 0], mask.values)
    real_validation = simulated_kspace(np.abs(coil_images(2, 1)[:, 0]), mask.values)
    paths = {}
    for name, channels, formulation, validation in [("lines", 2, "lines", complex_validation),
                                                    ("dft", 2, "dft", complex_validation),
                                                    ("real", 1, "lines", real_validation)]:
        torch.manual_seed(0)
        model = build_model("d2c2", ModelOptions(width=8, image_channels=channels)).eval()
        paths[name] = export_model(model, folder / f"{name}.onnx", mask=mask, validation_kspace=validation,
                                   formulation=formulation).path
    return paths


NOISE_COVARIANCE = np.array([[1.0, 0.3 + 0.2j, 0.0], [0.3 - 0.2j, 0.8, 0.1], [0.0, 0.1, 1.2]]) * 1e-4


@pytest.fixture(scope="module")
def scan():
    return synthetic_scan(coil_images(3, 3), oversampling=2, acquired_lines=lines(MASK_COLUMNS + EXTRA_COLUMNS),
                          noise_scans=40, noise_covariance=NOISE_COVARIANCE, field_of_view_mm=FOV,
                          measurement_uid=4242)


def invoke(*args):
    return CliRunner().invoke(reconstruct_command, [*map(str, args), "--no-progress"])


def prewhitening_oracle(scan) -> np.ndarray:
    """``inv(chol(Ψ))`` of the noise acquisitions' sample covariance, computed here from the acquisitions."""
    noise = np.concatenate([a.data for a in scan.acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)],
                           axis=1).astype(np.complex128)
    return np.linalg.inv(np.linalg.cholesky(noise @ noise.conj().T / noise.shape[1]))


def oracle_reconstruction(model_path, scan, keys, graph_mask: np.ndarray, whitening=None) -> np.ndarray:
    """The expected k-space (prewhitened), masked, one virtual coil per slice, run through the model directly."""
    kspace = []
    for key in keys:
        coils = scan.expected_kspace[key]
        if whitening is not None:
            coils = np.einsum("ij,jhw->ihw", whitening, coils)
        kspace.append(virtual_coil(coils * graph_mask))
    image, scale = open_exported(model_path, "cpu").run(np.stack(kspace), graph_mask)
    return image * scale[:, None, None]


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def assert_refused(result, *fragments: str, paths=()) -> None:
    assert result.exit_code == 2, result.output
    lines_out = result.output.strip().splitlines()
    assert len(lines_out) == 1 and lines_out[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines_out[0], lines_out[0]
    for path in paths:
        assert not path.exists()
        assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary left behind


# ------------------------------------------------------------------------------------------------- good input
def test_reconstruct_ismrmrd_equals_the_oracle(tmp_path, models, scan, mask) -> None:
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    out, images = tmp_path / "recon.h5", tmp_path / "images.h5"
    result = invoke(models["lines"], raw, "--source", "ismrmrd", "--out", out, "--ismrmrd-out", images)
    assert result.exit_code == 0, result.output
    assert "note: acquisitions that are not image data: 40 noise (prewhitening)" in result.output
    assert "note: 6 acquired lines outside the model's mask set to zero" in result.output  # 2 lines x 3 slices
    with h5py.File(out, "r") as file:
        reconstruction = file["reconstruction"][()]
        assert file.attrs["source"] == "ismrmrd" and file.attrs["kspace"] == "measured"
    keys = [SliceKey(s, 0, 0, 0, 0) for s in range(3)]
    expected = oracle_reconstruction(models["lines"], scan, keys, mask.values, prewhitening_oracle(scan))
    assert reconstruction.shape == (3, *SIZE) and reconstruction.dtype == np.complex64
    assert_close(reconstruction, expected)

    float_images = tmp_path / "float_images.h5"
    result = invoke(models["lines"], raw, "--source", "ismrmrd", "--out", tmp_path / "recon_float.h5",
                    "--ismrmrd-out", float_images, "--image-format", "float32")
    assert result.exit_code == 0, result.output
    with ismrmrd.Dataset(str(float_images), "dataset", create_if_needed=False) as dataset:
        for index in range(3):
            image = dataset.read_image("images_0", index)
            assert image.data.shape == (1, 1, SIZE[1], SIZE[0])  # (channels, z, y phase, x readout)
            np.testing.assert_allclose(image.data[0, 0], np.abs(reconstruction[index]).T, rtol=1e-6)
            assert image.image_type == ismrmrd.IMTYPE_MAGNITUDE and image.data.dtype == np.float32
    with ismrmrd.Dataset(str(images), "dataset", create_if_needed=False) as dataset:
        assert EncodingGeometry.from_xml(dataset.read_xml_header(), images).image_shape == SIZE
        assert dataset.number_of_images("images_0") == 3
        for index in range(3):
            image = dataset.read_image("images_0", index)
            assert image.data.shape == (1, 1, SIZE[1], SIZE[0])  # (channels, z, y phase, x readout)
            slope = float(ismrmrd.Meta.deserialize(image.attribute_string)["RescaleSlope"])
            assert image.data.max() == 4095  # the default: 12 bits stored, the maximum at 2^12 - 1
            np.testing.assert_allclose(image.data[0, 0] * slope, np.abs(reconstruction[index]).T, rtol=0,
                                       atol=slope / 2 * 1.001)  # half a step (slope has 9 significant digits)
            assert image.slice == index and image.repetition == 0 and image.average == 0
            assert tuple(image.position) == (0.0, 0.0, (index - 1) * 5.0)
            assert tuple(image.read_dir) == (1.0, 0.0, 0.0) and tuple(image.phase_dir) == (0.0, 1.0, 0.0)
            assert tuple(image.slice_dir) == (0.0, 0.0, 1.0)
            assert tuple(image.patient_table_position) == (0.0, 0.0, -1200.0)
            assert tuple(image.field_of_view) == (*FOV, 5.0)  # readout FOV without oversampling, phase whole
            assert tuple(image.matrix_size) == (SIZE[0], SIZE[1], 1) and image.channels == 1
            assert image.measurement_uid == 4242
            assert image.image_series_index == 1 and image.image_index == index + 1
            assert image.image_type == ismrmrd.IMTYPE_MAGNITUDE and image.data.dtype == np.int16


def test_shifted_counters_without_source_equal_the_oracle(tmp_path, models, mask) -> None:
    """Counters shifted by 2 (centre line counter 8, not W // 2 = 6; the smallest counter 2, not 0), and no --source:
    the file's /dataset/xml and /dataset/data say it is an ISMRMRD raw scan."""
    scan = synthetic_scan(coil_images(2, 3), acquired_lines=lines(MASK_COLUMNS + EXTRA_COLUMNS), step1_center=8,
                          field_of_view_mm=FOV)
    geometry = EncodingGeometry.from_xml(scan.xml, "scan")
    assert (geometry.step1_minimum, geometry.step1_center) == (2, 8)
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    out = tmp_path / "recon.h5"
    result = invoke(models["lines"], raw, "--out", out)
    assert result.exit_code == 0, result.output
    keys = [SliceKey(s, 0, 0, 0, 0) for s in range(2)]
    with h5py.File(out, "r") as file:
        assert file.attrs["source"] == "ismrmrd"
        assert_close(file["reconstruction"][()], oracle_reconstruction(models["lines"], scan, keys, mask.values))


def test_a_failing_ismrmrd_write_leaves_neither_output(tmp_path, models, scan) -> None:
    """The ISMRMRD images cannot be put in place (a folder has their name): the HDF5, written first under a temporary
    name, is removed too."""
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    out, images = tmp_path / "recon.h5", tmp_path / "images.h5"
    images.mkdir()
    with pytest.raises(IsADirectoryError):
        reconstruct_file(models["lines"], raw, out, source="ismrmrd", ismrmrd_out=images, progress=False)
    assert not out.exists() and list(images.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images.h5", "scan.h5"]  # no temporary left


def test_prepare_slice_equals_the_file_path(scan, models, mask) -> None:
    """The per-slice function a streaming server calls gives the graph input of the file path."""
    metadata = open_exported(models["lines"], "cpu").metadata
    geometry = EncodingGeometry.from_xml(scan.xml, "stream")
    assembler = SliceAssembler(geometry, "stream")
    slices = [item for a in scan.acquisitions for item in assembler.add(readout_from_ismrmrd(a))]
    prepared = prepare_slice(slices[1], geometry, mask.values, metadata, "stream")
    whitened = np.einsum("ij,jhw->ihw", prewhitening_oracle(scan), scan.expected_kspace[slices[1].key])
    np.testing.assert_allclose(prepared.kspace, virtual_coil(whitened * mask.values), atol=1e-5)
    np.testing.assert_array_equal(prepared.mask, mask.values)
    assert prepared.lines_outside_mask == 2
    assert np.all(prepared.kspace[:, EXTRA_COLUMNS] == 0)


def test_partial_readout_through_a_dft_graph(tmp_path, models, mask) -> None:
    """Asymmetric echo (3 of 16 samples missing, no oversampling): the 'dft' graph takes mask x readout_sampled."""
    scan = synthetic_scan(coil_images(2, 2), oversampling=1, asymmetric_echo=3, acquired_lines=lines(MASK_COLUMNS),
                          field_of_view_mm=FOV)
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    out = tmp_path / "recon.h5"
    assert invoke(models["dft"], raw, "--source", "ismrmrd", "--out", out).exit_code == 0
    sampled = np.fft.ifftshift(np.arange(SIZE[0]) >= 3)
    keys = [SliceKey(s, 0, 0, 0, 0) for s in range(2)]
    expected = oracle_reconstruction(models["dft"], scan, keys, mask.values * sampled[:, None])
    with h5py.File(out, "r") as file:
        assert_close(file["reconstruction"][()], expected)
    refused = invoke(models["lines"], raw, "--source", "ismrmrd", "--out", tmp_path / "lines.h5")
    assert_refused(refused, "the readouts are partial (3 of 16 samples not acquired",
                   "compress export --formulation dft", paths=[tmp_path / "lines.h5"])


def test_single_coil_scan_through_a_one_channel_model(tmp_path, models, mask) -> None:
    """A real object in one coil: the tool's k-space of the scanner's image is Hermitian, so the real-valued model
    takes it; a complex object is refused by the phase check (or its real part taken on request)."""
    real = np.abs(coil_images(2, 1))
    raw = synthetic_scan(real, acquired_lines=lines(MASK_COLUMNS)).write_ismrmrd(tmp_path / "real.h5")
    out = tmp_path / "recon.h5"
    assert invoke(models["real"], raw, "--source", "ismrmrd", "--out", out).exit_code == 0
    with h5py.File(out, "r") as file:
        reconstruction = file["reconstruction"][()]
        assert float(file.attrs["imaginary_energy_fraction"]) < 1e-6
    image, scale = open_exported(models["real"], "cpu").run(simulated_kspace(real[:, 0], mask.values), mask.values)
    assert_close(reconstruction, image * scale[:, None, None])

    complex_raw = synthetic_scan(coil_images(1, 1), acquired_lines=lines(MASK_COLUMNS)).write_ismrmrd(
        tmp_path / "complex.h5")
    assert_refused(invoke(models["real"], complex_raw, "--source", "ismrmrd", "--out", tmp_path / "c.h5"),
                   "k-space is of a complex-valued image", paths=[tmp_path / "c.h5"])
    taken = invoke(models["real"], complex_raw, "--source", "ismrmrd", "--out", tmp_path / "c.h5",
                   "--take-real-part")
    assert taken.exit_code == 0, taken.output


# ------------------------------------------------------------------------------------------------- images
def test_image_layout_and_header_of_a_non_square_image() -> None:
    scan = synthetic_scan(coil_images(1, 1), acquired_lines=lines(MASK_COLUMNS), field_of_view_mm=FOV,
                          measurement_uid=9)
    geometry = EncodingGeometry.from_xml(scan.xml, "scan")
    assembler = SliceAssembler(geometry, "scan")
    (assembled,) = [item for a in scan.acquisitions for item in assembler.add(readout_from_ismrmrd(a))]
    reconstruction = np.arange(16 * 12, dtype=np.float32).reshape(SIZE) - 50.0  # (readout, phase)
    header = image_header(assembled, geometry, series_index=3, image_index=7)
    style = ImageStyle(image_format("float32"), 12, ImageLabels(("model", "test")))
    image = ismrmrd_image(reconstruction, header, style)
    assert image.data.shape == (1, 1, 12, 16) and tuple(image.matrix_size) == (16, 12, 1)
    assert image.data[0, 0, 5, 2] == abs(reconstruction[2, 5])  # y = phase column, x = readout row
    assert image.data[0, 0, 0, 15] == abs(reconstruction[15, 0])
    assert (image.image_series_index, image.image_index, image.measurement_uid) == (3, 7, 9)
    with pytest.raises(ValueError, match="does not fit an image of 12x16"):
        ismrmrd_image(reconstruction.T, header, style)


# ------------------------------------------------------------------------------------------------- bad input
def _replace_xml(path, edit) -> None:
    with h5py.File(path, "r+") as file:
        header = ismrmrd.xsd.CreateFromDocument(file["dataset/xml"][0])
        edit(header)
        file["dataset/xml"][0] = ismrmrd.xsd.ToXML(header).encode()


def _radial(header) -> None:
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.RADIAL


def _three_d(header) -> None:
    header.encoding[0].encodedSpace.matrixSize.z = 4
    header.encoding[0].encodingLimits.kspace_encoding_step_2.maximum = 3


def _short_data(path) -> None:
    with h5py.File(path, "r+") as file:
        row = file["dataset/data"][2]
        row["data"] = row["data"][:-4]
        file["dataset/data"][2] = row


def _short_head(path) -> None:
    shorten_acquisition_headers(path, 64)


def _numeric_xml(path) -> None:
    with h5py.File(path, "r+") as file:
        del file["dataset/xml"]
        file["dataset"].create_dataset("xml", data=np.zeros(4))


def _not_ismrmrd(path) -> None:
    path.unlink()
    write_project_volume(path, np.ones((2, *SIZE), np.float32))


@pytest.mark.parametrize(("spoil", "fragments"), [
    (_not_ismrmrd, ["scan.h5: not an ISMRMRD file (no /dataset/xml)"]),
    (_short_data, ["scan.h5: acquisition 2 holds 188 float values", "32 samples x 3 channels (192 values)"]),
    (lambda path: _replace_xml(path, _radial), ["trajectory 'radial' is not Cartesian"]),
    (lambda path: _replace_xml(path, _three_d), ["3-D encoding (encoded matrix z = 4"]),
    (_short_head, ["scan.h5: acquisition 0 has a header of 64 bytes; an ISMRMRD acquisition header has 340"]),
    (_numeric_xml, ["scan.h5: /dataset/xml is not one string (dtype float64, shape (4,))"]),
])
def test_bad_files_are_refused(tmp_path, models, scan, spoil, fragments) -> None:
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    spoil(raw)
    out, images = tmp_path / "recon.h5", tmp_path / "images.h5"
    result = invoke(models["lines"], raw, "--source", "ismrmrd", "--out", out, "--ismrmrd-out", images)
    assert_refused(result, *fragments, paths=[out, images])


def test_missing_lines_are_listed(tmp_path, models) -> None:
    """Mask columns 3 and 6 (uncentred) not acquired: centred 9 and 0, which kspace_encode_step_1 counts as 9 and 0
    (centre line W // 2 = 6)."""
    acquired = lines([0, 1, 10, 2])
    raw = synthetic_scan(coil_images(1, 2), acquired_lines=acquired).write_ismrmrd(tmp_path / "scan.h5")
    out = tmp_path / "recon.h5"
    assert_refused(invoke(models["lines"], raw, "--source", "ismrmrd", "--out", out),
                   "the model's mask samples 2 lines the scan did not acquire: kspace_encode_step_1 0, 9 "
                   "(centre line 6)", paths=[out])


def test_wrong_matrix_size(tmp_path, models) -> None:
    raw = synthetic_scan(coil_images(1, 2, (16, 10)), oversampling=2).write_ismrmrd(tmp_path / "scan.h5")
    assert_refused(invoke(models["lines"], raw, "--source", "ismrmrd", "--out", tmp_path / "recon.h5"),
                   "the scan's image grid is 16x10", "exported for 16x12 images", paths=[tmp_path / "recon.h5"])


def test_noise_only_scan(tmp_path, models, scan) -> None:
    noise_only = dataclasses.replace(scan, acquisitions=scan.acquisitions[:40])
    raw = noise_only.write_ismrmrd(tmp_path / "scan.h5")
    assert_refused(invoke(models["lines"], raw, "--source", "ismrmrd", "--out", tmp_path / "recon.h5"),
                   "the file holds only noise acquisitions (40), no image data", paths=[tmp_path / "recon.h5"])


def test_multi_coil_scan_needs_a_two_channel_model(tmp_path, models, scan) -> None:
    raw = scan.write_ismrmrd(tmp_path / "scan.h5")
    assert_refused(invoke(models["real"], raw, "--source", "ismrmrd", "--out", tmp_path / "recon.h5"),
                   "multi-coil data needs a 2-channel model", "(the scan has 3 coils)", paths=[tmp_path / "recon.h5"])


def test_ismrmrd_images_need_a_raw_scan(tmp_path, models) -> None:
    volume = write_project_volume(tmp_path / "volume.h5", np.ones((1, *SIZE), np.float32))
    images = tmp_path / "images.h5"
    assert_refused(invoke(models["real"], volume, "--out", tmp_path / "recon.h5", "--ismrmrd-out", images),
                   "ISMRMRD image output needs an ISMRMRD raw scan (--source ismrmrd)",
                   paths=[tmp_path / "recon.h5", images])


def test_project_files_still_infer_project(tmp_path, models) -> None:
    volume = write_project_volume(tmp_path / "volume.h5", np.abs(coil_images(1, 1))[:, 0].astype(np.float32))
    result = invoke(models["real"], volume, "--out", tmp_path / "recon.h5")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "recon.h5", "r") as file:
        assert file.attrs["source"] == "project"
