"""The embedded MNI dataset: conversion, caching (atomic, reused), orientation, and the slab splits."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest

import compressor.io
from compressor.config import DataConfig
from compressor.data import build_splits, embedded
from compressor.data.embedded import block_average, build_mni_volume, default_cache_dir, mni_splits
from compressor.data.readers import ProjectH5Reader
from compressor.errors import InputError

SMALL = {"image_size": 48, "downsample": 4}
CACHED_NAME = "mni152_t1_48px_ip4.h5"


@pytest.fixture(scope="module")
def small_mni(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The real template converted once at 4 mm, 48 x 48, and the messages logged while converting."""
    messages: list[str] = []
    path = build_mni_volume(tmp_path_factory.mktemp("cache"), log=messages.append, **SMALL)
    return path, messages


def test_template_ships_with_nilearn() -> None:
    path = embedded.mni_template_path()
    assert path.is_file() and nibabel.load(path).shape == (197, 233, 189)


def test_conversion_writes_a_project_volume_and_says_where_from(small_mni: tuple[Path, list[str]]) -> None:
    path, messages = small_mni
    assert path.name == CACHED_NAME
    assert len(messages) == 1
    assert "MNI ICBM152" in messages[0] and "nilearn" in messages[0] and "McConnell" in messages[0]
    assert str(path) in messages[0]
    reader = ProjectH5Reader(path)
    # in-plane averaging keeps the 189 slices of 1 mm, of which 139 have more than 5 % non-zero pixels.
    assert (len(reader), reader.image_shape) == (139, (48, 48))
    images = np.stack([reader.read_slice(i).target for i in range(len(reader))])
    assert images.min() >= 0.0 and images.max() == pytest.approx(1.0)
    with h5py.File(path) as file:
        assert list(file.attrs["voxel_size_mm"]) == [4.0, 4.0, 1.0]
        assert "nilearn" in file.attrs["source"]


def test_second_call_reuses_the_cache_silently(small_mni: tuple[Path, list[str]]) -> None:
    path, _ = small_mni
    modified = path.stat().st_mtime_ns
    messages: list[str] = []
    assert build_mni_volume(path.parent, log=messages.append, **SMALL) == path
    assert messages == [] and path.stat().st_mtime_ns == modified


def test_leftover_temporary_file_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / f".{CACHED_NAME}.k3j2.tmp").write_bytes(b"half-written")
    messages: list[str] = []
    path = build_mni_volume(tmp_path, log=messages.append, **SMALL)
    assert len(messages) == 1 and len(ProjectH5Reader(path)) == 139


def test_interrupted_conversion_leaves_nothing_and_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(compressor.io.os, "replace", interrupt)
        with pytest.raises(KeyboardInterrupt):
            build_mni_volume(tmp_path, log=lambda message: None, **SMALL)
    assert list(tmp_path.iterdir()) == []
    messages: list[str] = []
    build_mni_volume(tmp_path, log=messages.append, **SMALL)
    assert len(messages) == 1 and [p.name for p in tmp_path.iterdir()] == [CACHED_NAME]


def test_orientation_scaling_and_slice_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = np.zeros((10, 14, 4), np.uint8)  # RAS: x to the subject's right, y anterior, z superior
    volume[2:8, 2:12, 1:] = 100
    volume[2, 11, 1:] = 200  # a marker at the subject's left (low x), anterior (high y)
    volume[5, 5, 0] = 100  # slice z = 0 has 1 non-zero pixel of 140: dropped (< 5 %)
    template = tmp_path / "template.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), template)
    monkeypatch.setattr(embedded, "mni_template_path", lambda: template)
    path = build_mni_volume(tmp_path / "cache", image_size=16, log=lambda message: None)
    reader = ProjectH5Reader(path)
    assert len(reader) == 3
    image = reader.read_slice(0).target
    # rot90: (x, y) -> row 13 - y, column x; then padding (14, 10) -> (16, 16) adds 1 row and 3 columns before.
    assert image[1 + 13 - 11, 3 + 2] == 1.0
    assert image[1 + 13 - 5, 3 + 5] == 0.5 and image.sum() == pytest.approx(1.0 + 59 * 0.5)
    with h5py.File(path) as file:
        assert list(file.attrs["template_z_indices"]) == [1, 2, 3]


def test_block_average() -> None:
    volume = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    # factor 2 averages the first 2 x 2 in-plane block of every slice (the remainder is dropped): value 9x + 3y + z
    # over x, y in {0, 1} has mean 6 + z; slices are kept.
    np.testing.assert_array_equal(block_average(volume, 2), [[[6.0, 7.0, 8.0]]])
    assert block_average(volume, 1) is volume


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFT_KD_RECON_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SFT_KD_RECON_CACHE")
    assert default_cache_dir().name == "sft-kd-recon"


# --- splits --------------------------------------------------------------------------------------------------------

def test_splits_by_hand() -> None:
    # period: 4 train, 1 gap, 2 validation, 1 gap, 2 test, 1 gap = 11 slices
    assert mni_splits(20, slab=4, gap=1) == {
        "train": [0, 1, 2, 3, 11, 12, 13, 14],
        "validation": [5, 6, 16, 17],
        "test": [8, 9, 19],
    }


@pytest.mark.parametrize(("n_slices", "slab", "gap"), [(36, 8, 3), (137, 8, 3), (60, 6, 5), (17, 4, 2)])
def test_split_properties(n_slices: int, slab: int, gap: int) -> None:
    splits = mni_splits(n_slices, slab, gap)
    assert splits == mni_splits(n_slices, slab, gap)
    assert all(splits[name] for name in ("train", "validation", "test"))
    owner = {index: name for name, indices in splits.items() for index in indices}
    assert sum(len(indices) for indices in splits.values()) == len(owner), "no slice is in two splits"
    assert min(owner) == 0 and max(owner) < n_slices
    for a in owner:
        for b in owner:
            if owner[a] != owner[b]:
                assert abs(a - b) > gap, f"slices {a} ({owner[a]}) and {b} ({owner[b]}) are closer than the gap"
    if n_slices >= 2 * (slab + slab // 2 * 2 + 3 * gap):  # two whole periods: every split in both halves
        for indices in splits.values():
            assert min(indices) < n_slices // 2 <= max(indices)


def test_too_few_slices_to_split() -> None:
    with pytest.raises(InputError, match="10 slices are too few"):
        mni_splits(10, slab=8, gap=3)


def test_build_splits_on_the_embedded_data(small_mni: tuple[Path, list[str]]) -> None:
    path, _ = small_mni
    config = DataConfig(source="mni", cache_dir=str(path.parent), mask_type="equispaced", **SMALL)
    splits = build_splits(config, acceleration=4.0, log=lambda message: pytest.fail(f"unexpected log: {message}"))
    sets = [{s for _, s in dataset.slices} for dataset in (splits.train, splits.validation, splits.test)]
    assert [len(s) for s in sets] == [48, 23, 20] and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    sample = splits.validation[0]
    assert sample.zero_filled.shape == (1, 48, 48) and sample.zero_filled.abs().max().item() == pytest.approx(1.0)
    assert "MNI" in splits.description
