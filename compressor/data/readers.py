"""Volume readers: one class per on-disk source, each yielding one :class:`SliceData` per slice, lazily.

Sources (``open_volume(path, source)``):

* ``project``: this tool's HDF5 layout (:mod:`compressor.data.project_h5`).
* ``fastmri``: fastMRI single-coil HDF5; magnitude targets, k-space simulated from them.
* ``nifti``: NIfTI volumes (MRBrainS, ACDC), magnitude images, k-space simulated from them.
* ``authors``: the SFT-KD-Recon repository's per-volume HDF5 (``volfs`` and ``kspace_volus_<R>x``), so data
  prepared for the original scripts is used unchanged.

A reader only opens its file to check it (existence, format, keys, dimensionality) and then once per
:meth:`VolumeReader.read_slice` call, reading that one slice: a volume of hundreds of slices is never loaded
whole, and readers hold no open handle, so they pickle into ``DataLoader`` worker processes. Every problem
with a file is an :class:`~compressor.errors.InputError` naming the file (and the key), including NaN/Inf
values, which are reported with the slice index.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import nibabel
import numpy as np

from compressor.data import project_h5
from compressor.data.transforms import centre_crop_or_pad
from compressor.errors import InputError
from compressor.masks import acceleration_label
from compressor.registry import Registry

HDF5_EXTENSIONS = (".h5", ".hdf5")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


@dataclass(frozen=True)
class SliceData:
    """One slice as stored, before any cropping, undersampling or normalisation.

    Attributes:
        target: ``(H, W)`` float32 real or magnitude image, or ``None`` when only k-space is available.
        kspace: ``(H, W)`` complex64 k-space, **uncentred** (DC at ``(0, 0)``), orthonormal FFT of the image;
            ``None`` when the source has images only (k-space is then simulated from ``target``).
        kspace_undersampled: ``True`` when ``kspace`` has already been undersampled with the source's mask.
    """

    target: np.ndarray | None
    kspace: np.ndarray | None
    kspace_undersampled: bool = False


class VolumeReader(ABC):
    """One volume file, read slice by slice.

    Attributes:
        path: the file.
        name: the file name without its extension (identifies the volume in results).
        extensions: the file name endings of this source (for :func:`list_volume_files`).
    """

    extensions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found", self.path)
        self.name = volume_name(self.path, self.extensions)

    @abstractmethod
    def __len__(self) -> int:
        """Number of slices."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every slice, as stored."""

    def read_slice(self, index: int) -> SliceData:
        """Read slice ``index`` (``0 <= index < len(self)``) from disk."""
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} out of range for {self.path} with {len(self)} slices")
        return self._read(index)

    @abstractmethod
    def _read(self, index: int) -> SliceData:
        """Read a valid slice index."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, slices={len(self)}, shape={self.image_shape})"


VOLUME_SOURCES: Registry[type[VolumeReader]] = Registry("data source")


def volume_name(path: Path, extensions: tuple[str, ...]) -> str:
    """``path``'s file name without the first matching extension (``a.nii.gz -> a``), else its stem."""
    for extension in extensions:
        if path.name.lower().endswith(extension):
            return path.name[: -len(extension)]
    return path.stem


def check_finite(data: np.ndarray, path: Path, key: str | None, index: int | None) -> None:
    """Raise :class:`InputError` naming the file, key and slice (if any) when ``data`` holds NaN or Inf."""
    if not np.all(np.isfinite(data)):
        raise InputError(f"{'' if index is None else f'slice {index} '}contains NaN or Inf", path, key)


# --- HDF5 helpers ---------------------------------------------------------------------------------------------

