"""Volume readers: one class per on-disk source, each yielding one :class:`SliceData` per slice, lazily.

Sources (``open_volume(path, source)``):

* ``project``: this tool's HDF5 layout (:mod:`compressor.data.project_h5`).
* ``fastmri``: fastMRI single- and multi-coil HDF5; magnitude targets, k-space simulated from them (with
  ``keep_phase``: the complex image and its k-space, from the stored k-space).
* ``nifti``: NIfTI volumes (MRBrainS, ACDC), magnitude images, k-space simulated from them.
* ``authors``: the SFT-KD-Recon repository's per-volume HDF5 (``volfs`` and ``kspace_volus_<R>x``), so data
  prepared for the original scripts is used unchanged.

Every reader takes ``keep_phase`` (default ``False``). ``False`` gives what the paper's real-valued (1-channel) models
use: real or magnitude targets. ``True`` is for the 2-channel (complex) models: a source that carries phase gives the
complex image (complex64) and, when it has k-space, that k-space on the same grid; images-only sources give their
real image as before (the dataset may add a synthetic phase, :mod:`compressor.data.phase`).

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

from compressor.data import coils, project_h5
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
        target: ``(H, W)`` fully sampled image: float32 real or magnitude image; with ``keep_phase=True``
            complex64 when the source carries phase (float32 when it does not); ``None`` when only k-space is
            available.
        kspace: ``(H, W)`` complex64 k-space, **uncentred** (DC at ``(0, 0)``), orthonormal FFT of the image, on
            the target's grid (fully sampled: ``fft2(target, norm="ortho")`` up to float32 rounding); ``None`` when
            the source has images only (k-space is then simulated from ``target``).
        kspace_undersampled: ``True`` when ``kspace`` has already been undersampled with the source's mask.
        rss: ``(H, W)`` float32 root-sum-of-squares of the coil images on the target's grid, for multi-coil data
            compressed to one virtual coil (:mod:`compressor.data.coils`); ``None`` otherwise.
    """

    target: np.ndarray | None
    kspace: np.ndarray | None
    kspace_undersampled: bool = False
    rss: np.ndarray | None = None


class VolumeReader(ABC):
    """One volume file, read slice by slice.

    Attributes:
        path: the file.
        name: the file name without its extension (identifies the volume in results).
        keep_phase: whether slices keep their phase (complex targets, for the 2-channel models; module docstring).
        extensions: the file name endings of this source (for :func:`list_volume_files`).
    """

    extensions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path, *, keep_phase: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found", self.path)
        self.name = volume_name(self.path, self.extensions)
        self.keep_phase = bool(keep_phase)

    @abstractmethod
    def __len__(self) -> int:
        """Number of slices."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every slice, as stored."""

    @property
    def stores_kspace(self) -> bool:
        """Whether :meth:`read_slice` gives k-space (fully sampled or undersampled): the slices' grid is then the
        grid the k-space was measured on and cannot be cropped along the phase-encode lines."""
        return False

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


