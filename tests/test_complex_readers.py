"""Readers with ``keep_phase=True``: complex images of known phase in tiny files, checked against NumPy oracles.

The fake fastMRI files follow fastMRI's conventions: k-space centred, image = fftshift(ifft2(ifftshift(k))), the
readout (rows, axis -2) oversampled 2x (32 rows for a 16-row image), the phase-encode lines are the 12 columns.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest

from compressor.data import coils, project_h5
from compressor.data.readers import FastMRIReader, open_volume
from compressor.errors import InputError
from tests.conftest import hdf5_selections

ROWS, COLUMNS, READOUT = 16, 12, 32  # image grid, and the oversampled readout the k-space is stored on
CENTRE = slice(READOUT // 2 - ROWS // 2, READOUT // 2 + ROWS // 2)  # the rows the reader keeps (fftshift centre)


def smooth_phase(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A smooth phase map (rows, columns) spanning more than pi across the grid."""
    u = np.linspace(-1, 1, rows)[:, None]
    v = np.linspace(-1, 1, columns)[None, :]
    return 0.3 * seed + 1.2 * np.pi * u + 0.6 * np.pi * v**2 - 0.4 * u * v


def known_image(rows: int = READOUT, columns: int = COLUMNS, seed: int = 0) -> np.ndarray:
    """A complex128 image (rows, columns): a smooth positive magnitude times exp(i * smooth_phase)."""
    u = np.linspace(-1, 1, rows)[:, None]
    v = np.linspace(-1, 1, columns)[None, :]
    magnitude = 1.0 + seed + np.exp(-4 * (u**2 + v**2)) + 0.3 * np.cos(3 * u + 2 * v)
    return magnitude * np.exp(1j * smooth_phase(rows, columns, seed))


def centred_kspace(images: np.ndarray) -> np.ndarray:
    """fastMRI's centred k-space of centred images (..., H, W), complex64: the inverse of the reader's formula."""
    axes = (-2, -1)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=axes), axes=axes, norm="ortho"), axes=axes)
    return kspace.astype(np.complex64)