@contextmanager
def open_hdf5(path: Path) -> Iterator[h5py.File]:
    """Open ``path`` read-only; a file h5py cannot open becomes an :class:`InputError`."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"not an HDF5 file, or corrupt ({error})", path) from None
    with file:
        yield file


def require_dataset(file: h5py.File, key: str, path: Path, layout: str, complex_valued: bool) -> h5py.Dataset:
    """The dataset ``key``, checked to have ``layout``'s dimensionality (``"(S, H, W)"`` is 3-D) and dtype.

    ``complex_valued`` asks for a complex dtype; otherwise a real numeric one is required.
    """
    if key not in file:
        raise InputError(f"missing key {key!r} (the file has: {', '.join(sorted(file.keys())) or 'nothing'})", path)
    dataset = file[key]
    if not isinstance(dataset, h5py.Dataset):
        raise InputError("is a group, expected a dataset", path, key)
    ndim = layout.count(",") + 1
    if dataset.ndim != ndim:
        raise InputError(f"expected a {ndim}-D array {layout}, got shape {dataset.shape}", path, key)
    kind = dataset.dtype.kind
    if complex_valued and kind != "c":
        raise InputError(f"expected complex values, got dtype {dataset.dtype}", path, key)
    if not complex_valued and kind not in "fiu":
        raise InputError(f"expected real numbers, got dtype {dataset.dtype}", path, key)
    return dataset


def read_hdf5_slice(file: h5py.File, key: str, selection: Any, path: Path, index: int) -> np.ndarray:
    """``file[key][selection]``, the data of slice ``index``, checked to be readable and finite."""
    try:
        data = file[key][selection]
    except OSError as error:
        raise InputError(f"cannot read slice {index} ({error})", path, key) from None
    check_finite(data, path, key, index)
    return data


# --- readers ----------------------------------------------------------------------------------------------------

@VOLUME_SOURCES.register("project")
class ProjectH5Reader(VolumeReader):
    """This tool's HDF5 layout (see :mod:`compressor.data.project_h5`): ``target`` (S, H, W), optional
    fully sampled uncentred ``kspace`` (S, H, W) and ``mask`` (H, W)."""

    extensions = HDF5_EXTENSIONS

    def __init__(self, path: str | Path):
        super().__init__(path)
        with open_hdf5(self.path) as file:
            project_h5.check_project_attrs(file.attrs, self.path)
            target = require_dataset(file, project_h5.TARGET_KEY, self.path, "(S, H, W)", complex_valued=False)
            self._shape: tuple[int, int, int] = tuple(target.shape)
            self._has_kspace = project_h5.KSPACE_KEY in file
            if self._has_kspace:
                kspace = require_dataset(file, project_h5.KSPACE_KEY, self.path, "(S, H, W)", complex_valued=True)
                if kspace.shape != target.shape:
                    raise InputError(f"shape {kspace.shape} differs from target's {target.shape}", self.path,
                                     project_h5.KSPACE_KEY)
            self._has_mask = project_h5.MASK_KEY in file
            if self._has_mask:
                mask = require_dataset(file, project_h5.MASK_KEY, self.path, "(H, W)", complex_valued=False)
                if mask.shape != target.shape[1:]:
                    raise InputError(f"mask shape {mask.shape} does not fit images of shape {target.shape[1:]}",
                                     self.path, project_h5.MASK_KEY)

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape[1], self._shape[2]

    def _read(self, index: int) -> SliceData:
        with open_hdf5(self.path) as file:
            target = read_hdf5_slice(file, project_h5.TARGET_KEY, index, self.path, index).astype(np.float32)
            kspace = None
            if self._has_kspace:
                kspace = read_hdf5_slice(file, project_h5.KSPACE_KEY, index, self.path, index).astype(np.complex64)
        return SliceData(target=target, kspace=kspace)

    def stored_mask(self) -> np.ndarray | None:
        """The file's ``mask`` (H, W) float32, uncentred, or ``None`` when the file has none."""
        if not self._has_mask:
            return None
        with open_hdf5(self.path) as file:
            mask = file[project_h5.MASK_KEY][()]
        check_finite(mask, self.path, project_h5.MASK_KEY, None)
        return mask.astype(np.float32)