def require_dataset(file: h5py.File, key: str, path: Path, layout: str,
                    complex_valued: bool | None) -> h5py.Dataset:
    """The dataset ``key``, checked to have ``layout``'s dimensionality (``"(S, H, W)"`` is 3-D) and dtype.

    ``complex_valued=True`` asks for a complex dtype, ``False`` for a real numeric one, ``None`` for either.
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
    if complex_valued is False and kind not in "fiu":
        raise InputError(f"expected real numbers, got dtype {dataset.dtype}", path, key)
    if complex_valued is None and kind not in "fiuc":
        raise InputError(f"expected real or complex numbers, got dtype {dataset.dtype}", path, key)
    return dataset


def refuse_complex_image(dataset: h5py.Dataset, path: Path, key: str) -> None:
    """Raise :class:`InputError` when the image ``dataset`` is complex: only the 2-channel models take its phase."""
    if dataset.dtype.kind == "c":
        raise InputError(f"complex image (dtype {dataset.dtype}): a complex target needs the 2-channel models "
                         "(compress --channels 2)", path, key)


def read_hdf5_slice(file: h5py.File, key: str, selection: Any, path: Path, index: int) -> np.ndarray:
    """``file[key][selection]``, the data of slice ``index``, checked to be readable and finite."""
    try:
        data = file[key][selection]
    except OSError as error:
        raise InputError(f"cannot read slice {index} ({error})", path, key) from None
    check_finite(data, path, key, index)
    return data


# --- Fourier helpers (NumPy, at the I/O boundary) -----------------------------------------------------------------

IMAGE_AXES = (-2, -1)


def centred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's image of **centred** k-space ``(..., H, W)`` (DC at ``(H // 2, W // 2)``): the orthonormal inverse
    FFT over the last two axes, ``fftshift(ifft2(ifftshift(k)))``, complex128, image centred at ``(H // 2, W // 2)``.
    """
    shifted = np.fft.ifftshift(np.asarray(kspace, dtype=np.complex128), axes=IMAGE_AXES)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=IMAGE_AXES, norm="ortho"), axes=IMAGE_AXES)


def uncentred_kspace(image: np.ndarray) -> np.ndarray:
    """The project's k-space of an image ``(H, W)``: ``fft2(image, norm="ortho")``, **uncentred** (DC at ``(0, 0)``),
    complex64, computed in double precision from the image as given (so it is the FFT of exactly that image)."""
    return np.fft.fft2(np.asarray(image, dtype=np.complex128), norm="ortho").astype(np.complex64)


def uncentred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """The image ``(H, W)`` complex64 of **uncentred** orthonormal k-space ``(H, W)``, ``ifft2(k, norm="ortho")``."""
    return np.fft.ifft2(np.asarray(kspace, dtype=np.complex128), norm="ortho").astype(np.complex64)


def image_dtype(dataset: h5py.Dataset) -> type[np.generic]:
    """complex64 for a complex image dataset, float32 for a real one."""
    return np.complex64 if dataset.dtype.kind == "c" else np.float32


# --- readers ----------------------------------------------------------------------------------------------------

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


