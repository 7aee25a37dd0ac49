"""fastMRI HDF5 volumes (:class:`FastMRIReader`), single- and multi-coil, and the NumPy Fourier conventions that
convert their centred k-space to the tool's uncentred k-space."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from compressor.data import coils
from compressor.data.hdf5_io import HDF5_EXTENSIONS, open_hdf5, read_hdf5_slice, require_dataset
from compressor.data.transforms import centre_crop_or_pad
from compressor.data.volume import VOLUME_SOURCES, ReadOptions, SliceData, VolumeReader
from compressor.errors import InputError

IMAGE_AXES = (-2, -1)
DEFAULT_TARGET_KEY = "reconstruction_esc"
RECON_SIZE = (320, 320)
"""fastMRI's reconstruction size, the default ``recon_size``."""


def centred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's image of **centred** k-space ``(..., H, W)`` (DC at ``(H // 2, W // 2)``): the orthonormal inverse
    FFT over the last two axes, ``fftshift(ifft2(ifftshift(k)))``, complex128, image centred at ``(H // 2, W // 2)``.
    """
    shifted = np.fft.ifftshift(np.asarray(kspace, dtype=np.complex128), axes=IMAGE_AXES)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=IMAGE_AXES, norm="ortho"), axes=IMAGE_AXES)


def uncentred_kspace(image: np.ndarray) -> np.ndarray:
    """The project's k-space of an image ``(..., H, W)`` (one image, or coil images ``(C, H, W)``):
    ``fft2(image, norm="ortho")`` over the last two axes, **uncentred** (DC at ``(0, 0)``),
    complex64, computed in double precision from the image as given (so it is the FFT of exactly that image)."""
    return np.fft.fft2(np.asarray(image, dtype=np.complex128), norm="ortho").astype(np.complex64)


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
    is their root-sum-of-squares; the coils' k-space is passed on too (``coil_kspace``), and the dataset trains on
    the virtual coil the server forms (the compression vector from the **masked** coil k-space,
    :func:`~compressor.data.coils.masked_virtual_coil`, the target combined with the same vector). The
    compression is computed **per slice**, from that slice's coil images alone:
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
    phase_formation = 2  # 2: multi-coil slices through the served virtual coil (u from the masked coil k-space)
    RECONSTRUCTION_KEYS = ("reconstruction_esc", "reconstruction_rss")
    KSPACE_KEY = "kspace"

    def __init__(self, path: str | Path, target_key: str = DEFAULT_TARGET_KEY,
                 recon_size: tuple[int, int] = RECON_SIZE, *, keep_phase: bool = False):
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

    @classmethod
    def open(cls, path: str | Path, options: ReadOptions) -> FastMRIReader:
        """A reader with ``options``' ``target_key`` and ``recon_size`` (the defaults where they are ``None``)."""
        return cls(path, options.target_key or DEFAULT_TARGET_KEY, options.recon_size or RECON_SIZE,
                   keep_phase=options.keep_phase)

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
            return SliceData(target=images.astype(np.complex64), kspace=uncentred_kspace(images))
        target = coils.virtual_coil(images)
        return SliceData(target=target, kspace=uncentred_kspace(target), rss=coils.root_sum_of_squares(images),
                         coil_kspace=uncentred_kspace(images))