@VOLUME_SOURCES.register("fastmri")
class FastMRIReader(VolumeReader):
    """fastMRI single-coil HDF5 (``kspace`` (S, 640, 368) centred complex, ``reconstruction_esc`` or
    ``reconstruction_rss`` (S, 320, 320) magnitude).

    The target is the magnitude reconstruction ``target_key``; if the file lacks it, the other reconstruction
    key is used. The stored k-space is centred and of another size than the reconstructions (the readout is
    oversampled), so it is **not** passed on: like the other magnitude sources, k-space is simulated from the
    target by the dataset. If the file has neither reconstruction (e.g. the challenge's test files), the target
    is computed from ``kspace`` as the magnitude of its centred inverse FFT, centre-cropped to ``recon_size``
    (320 x 320, the size of fastMRI's reconstructions). Multi-coil files (4-D ``kspace``) are rejected.
    """

    extensions = HDF5_EXTENSIONS
    RECONSTRUCTION_KEYS = ("reconstruction_esc", "reconstruction_rss")
    KSPACE_KEY = "kspace"

    def __init__(self, path: str | Path, target_key: str = "reconstruction_esc",
                 recon_size: tuple[int, int] = (320, 320)):
        super().__init__(path)
        if target_key not in self.RECONSTRUCTION_KEYS:
            raise InputError(f"unknown fastMRI target key {target_key!r}; valid: {', '.join(self.RECONSTRUCTION_KEYS)}")
        self.recon_size = (int(recon_size[0]), int(recon_size[1]))
        preference = [target_key] + [key for key in self.RECONSTRUCTION_KEYS if key != target_key]
        with open_hdf5(self.path) as file:
            present = [key for key in preference if key in file]
            #: the dataset the targets come from; ``None`` means computed from ``kspace``.
            self.target_key: str | None = present[0] if present else None
            if self.target_key is not None:
                target = require_dataset(file, self.target_key, self.path, "(S, H, W)", complex_valued=False)
                self._slices, self._shape = target.shape[0], (target.shape[1], target.shape[2])
                return
            if self.KSPACE_KEY not in file:
                raise InputError(f"not a fastMRI file: none of the keys {', '.join(preference)}, {self.KSPACE_KEY}",
                                 self.path)
            if file[self.KSPACE_KEY].ndim == 4:
                raise InputError("multi-coil k-space (S, coils, H, W) is not supported; single-coil expected",
                                 self.path, self.KSPACE_KEY)
            kspace = require_dataset(file, self.KSPACE_KEY, self.path, "(S, H, W)", complex_valued=True)
            self._slices, self._shape = kspace.shape[0], self.recon_size

    def __len__(self) -> int:
        return self._slices

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape

    def _read(self, index: int) -> SliceData:
        with open_hdf5(self.path) as file:
            if self.target_key is not None:
                target = read_hdf5_slice(file, self.target_key, index, self.path, index)
                return SliceData(target=target.astype(np.float32), kspace=None)
            kspace = read_hdf5_slice(file, self.KSPACE_KEY, index, self.path, index)
        image = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho")))
        return SliceData(target=centre_crop_or_pad(image, self.recon_size).astype(np.float32), kspace=None)