@VOLUME_SOURCES.register("fastmri")
class FastMRIReader(VolumeReader):
    """fastMRI HDF5: ``kspace`` centred complex, single-coil (S, 640, 368) or multi-coil (S, C, 640, 368), and
    ``reconstruction_esc`` (single-coil) or ``reconstruction_rss`` (S, 320, 320) magnitude.

    **keep_phase=False** (the 1-channel models): the target is the magnitude reconstruction ``target_key``; if the
    file lacks it, the other reconstruction key is used. The stored k-space is centred and of another size than the
    reconstructions (the readout is oversampled), so it is **not** passed on: like the other magnitude sources,
    k-space is simulated from the target by the dataset. If the file has neither reconstruction (e.g. the
    challenge's test files), a single-coil target is computed from ``kspace`` as the magnitude of its centred inverse
    FFT, centre-cropped to ``recon_size`` (320 x 320, the size of fastMRI's reconstructions); multi-coil k-space
    without a reconstruction is refused (it is for the 2-channel models).

    **keep_phase=True** (the 2-channel models), for a file with ``kspace``: per coil, the complex image is the
    centred inverse FFT ``fftshift(ifft2(ifftshift(k), norm="ortho"))``; its **rows** (axis -2, the readout, 2x
    oversampled) are centre-cropped to ``recon_size[0]`` (320; a shorter readout is kept whole), which removes the
    readout oversampling; the **columns** (axis -1, the phase-encode lines) are kept whole (368; ``recon_size[1]`` is
    not used): on a grid cropped along the phase-encode axis every k-space line would be an interpolation of all the
    measured lines, so no measured line could be enforced exactly. Cropping rows is exact with respect to a
    data-fidelity layer:
    the readout is fully sampled, a line mask acts on each row of the image independently (along the columns),
    and so it commutes with the row crop. The target is that complex image (complex64) on the measured grid
    (320 x 368, :attr:`image_shape`), the k-space ``fft2(target, norm="ortho")``, uncentred, fully sampled.
    Multi-coil slices are first compressed to one virtual coil (:mod:`compressor.data.coils`: SVD of the coil
    images, the phase of the compression vector fixed so that its largest entry is real and positive) and ``rss``
    is their root-sum-of-squares. The compression is computed **per slice**, from that slice's coil images alone:
    readers read one slice at a time and never a whole volume, so a per-volume compression matrix would need an
    extra pass over every volume. The reconstruction keys are then only checked (their slice count), and
    ``target_key`` is ``None``; a file without ``kspace`` gives its magnitude reconstruction as in the 1-channel
    case (an images-only source).

    **Undersampling is retrospective**: the files' k-space is fully sampled and the reader passes it on as such; the
    dataset applies the run's mask. The data-fidelity layer then runs on the 320 x 368 grid, and losses and metrics
    are computed on its 320 x 320 centre crop (fastMRI's reconstruction size) by the dataset and training
    (:func:`~compressor.data.transforms.scored_image`), not by the reader.

    In both modes, a file whose reconstruction and ``kspace`` have different slice counts is refused when opened.
    """

    extensions = HDF5_EXTENSIONS
    RECONSTRUCTION_KEYS = ("reconstruction_esc", "reconstruction_rss")
    KSPACE_KEY = "kspace"

    def __init__(self, path: str | Path, target_key: str = "reconstruction_esc",
                 recon_size: tuple[int, int] = (320, 320), *, keep_phase: bool = False):
        super().__init__(path, keep_phase=keep_phase)
        if target_key not in self.RECONSTRUCTION_KEYS:
            raise InputError(f"unknown fastMRI target key {target_key!r}; valid: {', '.join(self.RECONSTRUCTION_KEYS)}")
        self.recon_size = (int(recon_size[0]), int(recon_size[1]))
        preference = [target_key] + [key for key in self.RECONSTRUCTION_KEYS if key != target_key]
        #: the number of coils of multi-coil k-space that is read (``None``: single-coil, or k-space not read).
        self.coils: int | None = None
        with open_hdf5(self.path) as file:
            present = [key for key in preference if key in file]
            reconstruction = present[0] if present else None
            has_kspace = self.KSPACE_KEY in file
            if reconstruction is None and not has_kspace:
                raise InputError(f"not a fastMRI file: none of the keys {', '.join(preference)}, {self.KSPACE_KEY}",
                                 self.path)
            if reconstruction is not None:
                target = require_dataset(file, reconstruction, self.path, "(S, H, W)", complex_valued=False)
                if has_kspace:
                    self._check_slice_counts(file, reconstruction)
                if not (self.keep_phase and has_kspace):
                    #: the dataset the targets come from; ``None`` means computed from ``kspace``.
                    self.target_key: str | None = reconstruction
                    self._slices, self._shape = target.shape[0], (target.shape[1], target.shape[2])
                    return
            self.target_key = None
            kspace = self._require_kspace(file)
            if kspace.ndim == 4:
                self.coils = kspace.shape[1]
                if not self.keep_phase:
                    raise InputError(
                        "multi-coil k-space (S, coils, H, W) and no reconstruction_esc/reconstruction_rss target: "
                        "multi-coil k-space is used by the 2-channel models (compress --channels 2), through coil "
                        "compression to one virtual coil", self.path, self.KSPACE_KEY)
            rows, columns = kspace.shape[-2:]
            self._slices = kspace.shape[0]
            self._shape = (min(self.recon_size[0], rows), columns) if self.keep_phase else self.recon_size

    def _check_slice_counts(self, file: h5py.File, reconstruction: str) -> None:
        """Refuse a reconstruction and a k-space of different slice counts (their shapes only, no data read)."""
        kspace = file[self.KSPACE_KEY]
        if isinstance(kspace, h5py.Dataset) and kspace.ndim >= 1 and kspace.shape[0] != file[reconstruction].shape[0]:
            raise InputError(f"{reconstruction!r} has {file[reconstruction].shape[0]} slices but {self.KSPACE_KEY!r} "
                             f"has {kspace.shape[0]}: they must hold the same slices", self.path)

    def _require_kspace(self, file: h5py.File) -> h5py.Dataset:
        """The ``kspace`` dataset, checked: complex, single-coil ``(S, H, W)`` or multi-coil ``(S, C, H, W)``, C > 0."""
        dataset = file[self.KSPACE_KEY]
        ndim = dataset.ndim if isinstance(dataset, h5py.Dataset) else None
        if ndim not in (3, 4):
            shape = f"shape {dataset.shape}" if ndim is not None else "a group"
            raise InputError(f"expected single-coil k-space (S, H, W) or multi-coil k-space (S, coils, H, W), got "
                             f"{shape}", self.path, self.KSPACE_KEY)
        layout = "(S, H, W)" if ndim == 3 else "(S, coils, H, W)"
        kspace = require_dataset(file, self.KSPACE_KEY, self.path, layout, complex_valued=True)
        if ndim == 4 and kspace.shape[1] == 0:
            raise InputError(f"multi-coil k-space with 0 coils (shape {kspace.shape})", self.path, self.KSPACE_KEY)
        return kspace

    def __len__(self) -> int:
        return self._slices

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def stores_kspace(self) -> bool:
        return self.keep_phase and self.target_key is None

    def _read(self, index: int) -> SliceData:
        with open_hdf5(self.path) as file:
            if self.target_key is not None:
                target = read_hdf5_slice(file, self.target_key, index, self.path, index)
                return SliceData(target=target.astype(np.float32), kspace=None)
            kspace = read_hdf5_slice(file, self.KSPACE_KEY, index, self.path, index)
        if self.keep_phase:
            return self._complex_slice(kspace)
        image = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho")))
        return SliceData(target=centre_crop_or_pad(image, self.recon_size).astype(np.float32), kspace=None)

    def _complex_slice(self, kspace: np.ndarray) -> SliceData:
        """The 2-channel slice of one slice's centred k-space ``(H0, W)`` or ``(C, H0, W)`` (class docstring)."""
        images = centred_ifft2(kspace)
        # Rows only: the readout is fully sampled, so its oversampling can go; the phase-encode columns stay.
        images = centre_crop_or_pad(images, self._shape)
        if self.coils is None:
            target, rss = images.astype(np.complex64), None
        else:
            target, rss = coils.virtual_coil(images), coils.root_sum_of_squares(images)
        return SliceData(target=target, kspace=uncentred_kspace(target), rss=rss)


