"""``compress reconstruct``: files the test writes in, HDF5 out; every bad input is exit code 2, one line, no file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.cli.reconstruct_command import reconstruct_command
from compressor.data.project_h5 import write_project_volume
from compressor.errors import InputError
from compressor.export.runtimes import open_exported
from compressor.export.scanner.input_formats import infer_source, input_format, read_input, source_names
from compressor.export.scanner.scanner_input import (
    COMPLEX_IMAGE_THRESHOLD,
    InputRequest,
    imaginary_energy_fraction,
    mirror,
)
from compressor.export.targets.export import export_model, phantom_kspace, simulated_kspace
from compressor.masks import make_mask
from compressor.models import ModelOptions, build_model

SIZE = (16, 16)


@pytest.fixture(scope="module")
def mask():
    return make_mask("random", 4, SIZE, seed=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, mask):
    torch.manual_seed(0)
    model = build_model("d2c2", ModelOptions(width=8)).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_model(model, path, mask=mask, validation_kspace=phantom_kspace(mask, 1))
    return path


def images(count: int, seed: int = 0, shape: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *shape)).astype(np.float32)


def invoke(*args: str):
    return CliRunner().invoke(reconstruct_command, [*map(str, args), "--no-progress"])


def expected_reconstruction(model_path, kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    image, scale = open_exported(model_path, "cpu").run(kspace, mask)
    return image * scale[:, None, None]


# --- the complex-image detector ---------------------------------------------------------------------------------

def test_mirror_maps_index_k_to_minus_k_mod_n():
    values = np.arange(12).reshape(3, 4)
    mirrored = mirror(values)
    for row in range(3):
        for column in range(4):
            assert mirrored[row, column] == values[-row % 3, -column % 4]


def test_imaginary_energy_is_zero_for_real_images_and_large_for_complex_ones(mask):
    real = simulated_kspace(images(3), mask.values)
    phase = np.exp(1j * np.random.default_rng(1).uniform(-np.pi, np.pi, (3, *SIZE)))
    complex_kspace = np.fft.fft2(images(3) * phase, norm="ortho") * mask.values
    assert imaginary_energy_fraction(real, mask.values) < 1e-10
    assert imaginary_energy_fraction(complex_kspace, mask.values) > 0.2 > COMPLEX_IMAGE_THRESHOLD


# --- good inputs -------------------------------------------------------------------------------------------------

def test_reconstruct_project_hdf5_simulates_kspace_with_the_models_mask(tmp_path, model_path, mask):
    targets = images(5, seed=2) * 300.0
    volume = write_project_volume(tmp_path / "volume.h5", targets)
    out, previews = tmp_path / "out" / "recon.h5", tmp_path / "previews"
    result = invoke(model_path, volume, "--out", out, "--batch-size", 2, "--previews", previews)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as file:
        reconstruction = file["reconstruction"][()]
        assert file.attrs["model_architecture"] == '"d2c2"' and file.attrs["source"] == "project"
    expected = expected_reconstruction(model_path, simulated_kspace(targets, mask.values), mask.values)
    assert reconstruction.shape == (5, *SIZE) and reconstruction.dtype == np.float32
    np.testing.assert_allclose(reconstruction, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert sorted(p.name for p in previews.iterdir()) == [f"slice_{i:04d}.png" for i in range(5)]


def test_reconstruct_npy_kspace_centred_or_not(tmp_path, model_path, mask):
    kspace = simulated_kspace(images(3, seed=3), mask.values)
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "k_centred.npy", np.fft.fftshift(kspace, axes=(-2, -1)))
    np.save(tmp_path / "one.npy", kspace[0])
    assert invoke(model_path, tmp_path / "k.npy", "--out", tmp_path / "a.h5").exit_code == 0
    assert invoke(model_path, tmp_path / "k_centred.npy", "--centred", "--out", tmp_path / "b.h5").exit_code == 0
    assert invoke(model_path, tmp_path / "one.npy", "--out", tmp_path / "c.h5").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b, h5py.File(tmp_path / "c.h5") as c:
        np.testing.assert_allclose(a["reconstruction"][()], expected_reconstruction(model_path, kspace, mask.values),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b["reconstruction"][()], a["reconstruction"][()], atol=1e-6)
        np.testing.assert_allclose(c["reconstruction"][()], a["reconstruction"][:1], atol=1e-6)


def test_complex_image_is_reconstructed_when_the_user_takes_the_real_part(tmp_path, model_path, mask):
    phase = np.exp(1j * np.linspace(0, 3, SIZE[1]))[None, None, :]
    np.save(tmp_path / "complex.npy", np.fft.fft2(images(2) * phase, norm="ortho") * mask.values)
    result = invoke(model_path, tmp_path / "complex.npy", "--out", tmp_path / "r.h5", "--take-real-part")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "r.h5") as file:
        assert file.attrs["took_real_part"] == "True"


# --- bad inputs: exit code 2, one line, nothing written ----------------------------------------------------------

def _assert_refused(result, out, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def test_input_of_another_image_size_is_refused(tmp_path, model_path):
    np.save(tmp_path / "big.npy", simulated_kspace(images(1, shape=(20, 20)), np.ones((20, 20), np.float32)))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "big.npy", "--out", out), out, "exported for 16x16")


def test_volume_of_another_image_size_is_refused(tmp_path, model_path):
    volume = write_project_volume(tmp_path / "big.h5", images(2, shape=(20, 16)))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, volume, "--out", out), out, "slices are 20x16")


@pytest.mark.parametrize(("mask_values", "message"), [
    (np.ones((16, 12), np.float32), "does not fit"),
    (np.ones((16, 16), np.float32), "trained for 4x"),
    (np.eye(16, dtype=np.float32) + np.fliplr(np.eye(16, dtype=np.float32)) + np.roll(np.eye(16), 8, 0),
     "whole columns"),
])
def test_mask_that_does_not_fit_is_refused(tmp_path, model_path, mask, mask_values, message):
    np.save(tmp_path / "k.npy", simulated_kspace(images(1), mask.values))
    np.save(tmp_path / "m.npy", np.clip(mask_values, 0, 1))
    out = tmp_path / "o.h5"
    result = invoke(model_path, tmp_path / "k.npy", "--mask", tmp_path / "m.npy", "--out", out)
    _assert_refused(result, out, message)


def test_kspace_undersampled_with_another_mask_is_refused(tmp_path, model_path, mask):
    other = make_mask("random", 4, SIZE, seed=9)
    np.save(tmp_path / "k.npy", simulated_kspace(images(1), other.values))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "k.npy", "--out", out), out, "samples where the mask has none")


def test_kspace_undersampled_with_a_sparser_mask_is_refused(tmp_path, model_path, mask):
    sparser = mask.values.copy()
    sparser[:, np.flatnonzero(mask.values[0])[1:3]] = 0  # two of the model's lines never measured
    np.save(tmp_path / "k.npy", simulated_kspace(images(2), sparser))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "k.npy", "--out", out), out, "sparser mask")


def test_nan_in_kspace_is_refused(tmp_path, model_path, mask):
    kspace = simulated_kspace(images(3), mask.values)
    kspace[1, 0, 0] = np.nan
    np.save(tmp_path / "k.npy", kspace)
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "k.npy", "--out", out), out, "slice 1 contains NaN")


def test_complex_image_is_refused_without_take_real_part(tmp_path, model_path, mask):
    phase = np.exp(1j * np.linspace(0, 3, SIZE[1]))[None, None, :]
    np.save(tmp_path / "complex.npy", np.fft.fft2(images(2) * phase, norm="ortho") * mask.values)
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "complex.npy", "--out", out), out, "complex-valued image")


def test_missing_input_file_is_refused(tmp_path, model_path):
    out = tmp_path / "o.h5"
    _assert_refused(invoke(model_path, tmp_path / "absent.npy", "--out", out), out, "input file not found")


def test_corrupt_model_file_is_refused(tmp_path, mask):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 this is not a protobuf model")
    np.save(tmp_path / "k.npy", simulated_kspace(images(1), mask.values))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(tmp_path / "bad.onnx", tmp_path / "k.npy", "--out", out), out, "not a loadable ONNX model")


def test_onnx_model_not_exported_by_this_tool_is_refused(tmp_path, model_path, mask):
    import onnx

    foreign = onnx.load(str(model_path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    np.save(tmp_path / "k.npy", simulated_kspace(images(1), mask.values))
    out = tmp_path / "o.h5"
    _assert_refused(invoke(tmp_path / "foreign.onnx", tmp_path / "k.npy", "--out", out), out,
                    "not exported by this tool")


# --- the input formats ------------------------------------------------------------------------------------------

def test_the_source_choices_come_from_one_list_of_input_formats():
    from compressor.cli.export_command import export_command
    from compressor.data.volume import VOLUME_SOURCES

    assert source_names() == ["npy", *VOLUME_SOURCES.names(), "ismrmrd", "mrd"]
    assert source_names() == ["npy", "authors", "fastmri", "nifti", "project", "ismrmrd", "mrd"]
    assert source_names(without_model=True) == ["npy", "authors", "fastmri", "nifti", "project"]
    choices = {command.name: next(p for p in command.params if p.name == "source").type.choices
               for command in (export_command, reconstruct_command)}
    assert choices == {"export": tuple(source_names(without_model=True)), "reconstruct": tuple(source_names())}
    assert [input_format(name).streamed for name in ("npy", "ismrmrd", "mrd")] == [False, False, True]


def test_the_source_is_recognised_by_the_file_name_unless_its_content_says_more(tmp_path):
    write_project_volume(tmp_path / "volume.H5", images(1))
    assert [infer_source(tmp_path / name) for name in ("k.npy", "v.nii", "v.nii.gz", "volume.H5", "absent.hdf5")] \
        == ["npy", "nifti", "nifti", "project", "project"]
    with pytest.raises(InputError, match=r"scan\.dat: cannot tell the source from the file name; pass --source "
                                         r"\(npy, authors, fastmri, nifti, project, ismrmrd\)"):
        infer_source(tmp_path / "scan.dat")


def test_a_registered_volume_source_is_an_input_format(tmp_path, monkeypatch, mask):
    from compressor.data.readers import ProjectH5Reader
    from compressor.data.volume import VOLUME_SOURCES

    class Dummy(ProjectH5Reader):
        named_by = (".dummy",)

    monkeypatch.setitem(VOLUME_SOURCES._items, "dummy", Dummy)
    path = write_project_volume(tmp_path / "scan.dummy", images(2))
    assert infer_source(path) == "dummy" and "dummy" in source_names(without_model=True)
    read = read_input(path, "dummy", SIZE, mask.values)
    np.testing.assert_allclose(read.kspace, simulated_kspace(images(2), mask.values), rtol=1e-6)
    assert not read.measured


def test_a_stream_is_not_read_whole_and_raw_scans_need_the_model(tmp_path, mask):
    path = tmp_path / "scan.bin"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="an MRD v2 stream is reconstructed as it arrives, not read whole"):
        input_format("mrd").read(path, InputRequest(SIZE, mask.values))
    with pytest.raises(InputError, match="unknown source 'ismrmrd'; valid: npy, authors, fastmri, nifti, project"):
        read_input(path, "ismrmrd", SIZE, mask.values)