@VOLUME_SOURCES.register("nifti")
class NiftiReader(VolumeReader):
    """A NIfTI volume read through nibabel's lazy array proxy, cast to float32 (scaling applied).

    A 3-D volume ``(X, Y, Z)`` gives ``Z`` slices ``data[:, :, z]`` of shape ``(X, Y)``. A 4-D volume
    ``(X, Y, Z, T)`` (e.g. ACDC cine) gives ``Z * T`` slices; slice ``i`` is ``data[:, :, i % Z, i // Z]``
    (all of frame 0, then frame 1, ...). Other dimensionalities and complex data are rejected. The images are
    used as stored (no reorientation); k-space is simulated from them by the dataset.

    Each read decompresses a ``.nii.gz`` file from its start up to the slice (gzip has no random access), which
    costs ~0.1 s for a late slice of a large 4-D cine file; uncompressed ``.nii`` files are read by seeking, so
    decompress large volumes once (``gunzip``) before long trainings.
    """

    extensions = NIFTI_EXTENSIONS

    def __init__(self, path: str | Path):
        super().__init__(path)
        image = self._load()
        shape = tuple(int(n) for n in image.shape)
        if len(shape) not in (3, 4):
            raise InputError(f"NIfTI volume must be 3-D (X, Y, Z) or 4-D (X, Y, Z, T), got {len(shape)}-D shape "
                             f"{shape}", self.path)
        if np.dtype(image.get_data_dtype()).kind not in "fiub":
            raise InputError(f"NIfTI data type {image.get_data_dtype()} is not real-valued", self.path)
        self._shape = shape

    def _load(self) -> Any:
        try:
            return nibabel.load(self.path)
        except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
            raise InputError(f"not a readable NIfTI file ({error})", self.path) from None

    def __len__(self) -> int:
        frames = self._shape[3] if len(self._shape) == 4 else 1
        return self._shape[2] * frames

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape[0], self._shape[1]

    def _read(self, index: int) -> SliceData:
        depth = self._shape[2]
        selection = (slice(None), slice(None), index % depth) + ((index // depth,) if len(self._shape) == 4 else ())
        try:
            data = np.asarray(self._load().dataobj[selection], dtype=np.float32)
        except (OSError, EOFError, ValueError, zlib.error) as error:
            raise InputError(f"cannot read slice {index} ({error})", self.path) from None
        check_finite(data, self.path, None, index)
        return SliceData(target=data, kspace=None)


@VOLUME_SOURCES.register("authors")
class AuthorsH5Reader(VolumeReader):
    """The SFT-KD-Recon authors' per-volume HDF5, as their scripts prepared it.

    Keys: ``volfs`` (H, W, S) fully sampled image and ``kspace_volus_<R>x`` (H, W, S) complex undersampled
    k-space, uncentred, orthonormal FFT (``R`` written as an integer when integral: ``4x``, ``2.5x``). Their
    ``img_volus_<R>x`` zero-filled images are not read: the dataset recomputes ``Re F^{-1}(y)`` from the
    k-space, which is what the models see at inference. Use their ``mask_<R>x.npy`` (uncentred) as the mask.
    """

    extensions = HDF5_EXTENSIONS
    TARGET_KEY = "volfs"

    def __init__(self, path: str | Path, acceleration: float):
        super().__init__(path)
        self.kspace_key = f"kspace_volus_{acceleration_label(acceleration)}x"
        with open_hdf5(self.path) as file:
            target = require_dataset(file, self.TARGET_KEY, self.path, "(H, W, S)", complex_valued=False)
            kspace = require_dataset(file, self.kspace_key, self.path, "(H, W, S)", complex_valued=True)
            if kspace.shape != target.shape:
                raise InputError(f"shape {kspace.shape} differs from {self.TARGET_KEY}'s {target.shape}", self.path,
                                 self.kspace_key)
            self._shape: tuple[int, int, int] = tuple(target.shape)

    def __len__(self) -> int:
        return self._shape[2]

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape[0], self._shape[1]

    def _read(self, index: int) -> SliceData:
        selection = (slice(None), slice(None), index)
        with open_hdf5(self.path) as file:
            target = read_hdf5_slice(file, self.TARGET_KEY, selection, self.path, index)
            kspace = read_hdf5_slice(file, self.kspace_key, selection, self.path, index)
        return SliceData(target=target.astype(np.float32), kspace=kspace.astype(np.complex64),
                         kspace_undersampled=True)


def open_volume(path: str | Path, source: str, **options: Any) -> VolumeReader:
    """A reader for ``path`` of the registered ``source`` (``project``, ``fastmri``, ``nifti``, ``authors``).

    ``options`` go to the reader: ``target_key=`` for ``fastmri``, ``acceleration=`` for ``authors``.
    """
    return VOLUME_SOURCES.get(source)(path, **options)


def list_volume_files(path: str | Path, source: str) -> list[Path]:
    """The volume files of ``source`` at ``path``: the file itself, or a folder's files with the source's
    extensions (``.h5``/``.hdf5`` or ``.nii``/``.nii.gz``), sorted by name; hidden files are skipped."""
    extensions = VOLUME_SOURCES.get(source).extensions
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("no such file or folder", path)
    files = sorted(
        entry for entry in path.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(extensions)
    )
    if not files:
        raise InputError(f"no {source} volume files ({', '.join(extensions)}) in this folder", path)
    return files