@VOLUME_SOURCES.register("nifti")
class NiftiReader(VolumeReader):
    """A NIfTI volume read through nibabel's lazy array proxy, cast to float32 (scaling applied).

    A 3-D volume ``(X, Y, Z)`` gives ``Z`` slices ``data[:, :, z]`` of shape ``(X, Y)``. A 4-D volume
    ``(X, Y, Z, T)`` (e.g. ACDC cine) gives ``Z * T`` slices; slice ``i`` is ``data[:, :, i % Z, i // Z]``
    (all of frame 0, then frame 1, ...). Other dimensionalities and complex data are rejected. The images are
    used as stored (no reorientation); k-space is simulated from them by the dataset. ``keep_phase`` changes
    nothing: the images are real, there is no phase to keep.

    Each read decompresses a ``.nii.gz`` file from its start up to the slice (gzip has no random access), which
    costs ~0.1 s for a late slice of a large 4-D cine file; uncompressed ``.nii`` files are read by seeking, so
    decompress large volumes once (``gunzip``) before long trainings.
    """

    extensions = NIFTI_EXTENSIONS

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

    ``keep_phase`` asks for complex images and their k-space (the 2-channel models; module docstring). ``options``
    go to the reader: ``target_key=`` for ``fastmri``, ``acceleration=`` for ``authors``.
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
