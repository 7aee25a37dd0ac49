"""The volume readers of every on-disk source, and the two ways in: :func:`open_volume` and :func:`list_volume_files`.

Sources (``open_volume(path, source)``, the registry :data:`~compressor.data.volume.VOLUME_SOURCES`):

* ``project``: this tool's HDF5 layout (:class:`ProjectH5Reader`, :mod:`compressor.data.project_h5`).
* ``fastmri``: fastMRI single- and multi-coil HDF5 (:class:`~compressor.data.fastmri.FastMRIReader`); magnitude
  targets, k-space simulated from them (with ``keep_phase``: the complex image and its k-space, from the stored
  k-space).
* ``nifti``: NIfTI volumes (MRBrainS, ACDC, :class:`NiftiReader`), magnitude images, k-space simulated from them.
* ``authors``: the SFT-KD-Recon repository's per-volume HDF5 (``volfs`` and ``kspace_volus_<R>x``,
  :class:`AuthorsH5Reader`), so data prepared for the original scripts is used unchanged.

What every reader gives (:class:`~compressor.data.volume.SliceData`, one slice at a time, ``keep_phase``) is
:mod:`compressor.data.volume`'s contract. Adding a source: a :class:`~compressor.data.volume.VolumeReader` subclass
here, decorated with ``@VOLUME_SOURCES.register(name)``.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import nibabel
import numpy as np

from compressor.data import project_h5
from compressor.data.fastmri import FastMRIReader
from compressor.data.hdf5_io import (
    HDF5_EXTENSIONS,
    image_dtype,
    open_hdf5,
    read_hdf5_slice,
    refuse_complex_image,
    require_dataset,
)
from compressor.data.volume import VOLUME_SOURCES, ReadOptions, SliceData, VolumeReader, check_finite
from compressor.errors import InputError
from compressor.masks import acceleration_label

__all__ = ["AuthorsH5Reader", "FastMRIReader", "NiftiReader", "ProjectH5Reader", "SliceData", "VolumeReader",
           "list_volume_files", "open_volume"]

NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def uncentred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """The image ``(H, W)`` complex64 of **uncentred** orthonormal k-space ``(H, W)``, ``ifft2(k, norm="ortho")``."""
    return np.fft.ifft2(np.asarray(kspace, dtype=np.complex128), norm="ortho").astype(np.complex64)


@VOLUME_SOURCES.register("project")
class ProjectH5Reader(VolumeReader):
    """This tool's HDF5 layout (see :mod:`compressor.data.project_h5`): ``target`` (S, H, W), optional
    fully sampled uncentred ``kspace`` (S, H, W) and ``mask`` (H, W).

    ``keep_phase=False``: the stored ``target`` as float32 (a complex ``target`` is refused: it needs the 2-channel
    models) and the stored ``kspace``. ``keep_phase=True``: with ``kspace``, the target is its complex image
    ``ifft2(kspace, norm="ortho")`` (complex64; the stored real ``target`` is then only the 1-channel models' target);
    without it, the stored ``target`` as is (complex64 or float32).
    """

    extensions = HDF5_EXTENSIONS
    named_by = HDF5_EXTENSIONS

    def __init__(self, path: str | Path, *, keep_phase: bool = False):
        super().__init__(path, keep_phase=keep_phase)
        with open_hdf5(self.path) as file:
            project_h5.check_project_attrs(file.attrs, self.path)
            target = require_dataset(file, project_h5.TARGET_KEY, self.path, "(S, H, W)", complex_valued=None)
            if not self.keep_phase:
                refuse_complex_image(target, self.path, project_h5.TARGET_KEY)
            self._target_dtype = image_dtype(target)
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

    @property
    def stores_kspace(self) -> bool:
        return self._has_kspace

    def _read(self, index: int) -> SliceData:
        with open_hdf5(self.path) as file:
            if self.keep_phase and self._has_kspace:
                # The complex image is the k-space's: the stored target may be real (what 1-channel models learn).
                kspace = read_hdf5_slice(file, project_h5.KSPACE_KEY, index, self.path, index).astype(np.complex64)
                return SliceData(target=uncentred_ifft2(kspace), kspace=kspace)
            target = read_hdf5_slice(file, project_h5.TARGET_KEY, index, self.path, index).astype(self._target_dtype)
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


@VOLUME_SOURCES.register("nifti")
class NiftiReader(VolumeReader):
    """A NIfTI volume read through nibabel's lazy array proxy, cast to float32 (scaling applied).

    A 3-D volume ``(X, Y, Z)`` gives ``Z`` slices ``data[:, :, z]`` of shape ``(X, Y)``. A 4-D volume
    ``(X, Y, Z, T)`` (e.g. ACDC cine) gives ``Z * T`` slices; slice ``i`` is ``data[:, :, i % Z, i // Z]``
    (all of frame 0, then frame 1, ...). Other dimensionalities and complex data are rejected. The images are
    used as stored (no reorientation); k-space is simulated from them by the dataset. ``keep_phase`` changes
    nothing: the images are real, there is no phase to keep.

    Each read decompresses a ``.nii.gz`` file from its start up to the slice (gzip has no random access), so a late
    slice of a large file is slow to read; uncompressed ``.nii`` files are read by seeking, so decompress large
    volumes once (``gunzip``) before long trainings.
    """

    extensions = NIFTI_EXTENSIONS
    named_by = NIFTI_EXTENSIONS

    def __init__(self, path: str | Path, *, keep_phase: bool = False):
        super().__init__(path, keep_phase=keep_phase)
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

    Keys: ``volfs`` (H, W, S) fully sampled image, real or complex, and ``kspace_volus_<R>x`` (H, W, S) complex
    undersampled k-space, uncentred, orthonormal FFT (``R`` written as an integer when integral: ``4x``, ``2.5x``).
    Their ``img_volus_<R>x`` zero-filled images are not read: the dataset recomputes ``Re F^{-1}(y)`` from the
    k-space, which is what the models see at inference. Use their ``mask_<R>x.npy`` (uncentred) as the mask.

    ``keep_phase=False``: the target is ``volfs`` as float32 (a complex ``volfs`` is refused: it needs the 2-channel
    models). ``keep_phase=True``: ``volfs`` as complex64 when it is complex, else float32. The k-space is the stored
    one in both modes.
    """

    extensions = HDF5_EXTENSIONS
    TARGET_KEY = "volfs"

    def __init__(self, path: str | Path, acceleration: float, *, keep_phase: bool = False):
        super().__init__(path, keep_phase=keep_phase)
        self.kspace_key = f"kspace_volus_{acceleration_label(acceleration)}x"
        with open_hdf5(self.path) as file:
            target = require_dataset(file, self.TARGET_KEY, self.path, "(H, W, S)", complex_valued=None)
            if not self.keep_phase:
                refuse_complex_image(target, self.path, self.TARGET_KEY)
            self._target_dtype = image_dtype(target)
            kspace = require_dataset(file, self.kspace_key, self.path, "(H, W, S)", complex_valued=True)
            if kspace.shape != target.shape:
                raise InputError(f"shape {kspace.shape} differs from {self.TARGET_KEY}'s {target.shape}", self.path,
                                 self.kspace_key)
            self._shape: tuple[int, int, int] = tuple(target.shape)

    @classmethod
    def open(cls, path: str | Path, options: ReadOptions) -> AuthorsH5Reader:
        """A reader of the k-space of ``options.acceleration``."""
        return cls(path, options.acceleration, keep_phase=options.keep_phase)

    def __len__(self) -> int:
        return self._shape[2]

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape[0], self._shape[1]

    @property
    def stores_kspace(self) -> bool:
        return True

    def _read(self, index: int) -> SliceData:
        selection = (slice(None), slice(None), index)
        with open_hdf5(self.path) as file:
            target = read_hdf5_slice(file, self.TARGET_KEY, selection, self.path, index)
            kspace = read_hdf5_slice(file, self.kspace_key, selection, self.path, index)
        return SliceData(target=target.astype(self._target_dtype), kspace=kspace.astype(np.complex64),
                         kspace_undersampled=True)


def open_volume(path: str | Path, source: str, *, keep_phase: bool = False, **options: Any) -> VolumeReader:
    """A reader for ``path`` of the registered ``source`` (``project``, ``fastmri``, ``nifti``, ``authors``).

    ``keep_phase`` asks for complex images and their k-space (the 2-channel models, :mod:`compressor.data.volume`).
    ``options`` go to the reader's constructor: ``target_key=``/``recon_size=`` for ``fastmri``, ``acceleration=``
    for ``authors`` (:meth:`~compressor.data.volume.VolumeReader.open` takes them as one
    :class:`~compressor.data.volume.ReadOptions`).
    """
    return VOLUME_SOURCES.get(source)(path, keep_phase=keep_phase, **options)


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
