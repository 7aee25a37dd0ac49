"""The slice dataset: crop/pad, simulated undersampling, the one normalisation on every path, and the splits."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from compressor.config import DataConfig
from compressor.data import DataSplits, build_splits, centre_crop_or_pad, normalise_kspace, write_project_volume
from compressor.data.dataset import SliceDataset
from compressor.data.readers import open_volume
from compressor.errors import InputError
from compressor.masks import SamplingMask, make_mask

HEIGHT, WIDTH = 12, 10


def phantom(slices: int = 3) -> np.ndarray:
    """``(S, 12, 10)`` non-negative images with structure (so that every slice has a distinct scale)."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([np.cos(rows / (2 + s)) ** 2 + cols / (5 + s) for s in range(slices)]).astype(np.float32)


def mask() -> SamplingMask:
    return make_mask("equispaced", 2.0, (HEIGHT, WIDTH))


def numpy_sample(image: np.ndarray, mask_values: np.ndarray) -> dict[str, np.ndarray]:
    """The oracle: ``y = M ⊙ F(x)``, ``x_u = Re F^{-1}(y)``, all divided by ``max |x_u|``."""
    kspace = mask_values * np.fft.fft2(image, norm="ortho")
    zero_filled = np.fft.ifft2(kspace, norm="ortho").real
    scale = np.abs(zero_filled).max()
    return {"zero_filled": zero_filled / scale, "kspace": kspace / scale, "target": image / scale, "scale": scale}