def write_h5(path: Path, datasets: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as file:
        for key, data in datasets.items():
            file.create_dataset(key, data=data)
    return path


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> None:
    """Relative agreement in the 2-norm."""
    assert actual.shape == expected.shape
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error < tolerance, f"relative error {error:.2e}"


def fft2(image: np.ndarray) -> np.ndarray:
    return np.fft.fft2(image, norm="ortho")


def data_fidelity(estimate: np.ndarray, measured: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Oracle DF: replace the sampled (uncentred) columns of the estimate's k-space by the measured ones."""
    kspace = fft2(estimate)
    kspace[:, columns] = measured[:, columns]
    return np.fft.ifft2(kspace, norm="ortho")


# --- fastMRI single-coil -----------------------------------------------------------------------------------------

def single_coil_file(path: Path, slices: int = 2) -> tuple[Path, np.ndarray]:
    images = np.stack([known_image(seed=s) for s in range(slices)])
    reconstruction = np.abs(images[:, CENTRE, :]).astype(np.float32)
    return write_h5(path, {"kspace": centred_kspace(images), "reconstruction_esc": reconstruction}), images


def test_single_coil_keeps_the_complex_image_on_the_measured_grid(tmp_path: Path) -> None:
    path, images = single_coil_file(tmp_path / "sc.h5")
    reader = open_volume(path, "fastmri", keep_phase=True, recon_size=(ROWS, ROWS))
    assert (reader.image_shape, reader.stores_kspace, reader.target_key) == ((ROWS, COLUMNS), True, None)
    item = reader.read_slice(1)
    assert item.target.dtype == np.complex64 and item.kspace.dtype == np.complex64
    assert_close(item.target, images[1, CENTRE, :])
    assert_close(item.kspace, fft2(item.target), 1e-6)  # uncentred, orthonormal, from the image
    assert np.ptp(np.angle(item.target)) > 2.0, "the phase is kept"
    assert item.rss is None and item.kspace_undersampled is False

    magnitude = open_volume(path, "fastmri", recon_size=(ROWS, ROWS))  # keep_phase=False: as before
    plain = magnitude.read_slice(1)
    assert (magnitude.image_shape, magnitude.stores_kspace, plain.kspace) == ((ROWS, COLUMNS), False, None)
    assert plain.target.dtype == np.float32
    np.testing.assert_array_equal(plain.target, np.abs(images[1, CENTRE, :]).astype(np.float32))


def test_readout_crop_commutes_with_a_column_data_fidelity(tmp_path: Path) -> None:
    path, images = single_coil_file(tmp_path / "sc.h5", slices=1)
    item = FastMRIReader(path, recon_size=(ROWS, ROWS), keep_phase=True).read_slice(0)
    rng = np.random.default_rng(1)
    estimate = rng.standard_normal((READOUT, COLUMNS)) + 1j * rng.standard_normal((READOUT, COLUMNS))
    columns = np.array([0, 1, 2, 5, 9, 11])  # a line mask, uncentred column indices
    on_full_grid = data_fidelity(estimate, fft2(images[0]), columns)[CENTRE, :]
    on_cropped_grid = data_fidelity(estimate[CENTRE, :], item.kspace, columns)
    assert_close(on_cropped_grid, on_full_grid)


def test_single_coil_without_reconstruction(tmp_path: Path) -> None:
    images = known_image()[None]
    path = write_h5(tmp_path / "test.h5", {"kspace": centred_kspace(images)})
    item = open_volume(path, "fastmri", keep_phase=True, recon_size=(ROWS, ROWS)).read_slice(0)
    assert_close(item.target, images[0, CENTRE, :])
    magnitude = open_volume(path, "fastmri", recon_size=(ROWS, 10))  # keep_phase=False: |image|, cropped
    assert magnitude.image_shape == (ROWS, 10) and magnitude.read_slice(0).target.dtype == np.float32


# --- fastMRI multi-coil -------------------------------------------------------------------------------------------

def rank_one_coils(count: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coil images (C, READOUT, COLUMNS) = c_k * profile * image: maps of rank 1 (vector c times one profile)."""
    c = np.array([0.4 - 0.2j, -1.1 + 0.9j, 0.3j, 0.7 + 0.1j])[:count]
    profile = 0.5 + np.exp(1j * 0.5 * smooth_phase(READOUT, COLUMNS, 3)) * np.linspace(0.5, 1.5, COLUMNS)
    image = known_image()
    return c[:, None, None] * profile * image, c, profile * image


def test_rank_one_coils_compress_to_the_image_without_loss(tmp_path: Path) -> None:
    coil_images, c, combined = rank_one_coils()
    path = write_h5(tmp_path / "mc.h5", {"kspace": centred_kspace(coil_images)[None],
                                         "reconstruction_rss": np.ones((1, ROWS, ROWS), np.float32)})
    reader = open_volume(path, "fastmri", keep_phase=True, recon_size=(ROWS, ROWS))
    assert (reader.coils, reader.image_shape, reader.stores_kspace) == (4, (ROWS, COLUMNS), True)
    item = reader.read_slice(0)
    cropped = coil_images[:, CENTRE, :]
    # u = c exp(-i arg c_j) / ||c|| (j: largest |c_j|), so u^H X = ||c|| exp(i arg c_j) * (profile * image).
    largest = c[np.argmax(np.abs(c))]
    assert_close(item.target, np.linalg.norm(c) * largest / abs(largest) * combined[CENTRE, :])
    assert_close(item.kspace, fft2(item.target), 1e-6)
    np.testing.assert_allclose(item.rss, np.sqrt(np.sum(np.abs(cropped) ** 2, axis=0)), rtol=1e-5)
    assert item.rss.dtype == np.float32
    assert coils.kept_energy_fraction(cropped) == pytest.approx(1.0, abs=1e-9)


def test_coil_compression_of_general_coils_follows_the_documented_convention() -> None:
    rng = np.random.default_rng(2)
    coil_images = rng.standard_normal((5, 6, 7)) + 1j * rng.standard_normal((5, 6, 7))
    u = coils.principal_coil_vector(coil_images)
    j = np.argmax(np.abs(u))
    assert np.linalg.norm(u) == pytest.approx(1.0) and u[j].real > 0 and u[j].imag == pytest.approx(0.0, abs=1e-12)
    matrix = coil_images.reshape(5, -1)
    largest = np.linalg.svd(matrix, compute_uv=False)[0]
    assert np.linalg.norm(np.conj(u) @ matrix) == pytest.approx(largest)  # u is the first singular vector
    virtual = coils.virtual_coil(coil_images)
    assert virtual.shape == (6, 7) and virtual.dtype == np.complex64
    assert_close(virtual, (np.conj(u) @ matrix).reshape(6, 7), 1e-6)
    kept = coils.kept_energy_fraction(coil_images)
    assert kept == pytest.approx(np.sum(np.abs(virtual) ** 2) / np.sum(np.abs(coil_images) ** 2), rel=1e-5)
    assert 0.2 < kept < 1.0
    assert_close(coils.root_sum_of_squares(coil_images), np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=0)), 1e-6)


# --- project and authors files ---------------------------------------------------------------------------------------

def test_project_complex_target_and_target_from_kspace(tmp_path: Path) -> None:
    images = np.stack([known_image(ROWS, COLUMNS, s) for s in range(2)])
    stored = project_h5.write_project_volume(tmp_path / "complex.h5", images)
    item = open_volume(stored, "project", keep_phase=True).read_slice(1)
    assert item.target.dtype == np.complex64 and item.kspace is None
    assert_close(item.target, images[1], 1e-6)
    with pytest.raises(InputError, match=r"complex\.h5 \[target\]: .*a complex target needs the 2-channel models "
                                         r"\(compress --channels 2\)"):
        open_volume(stored, "project")

    kspace = fft2(images)
    with_kspace = project_h5.write_project_volume(tmp_path / "k.h5", np.abs(images), kspace=kspace)
    item = open_volume(with_kspace, "project", keep_phase=True).read_slice(0)
    assert item.target.dtype == np.complex64 and item.kspace.dtype == np.complex64
    assert_close(item.target, images[0])  # the complex image of the k-space, not the stored magnitude
    assert_close(item.kspace, fft2(item.target), 1e-6)
    plain = open_volume(with_kspace, "project").read_slice(0)  # 1 channel: the stored real target, as before
    np.testing.assert_array_equal(plain.target, np.abs(images[0]).astype(np.float32))

    real = project_h5.write_project_volume(tmp_path / "real.h5", np.abs(images))
    item = open_volume(real, "project", keep_phase=True).read_slice(0)
    assert item.target.dtype == np.float32 and item.kspace is None


def test_authors_volfs_real_or_complex(tmp_path: Path) -> None:
    images = np.stack([known_image(ROWS, COLUMNS, s) for s in range(2)], axis=-1)  # (H, W, S) as they store it
    kspace = np.fft.fft2(images, axes=(0, 1), norm="ortho")
    kspace[:, 3:7, :] = 0
    path = write_h5(tmp_path / "vol.h5", {"volfs": images.astype(np.complex64),
                                          "kspace_volus_4x": kspace.astype(np.complex64)})
    item = open_volume(path, "authors", keep_phase=True, acceleration=4).read_slice(1)
    assert item.target.dtype == np.complex64 and item.kspace_undersampled
    assert_close(item.target, images[:, :, 1], 1e-6)
    with pytest.raises(InputError, match=r"vol\.h5 \[volfs\]: .*compress --channels 2"):
        open_volume(path, "authors", acceleration=4)
    real = write_h5(tmp_path / "real.h5", {"volfs": np.abs(images), "kspace_volus_4x": kspace.astype(np.complex64)})
    assert open_volume(real, "authors", keep_phase=True, acceleration=4).read_slice(0).target.dtype == np.float32


def test_nifti_is_unchanged_by_keep_phase(tmp_path: Path) -> None:
    data = np.arange(8 * 6 * 2, dtype=np.float32).reshape(8, 6, 2)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii")
    reader = open_volume(tmp_path / "s.nii", "nifti", keep_phase=True)
    item = reader.read_slice(1)
    assert item.target.dtype == np.float32 and item.kspace is None and not reader.stores_kspace


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_phase", [False, True])
def test_slice_counts_of_kspace_and_reconstruction_must_agree(tmp_path: Path, keep_phase: bool) -> None:
    path = write_h5(tmp_path / "odd.h5", {"kspace": centred_kspace(np.stack([known_image()] * 3)),
                                          "reconstruction_esc": np.ones((2, ROWS, ROWS), np.float32)})
    with pytest.raises(InputError, match=r"odd\.h5: 'reconstruction_esc' has 2 slices but 'kspace' has 3"):
        open_volume(path, "fastmri", keep_phase=keep_phase)


@pytest.mark.parametrize("coil_count", [None, 3])
def test_nan_in_kspace_names_file_key_and_slice(tmp_path: Path, coil_count: int | None) -> None:
    images = np.stack([known_image()] * 2) if coil_count is None else np.stack([rank_one_coils(coil_count)[0]] * 2)
    kspace = centred_kspace(images)
    kspace[1, ..., 0, 0] = np.nan
    reader = open_volume(write_h5(tmp_path / "nan.h5", {"kspace": kspace}), "fastmri", keep_phase=True)
    reader.read_slice(0)
    with pytest.raises(InputError, match=r"nan\.h5 \[kspace\]: slice 1 contains NaN or Inf"):
        reader.read_slice(1)


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 2, 3, 4, 5), r"expected single-coil k-space \(S, H, W\) or multi-coil .* got shape \(1, 2, 3, 4, 5\)"),
    ((2, 0, 8, 4), r"multi-coil k-space with 0 coils"),
])
def test_kspace_of_wrong_shape(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    path = write_h5(tmp_path / "bad.h5", {"kspace": np.zeros(shape, np.complex64)})
    with pytest.raises(InputError, match=rf"bad\.h5 \[kspace\]: {message}"):
        open_volume(path, "fastmri", keep_phase=True)


def test_multi_coil_without_reconstruction_needs_two_channels(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "multi.h5", {"kspace": centred_kspace(rank_one_coils()[0])[None]})
    with pytest.raises(InputError, match=r"multi\.h5 \[kspace\]: multi-coil .*compress --channels 2.*virtual coil"):
        open_volume(path, "fastmri")
    assert open_volume(path, "fastmri", keep_phase=True).read_slice(0).rss is not None


def test_a_multi_coil_read_takes_one_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_h5(tmp_path / "multi.h5", {"kspace": centred_kspace(np.stack([rank_one_coils()[0]] * 3))})
    reader = open_volume(path, "fastmri", keep_phase=True)
    assert hdf5_selections(monkeypatch, lambda: reader.read_slice(2)) == [2]
