"""What every volume reader is: :class:`VolumeReader`, the :class:`SliceData` it yields, and the registry of sources.

A reader reads one volume file slice by slice. It opens its file to check it (existence, format, keys,
dimensionality) and then once per :meth:`VolumeReader.read_slice` call, reading that one slice: a volume of hundreds
of slices is never loaded whole, and readers hold no open handle, so they pickle into ``DataLoader`` worker processes.
Every problem with a file is an :class:`~compressor.errors.InputError` naming the file (and the key), including
NaN/Inf values, which are reported with the slice index.

Every reader takes ``keep_phase`` (default ``False``). ``False`` gives what the paper's real-valued (1-channel) models
use: real or magnitude targets. ``True`` is for the 2-channel (complex) models: a source that carries phase gives the
complex image (complex64) and, when it has k-space, that k-space on the same grid; images-only sources give their
real image as before (the dataset may add a synthetic phase, :mod:`compressor.data.phase`).

:data:`VOLUME_SOURCES` maps each source name to its reader class (:mod:`compressor.data.readers` lists them). Adding a
source is one :class:`VolumeReader` subclass decorated with ``@VOLUME_SOURCES.register(name)``: it is then a training
data source (:mod:`compressor.data.sources`) and a ``compress reconstruct``/``export`` input
(:mod:`compressor.export.scanner.input_formats`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from compressor.errors import InputError
from compressor.registry import Registry


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
        coil_kspace: ``(C, H, W)`` complex64 uncentred fully sampled k-space of the coil images on the target's
            grid, for multi-coil data: the dataset forms the 2-channel input from it as the server does
            (:func:`~compressor.data.coils.masked_virtual_coil`: the compression vector from the masked k-space);
            ``None`` otherwise.
    """

    target: np.ndarray | None
    kspace: np.ndarray | None
    kspace_undersampled: bool = False
    rss: np.ndarray | None = None
    coil_kspace: np.ndarray | None = None


@dataclass(frozen=True)
class ReadOptions:
    """What a caller asks of a reader (:meth:`VolumeReader.open`); each source uses the fields it needs.

    Attributes:
        keep_phase: complex targets and their k-space, for the 2-channel models (module docstring).
        acceleration: ``authors``: the acceleration ``R`` whose ``kspace_volus_<R>x`` is read.
        recon_size: ``fastmri``: the reconstruction size ``(H, W)`` (``None``: the reader's 320 x 320).
        target_key: ``fastmri``: the reconstruction dataset of the targets (``None``: the reader's default).
    """

    keep_phase: bool = False
    acceleration: float | None = None
    recon_size: tuple[int, int] | None = None
    target_key: str | None = None


class VolumeReader(ABC):
    """One volume file, read slice by slice.

    Attributes:
        path: the file.
        name: the file name without its extension (identifies the volume in results).
        keep_phase: whether slices keep their phase (complex targets, for the 2-channel models; module docstring).
        extensions: the file name endings of this source (for :func:`~compressor.data.readers.list_volume_files`).
        named_by: the file name endings that name this source when none is given (``compress reconstruct``/``export``
            without ``--source``); an ending names one source at most (``.h5`` is ``project``).
        phase_formation: the version of how this reader forms the 2-channel models' slices (``keep_phase``) from a
            file. Bump it when the same file gives other complex slices: it enters the stage keys of 2-channel runs
            on this source (:mod:`compressor.rundir.stage_keys`), so their old stages are not reused.
    """

    extensions: ClassVar[tuple[str, ...]] = ()
    named_by: ClassVar[tuple[str, ...]] = ()
    phase_formation: ClassVar[int] = 1

    def __init__(self, path: str | Path, *, keep_phase: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("file not found", self.path)
        self.name = volume_name(self.path, self.extensions)
        self.keep_phase = bool(keep_phase)

    @classmethod
    def open(cls, path: str | Path, options: ReadOptions) -> VolumeReader:
        """A reader of ``path`` with the ``options`` this source uses (the base: ``keep_phase`` only)."""
        return cls(path, keep_phase=options.keep_phase)

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