def assert_matches(sample, expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(sample.zero_filled[0].numpy(), expected["zero_filled"], atol=1e-5)
    np.testing.assert_allclose(torch.view_as_complex(sample.kspace[0]).numpy(), expected["kspace"], atol=1e-5)
    np.testing.assert_allclose(sample.target[0].numpy(), expected["target"], atol=1e-5)
    np.testing.assert_allclose(sample.scale.item(), expected["scale"], rtol=1e-5)


# --- centre crop / pad ---------------------------------------------------------------------------------------------

def test_centre_crop_and_pad_by_hand() -> None:
    row = np.arange(1, 6, dtype=np.float32)[None, :]  # [[1, 2, 3, 4, 5]], centre pixel index 2 (value 3)
    np.testing.assert_array_equal(centre_crop_or_pad(row, (1, 2)), [[2, 3]])
    np.testing.assert_array_equal(centre_crop_or_pad(row, (1, 3)), [[2, 3, 4]])
    np.testing.assert_array_equal(centre_crop_or_pad(row, (1, 8)), [[0, 0, 1, 2, 3, 4, 5, 0]])  # 3 lands on 8 // 2
    np.testing.assert_array_equal(centre_crop_or_pad(np.array([[7.0, 8.0]]), (1, 5)), [[0, 7, 8, 0, 0]])
    np.testing.assert_array_equal(centre_crop_or_pad(np.array([[7.0, 8.0]]), (3, 2)), [[0, 0], [7, 8], [0, 0]])


@pytest.mark.parametrize("size", [(3, 3), (4, 6), (9, 8), (6, 2)])
def test_centre_pixel_moves_to_centre_and_batch_axes_are_kept(size: tuple[int, int]) -> None:
    image = np.zeros((2, 6, 5), np.float32)
    image[:, 3, 2] = 1.0  # the centre pixel (H // 2, W // 2)
    result = centre_crop_or_pad(image, size)
    assert result.shape == (2, *size)
    assert result[:, size[0] // 2, size[1] // 2].tolist() == [1.0, 1.0] and result.sum() == 2.0


# --- normalisation -------------------------------------------------------------------------------------------------

def test_normalise_kspace_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    kspace = (rng.standard_normal((2, 7, 6)) + 1j * rng.standard_normal((2, 7, 6))).astype(np.complex64)
    result = normalise_kspace(torch.view_as_real(torch.from_numpy(kspace)))
    zero_filled = np.fft.ifft2(kspace, norm="ortho").real
    scale = np.abs(zero_filled).max(axis=(1, 2))
    np.testing.assert_allclose(result.scale.numpy(), scale, rtol=1e-5)
    np.testing.assert_allclose(result.zero_filled.numpy(), zero_filled / scale[:, None, None], atol=1e-6)
    np.testing.assert_allclose(torch.view_as_complex(result.kspace).numpy(), kspace / scale[:, None, None], atol=1e-6)
    assert result.zero_filled.abs().amax(dim=(-2, -1)).tolist() == pytest.approx([1.0, 1.0])


# --- the dataset ---------------------------------------------------------------------------------------------------

def test_images_only_source_simulates_kspace(tmp_path: Path) -> None:
    images = phantom()
    reader = open_volume(write_project_volume(tmp_path / "vol.h5", images), "project")
    sample = SliceDataset([reader], mask())[1]
    assert sample.zero_filled.shape == (1, HEIGHT, WIDTH) and sample.kspace.shape == (1, HEIGHT, WIDTH, 2)
    assert sample.mask.shape == (1, HEIGHT, WIDTH) and sample.target.shape == (1, HEIGHT, WIDTH)
    assert sample.scale.shape == () and sample.zero_filled.dtype == torch.float32
    assert (sample.volume, sample.slice_index) == ("vol", 1)
    np.testing.assert_array_equal(sample.mask[0].numpy(), mask().values)
    assert_matches(sample, numpy_sample(images[1], mask().values))


def test_images_are_cropped_or_padded_to_the_image_size(tmp_path: Path) -> None:
    images = phantom()
    reader = open_volume(write_project_volume(tmp_path / "vol.h5", images), "project")
    square = make_mask("equispaced", 2.0, (8, 8))
    sample = SliceDataset([reader], square, image_size=8)[0]
    assert_matches(sample, numpy_sample(images[0][2:10, 1:9], square.values))


def write_same_image_in_every_layout(folder: Path, image: np.ndarray, mask_values: np.ndarray) -> dict[str, object]:
    """One slice stored as each source stores it; returns the readers."""
    kspace = np.fft.fft2(image, norm="ortho").astype(np.complex64)
    with h5py.File(folder / "authors.h5", "w") as file:
        file["volfs"] = image[:, :, None]
        file["kspace_volus_2x"] = (mask_values * kspace)[:, :, None]
    with h5py.File(folder / "fastmri.h5", "w") as file:
        file["reconstruction_esc"] = image[None]
    nibabel.save(nibabel.Nifti1Image(image[:, :, None], np.eye(4)), folder / "nifti.nii.gz")
    return {
        "project": open_volume(write_project_volume(folder / "project.h5", image[None]), "project"),
        "project+kspace": open_volume(write_project_volume(folder / "pk.h5", image[None], kspace=kspace[None]),
                                      "project"),
        "authors": open_volume(folder / "authors.h5", "authors", acceleration=2),
        "fastmri": open_volume(folder / "fastmri.h5", "fastmri"),
        "nifti": open_volume(folder / "nifti.nii.gz", "nifti"),
    }


@pytest.mark.parametrize("source", ["project", "project+kspace", "authors", "fastmri", "nifti"])
def test_normalisation_is_identical_on_every_path(tmp_path: Path, source: str) -> None:
    image = phantom(1)[0] * 250.0  # an arbitrary intensity unit: the normalisation removes it
    reader = write_same_image_in_every_layout(tmp_path, image, mask().values)[source]
    assert_matches(SliceDataset([reader], mask())[0], numpy_sample(image, mask().values))


def test_inference_input_is_normalised_as_in_training(tmp_path: Path) -> None:
    image = phantom(1)[0] * 250.0
    reader = open_volume(write_project_volume(tmp_path / "vol.h5", image[None]), "project")
    training = SliceDataset([reader], mask())[0]
    # At inference only the undersampled k-space is known; the same function gives the same model input.
    measured = torch.from_numpy(mask().values * np.fft.fft2(image, norm="ortho")).to(torch.complex64)
    inference = normalise_kspace(torch.view_as_real(measured))
    np.testing.assert_allclose(inference.zero_filled.numpy(), training.zero_filled[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(inference.kspace.numpy(), training.kspace[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(inference.scale.item(), training.scale.item(), rtol=1e-6)


def test_mask_that_does_not_fit_the_images(tmp_path: Path) -> None:
    reader = open_volume(write_project_volume(tmp_path / "vol.h5", phantom()), "project")
    wrong = make_mask("equispaced", 2.0, (16, 16))
    with pytest.raises(InputError, match=rf"vol\.h5: mask \(equispaced, digest {wrong.digest()}\) has shape "
                                         r"\(16, 16\) but the images are \(12, 10\)"):
        SliceDataset([reader], wrong)


def test_undersampled_kspace_from_another_mask_is_rejected(tmp_path: Path) -> None:
    other = make_mask("equispaced", 4.0, (HEIGHT, WIDTH)).values
    readers = write_same_image_in_every_layout(tmp_path, phantom(1)[0], 1.0 - other)
    dataset = SliceDataset([readers["authors"]], SamplingMask(other))
    with pytest.raises(InputError, match=r"authors\.h5: undersampled k-space of slice 0 has samples where the mask"):
        dataset[0]


def test_kspace_sources_are_never_cropped(tmp_path: Path) -> None:
    readers = write_same_image_in_every_layout(tmp_path, phantom(1)[0], mask().values)
    square = make_mask("equispaced", 2.0, (8, 8))
    with pytest.raises(InputError, match=r"authors\.h5: k-space of slice 0 has shape \(12, 10\), the mask \(8, 8\)"):
        SliceDataset([readers["authors"]], square, image_size=8)[0]


def test_selected_slices_and_batching(tmp_path: Path) -> None:
    first = open_volume(write_project_volume(tmp_path / "a.h5", phantom()), "project")
    second = open_volume(write_project_volume(tmp_path / "b.h5", phantom(2)), "project")
    dataset = SliceDataset([first, second], mask(), slices=[(1, 1), (0, 2)])
    assert len(dataset) == 2 and len(SliceDataset([first, second], mask())) == 5
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch.zero_filled.shape == (2, 1, HEIGHT, WIDTH) and batch.kspace.shape == (2, 1, HEIGHT, WIDTH, 2)
    assert batch.scale.shape == (2,) and list(batch.volume) == ["b", "a"] and batch.slice_index.tolist() == [1, 2]


# --- splits --------------------------------------------------------------------------------------------------------

def project_folders(root: Path) -> tuple[Path, Path]:
    train, validation = root / "train", root / "validation"
    write_project_volume(train / "a.h5", phantom())
    write_project_volume(train / "b.h5", phantom())
    write_project_volume(validation / "c.h5", phantom(2))
    return train, validation


def test_build_splits_from_folders_with_slice_caps(tmp_path: Path) -> None:
    train, validation = project_folders(tmp_path)
    config = DataConfig(source="project", train=str(train), validation=str(validation), image_size=12,
                        mask_type="equispaced", max_train_slices=3, max_eval_slices=5)
    splits = build_splits(config, acceleration=4.0, log=print)
    assert isinstance(splits, DataSplits) and splits.test is None
    assert splits.train.slices == [(0, 0), (0, 2), (1, 2)]  # 3 of 6, evenly spaced: positions 0, 2.5 -> 2, 5
    assert splits.validation.slices == [(0, 0), (0, 1)]
    assert splits.mask.shape == (12, 12) and splits.mask.acceleration == 4.0
    assert splits.train[0].target.shape == (1, 12, 12)
    assert "train 3, validation 2" in splits.description and splits.mask.digest() in splits.description


def test_build_splits_authors_layout_with_mask_files(tmp_path: Path) -> None:
    image = phantom(1)[0][:10]  # a square 10 x 10 slice
    mask_values = make_mask("equispaced", 2.0, (10, 10)).values
    for folder in ("train", "validation", "test"):
        with h5py.File(tmp_path / f"{folder}.h5", "w") as file:
            file["volfs"] = np.repeat(image[:, :, None], 2, axis=2)
            file["kspace_volus_2x"] = np.repeat((mask_values * np.fft.fft2(image, norm="ortho"))[:, :, None], 2, axis=2)
    np.save(tmp_path / "mask_2x.npy", mask_values)
    config = DataConfig(source="authors", train=str(tmp_path / "train.h5"),
                        validation=str(tmp_path / "validation.h5"), test=str(tmp_path / "test.h5"),
                        image_size=10, mask_file=str(tmp_path / "mask_{acceleration}x.npy"))
    splits = build_splits(config, acceleration=2.0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2, 2, 2)
    np.testing.assert_array_equal(splits.mask.values, mask_values)
    assert_matches(splits.test[1], numpy_sample(image, mask_values))
    with pytest.raises(InputError, match=r"mask_4x\.npy: mask file not found"):
        build_splits(config, acceleration=4.0)


def test_build_splits_bad_configs(tmp_path: Path) -> None:
    train, validation = project_folders(tmp_path)
    with pytest.raises(InputError, match="unknown data source 'dicom'; valid names: mni, authors, fastmri, nifti"):
        build_splits(DataConfig(source="dicom"), 4.0)
    with pytest.raises(InputError, match=r"\[data\] validation must name a file or folder for source 'project'"):
        build_splits(DataConfig(source="project", train=str(train), image_size=12), 4.0)
    with pytest.raises(InputError, match="downsample applies only to source 'mni'"):
        build_splits(DataConfig(source="project", train=str(train), validation=str(validation), downsample=2), 4.0)
