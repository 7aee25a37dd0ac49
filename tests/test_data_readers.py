"""Volume readers: each source's layout on tiny files written here, and every kind of bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest

import compressor.io
from compressor.data import project_h5
from compressor.data.fastmri import FastMRIReader
from compressor.data.readers import (
    AuthorsH5Reader,
    NiftiReader,
    ProjectH5Reader,
    list_volume_files,
    open_volume,
)
from compressor.data.sources import EmbeddedMni, VolumeFiles, data_source, data_source_names
from compressor.data.volume import VOLUME_SOURCES, ReadOptions, SliceData
from compressor.errors import InputError
from compressor.masks import acceleration_label
from tests.conftest import hdf5_selections


def volume(slices: int = 3, height: int = 24, width: int = 20) -> np.ndarray:
    """Deterministic ``(S, H, W)`` float32 test volume with distinct values everywhere."""
    return np.arange(slices * height * width, dtype=np.float32).reshape(slices, height, width) / 100.0


def write_h5(path: Path, datasets: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    with h5py.File(path, "w") as file:
        for key, data in datasets.items():
            file.create_dataset(key, data=data)
        file.attrs.update(attrs or {})
    return path


def write_nifti(path: Path, data: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    return path


# --- project layout ---------------------------------------------------------------------------------------------

def test_project_volume_round_trip(tmp_path: Path) -> None:
    target = volume()
    kspace = np.fft.fft2(target, norm="ortho").astype(np.complex64)
    mask = np.zeros((24, 20), np.float32)
    mask[:, :5] = 1
    path = project_h5.write_project_volume(tmp_path / "sub" / "vol.h5", target, mask=mask, kspace=kspace,
                                           attrs={"source": "test", "voxel_size_mm": [1.0, 1.0, 2.0]})
    reader = ProjectH5Reader(path)
    assert (len(reader), reader.image_shape, reader.name) == (3, (24, 20), "vol")
    item = reader.read_slice(1)
    assert item.target.dtype == np.float32 and item.kspace.dtype == np.complex64
    np.testing.assert_array_equal(item.target, target[1])
    np.testing.assert_array_equal(item.kspace, kspace[1])
    assert item.kspace_undersampled is False
    np.testing.assert_array_equal(reader.stored_mask(), mask)
    with h5py.File(path) as file:
        assert file.attrs["format"] == "sft-kd-recon-volume" and file.attrs["version"] == 1
        assert file.attrs["kspace_convention"] == "uncentred" and file.attrs["source"] == "test"
    assert sorted(p.name for p in path.parent.iterdir()) == ["vol.h5"], "no temporary file is left behind"


def test_project_volume_without_kspace_gives_images_only(tmp_path: Path) -> None:
    reader = ProjectH5Reader(project_h5.write_project_volume(tmp_path / "v.h5", volume()))
    assert reader.read_slice(0).kspace is None and reader.stored_mask() is None


def test_interrupted_project_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compressor.io.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        project_h5.write_project_volume(tmp_path / "v.h5", volume())
    assert list(tmp_path.iterdir()) == []


def test_reader_reads_one_slice_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = ProjectH5Reader(project_h5.write_project_volume(tmp_path / "v.h5", volume(slices=5)))
    assert hdf5_selections(monkeypatch, lambda: reader.read_slice(3)) == [3]


def test_readers_pickle_for_dataloader_workers(tmp_path: Path) -> None:
    reader = ProjectH5Reader(project_h5.write_project_volume(tmp_path / "v.h5", volume()))
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_slice(2).target, reader.read_slice(2).target)


def test_foreign_hdf5_is_rejected(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "foreign.h5", {"target": volume()})
    with pytest.raises(InputError, match=r"foreign\.h5.*not a sft-kd-recon volume \(missing attribute 'format'\)"):
        ProjectH5Reader(path)


def test_project_file_with_wrong_dimensionality(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "flat.h5", {"target": volume()[0]}, {"format": "sft-kd-recon-volume", "version": 1})
    with pytest.raises(InputError, match=r"flat\.h5 \[target\]: expected a 3-D array \(S, H, W\), got shape \(24, 20"):
        ProjectH5Reader(path)


def test_project_mask_that_does_not_fit(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "v.h5", {"target": volume(), "mask": np.ones((20, 24), np.float32)},
                    {"format": "sft-kd-recon-volume", "version": 1})
    with pytest.raises(InputError, match=r"v\.h5 \[mask\]: mask shape \(20, 24\) does not fit images of shape \(24"):
        ProjectH5Reader(path)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not HDF5" * 10)
    with pytest.raises(InputError, match=r"corrupt\.h5: not an HDF5 file"):
        ProjectH5Reader(corrupt)
    with pytest.raises(InputError, match=r"absent\.h5: file not found"):
        open_volume(tmp_path / "absent.h5", "project")


def test_nan_is_reported_with_file_key_and_slice(tmp_path: Path) -> None:
    data = volume()
    path = write_h5(tmp_path / "nan.h5", {"target": data}, {"format": "sft-kd-recon-volume", "version": 1})
    with h5py.File(path, "a") as file:
        file["target"][2, 5, 5] = np.inf
    reader = ProjectH5Reader(path)
    reader.read_slice(1)
    with pytest.raises(InputError, match=r"nan\.h5 \[target\]: slice 2 contains NaN or Inf"):
        reader.read_slice(2)


# --- fastMRI -------------------------------------------------------------------------------------------------------

def fastmri_file(path: Path, keys: tuple[str, ...]) -> Path:
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((3, 40, 24)) + 1j * rng.standard_normal((3, 40, 24))).astype(np.complex64)
    datasets = {"kspace": kspace}
    for offset, key in enumerate(("reconstruction_esc", "reconstruction_rss")):
        if key in keys:
            datasets[key] = volume(3, 16, 16) + offset
    return write_h5(path, datasets)


def test_fastmri_reads_magnitude_target_and_simulates_kspace(tmp_path: Path) -> None:
    reader = FastMRIReader(fastmri_file(tmp_path / "file1000.h5", ("reconstruction_esc", "reconstruction_rss")))
    item = reader.read_slice(2)
    assert (reader.target_key, reader.image_shape, len(reader)) == ("reconstruction_esc", (16, 16), 3)
    np.testing.assert_array_equal(item.target, volume(3, 16, 16)[2])
    assert item.kspace is None


def test_fastmri_rss_when_requested_or_when_esc_is_missing(tmp_path: Path) -> None:
    both = fastmri_file(tmp_path / "both.h5", ("reconstruction_esc", "reconstruction_rss"))
    rss_only = fastmri_file(tmp_path / "rss.h5", ("reconstruction_rss",))
    assert FastMRIReader(both, target_key="reconstruction_rss").target_key == "reconstruction_rss"
    reader = open_volume(rss_only, "fastmri")
    assert reader.target_key == "reconstruction_rss"
    np.testing.assert_array_equal(reader.read_slice(0).target, volume(3, 16, 16)[0] + 1)


def test_fastmri_target_from_kspace_when_no_reconstruction(tmp_path: Path) -> None:
    path = fastmri_file(tmp_path / "test_file.h5", ())
    reader = FastMRIReader(path, recon_size=(16, 16))
    with h5py.File(path) as file:
        kspace = file["kspace"][1]
    image = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho")))
    assert reader.target_key is None and reader.image_shape == (16, 16)
    np.testing.assert_allclose(reader.read_slice(1).target, image[12:28, 4:20], rtol=1e-5)


def test_fastmri_bad_inputs(tmp_path: Path) -> None:
    multicoil = write_h5(tmp_path / "multi.h5", {"kspace": np.zeros((2, 4, 8, 8), np.complex64)})
    with pytest.raises(InputError, match=r"multi\.h5 \[kspace\]: multi-coil"):
        FastMRIReader(multicoil)
    unrelated = write_h5(tmp_path / "other.h5", {"images": volume()})
    with pytest.raises(InputError, match=r"other\.h5: not a fastMRI file"):
        FastMRIReader(unrelated)
    flat = write_h5(tmp_path / "flat.h5", {"reconstruction_esc": volume()[0]})
    with pytest.raises(InputError, match=r"flat\.h5 \[reconstruction_esc\]: expected a 3-D array"):
        FastMRIReader(flat)
    with pytest.raises(InputError, match="unknown fastMRI target key 'kspace'"):
        FastMRIReader(flat, target_key="kspace")


# --- NIfTI ---------------------------------------------------------------------------------------------------------

def test_nifti_3d_gives_one_slice_per_z(tmp_path: Path) -> None:
    data = np.arange(16 * 12 * 3, dtype=np.int16).reshape(16, 12, 3)
    reader = NiftiReader(write_nifti(tmp_path / "subject.nii.gz", data))
    assert (len(reader), reader.image_shape, reader.name) == (3, (16, 12), "subject")
    item = reader.read_slice(2)
    assert item.target.dtype == np.float32 and item.kspace is None
    np.testing.assert_array_equal(item.target, data[:, :, 2])


def test_nifti_4d_gives_z_times_t_slices_frame_by_frame(tmp_path: Path) -> None:
    data = np.arange(8 * 6 * 3 * 2, dtype=np.float32).reshape(8, 6, 3, 2)
    reader = open_volume(write_nifti(tmp_path / "patient001_4d.nii", data), "nifti")
    assert len(reader) == 6
    np.testing.assert_array_equal(reader.read_slice(4).target, data[:, :, 1, 1])  # 4 = frame 1 * 3 + z 1


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 3, 2, 2)])
def test_nifti_of_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = write_nifti(tmp_path / "odd.nii", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=rf"odd\.nii: NIfTI volume must be 3-D .* or 4-D .*, got {len(shape)}-D"):
        NiftiReader(path)


def test_nifti_corrupt_and_nan(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match=r"broken\.nii\.gz: not a readable NIfTI file"):
        NiftiReader(corrupt)
    data = np.ones((8, 6, 3), np.float32)
    data[0, 0, 1] = np.nan
    reader = NiftiReader(write_nifti(tmp_path / "nan.nii", data))
    with pytest.raises(InputError, match=r"nan\.nii: slice 1 contains NaN or Inf"):
        reader.read_slice(1)


# --- the authors' layout -------------------------------------------------------------------------------------------

def authors_file(path: Path, label: str = "4x") -> tuple[Path, np.ndarray, np.ndarray]:
    target = np.moveaxis(volume(3, 12, 10), 0, -1)  # (H, W, S) as the authors store it
    kspace = np.fft.fft2(target, axes=(0, 1), norm="ortho")
    kspace[:, 3:7, :] = 0
    write_h5(path, {"volfs": target, f"kspace_volus_{label}": kspace.astype(np.complex64),
                    f"img_volus_{label}": np.abs(np.fft.ifft2(kspace, axes=(0, 1), norm="ortho"))})
    return path, target, kspace


def test_authors_layout_gives_undersampled_kspace(tmp_path: Path) -> None:
    path, target, kspace = authors_file(tmp_path / "vol.h5")
    reader = AuthorsH5Reader(path, acceleration=4.0)
    assert (len(reader), reader.image_shape, reader.kspace_key) == (3, (12, 10), "kspace_volus_4x")
    item = reader.read_slice(1)
    assert item == SliceData(target=item.target, kspace=item.kspace, kspace_undersampled=True)
    np.testing.assert_array_equal(item.target, target[:, :, 1])
    np.testing.assert_allclose(item.kspace, kspace[:, :, 1], rtol=1e-6)


def test_authors_fractional_acceleration_and_missing_key(tmp_path: Path) -> None:
    path, _, _ = authors_file(tmp_path / "vol.h5", label="2.5x")
    assert open_volume(path, "authors", acceleration=2.5).kspace_key == "kspace_volus_2.5x"
    with pytest.raises(InputError, match=r"vol\.h5: missing key 'kspace_volus_5x' \(the file has: img_volus_2.5x"):
        AuthorsH5Reader(path, acceleration=5)


def test_authors_real_kspace_is_rejected(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "vol.h5", {"volfs": np.zeros((4, 4, 2)), "kspace_volus_4x": np.zeros((4, 4, 2))})
    with pytest.raises(InputError, match=r"vol\.h5 \[kspace_volus_4x\]: expected complex values"):
        AuthorsH5Reader(path, acceleration=4)


def test_acceleration_label() -> None:
    assert [acceleration_label(a) for a in (4, 4.0, 2.5)] == ["4", "4", "2.5"]


# --- sources and folders -------------------------------------------------------------------------------------------

def test_unknown_source_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown data source 'dicom'; valid names: authors, fastmri, nifti, project"):
        open_volume(tmp_path / "x.h5", "dicom")


def test_each_reader_takes_the_read_options_it_uses(tmp_path: Path) -> None:
    """One :class:`ReadOptions` for every source; the fields a source does not use are ignored."""
    fastmri = fastmri_file(tmp_path / "fastmri.h5", ("reconstruction_esc", "reconstruction_rss"))
    authors, _, _ = authors_file(tmp_path / "authors.h5", label="2.5x")
    project = project_h5.write_project_volume(tmp_path / "project.h5", volume())
    options = ReadOptions(keep_phase=False, acceleration=2.5, recon_size=(16, 16), target_key="reconstruction_rss")
    assert FastMRIReader.open(fastmri, options).target_key == "reconstruction_rss"
    assert FastMRIReader.open(fastmri, ReadOptions()).target_key == "reconstruction_esc"  # the reader's default
    assert AuthorsH5Reader.open(authors, options).kspace_key == "kspace_volus_2.5x"
    assert ProjectH5Reader.open(project, ReadOptions(keep_phase=True)).keep_phase


def test_data_sources_are_the_embedded_ones_then_every_volume_source(tmp_path: Path, monkeypatch) -> None:
    assert data_source_names() == ["mni", *VOLUME_SOURCES.names()] == ["mni", "authors", "fastmri", "nifti", "project"]
    assert isinstance(data_source("MNI"), EmbeddedMni) and data_source("mni").takes_downsample
    assert isinstance(data_source("Project"), VolumeFiles) and not data_source("project").takes_downsample
    with pytest.raises(InputError, match="unknown data source 'dicom'; valid names: mni, authors, fastmri, nifti"):
        data_source("dicom")

    class Dummy(ProjectH5Reader):
        """A volume format registered outside this package."""

    monkeypatch.setitem(VOLUME_SOURCES._items, "dummy", Dummy)  # registering is one line: one new data source
    assert data_source_names() == ["mni", "authors", "dummy", "fastmri", "nifti", "project"]
    assert data_source("dummy").reader is Dummy


def test_list_volume_files(tmp_path: Path) -> None:
    for name in ("b.h5", "a.hdf5", "c.nii.gz", "notes.txt", ".b.h5.x1.tmp", ".hidden.h5"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_volume_files(tmp_path, "project")] == ["a.hdf5", "b.h5"]
    assert [p.name for p in list_volume_files(tmp_path, "nifti")] == ["c.nii.gz"]
    assert list_volume_files(tmp_path / "notes.txt", "nifti") == [tmp_path / "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: no authors volume files \(\.h5, \.hdf5\) in this folder"):
        list_volume_files(empty, "authors")
    with pytest.raises(InputError, match=r"nowhere: no such file or folder"):
        list_volume_files(tmp_path / "nowhere", "fastmri")


def test_two_volumes_of_one_split_with_the_same_name_are_refused_before_anything_trains(tmp_path: Path) -> None:
    from compressor.config import DataConfig
    from compressor.data import build_splits

    target = volume()
    for name in ("vol.h5", "vol.hdf5"):  # a slice is (volume name, index) in results and in the teacher cache
        project_h5.write_project_volume(tmp_path / "train" / name, target)
    project_h5.write_project_volume(tmp_path / "val" / "other.h5", target)
    config = DataConfig(source="project", train=str(tmp_path / "train"), validation=str(tmp_path / "val"),
                        image_size=16)
    with pytest.raises(InputError, match=r"two train volumes are both named 'vol' \(vol.h5 and vol.hdf5\); rename one"):
        build_splits(config, 4.0, log=lambda _: None)
