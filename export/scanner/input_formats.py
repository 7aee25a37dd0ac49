r"""Every scanner input format (``--source``): how each is recognised and read into what the graph takes.

:func:`input_formats` is the one list, in the order the CLI shows it; :func:`input_format` looks a name up,
:func:`infer_source` recognises a file and :func:`source_names` gives the CLI's ``--source`` choices. Each
:class:`InputFormat` reads a file into a :class:`~compressor.export.scanner.scanner_input.ScannerInput`
(:meth:`InputFormat.read`):

* ``npy`` (:class:`NpyKspace`): measured k-space ``(S, H, W)`` or ``(H, W)``, complex, **already undersampled**,
  uncentred unless ``kspace_centred``; every sample outside the mask must be zero (else the mask does not fit the
  data). Multi-coil k-space ``(S, coils, H, W)`` takes a 2-channel model: each slice's coils are compressed to one
  virtual coil (:func:`~compressor.export.scanner.scanner_input.compress_coils`), which is complex whatever the object;
* every volume source of :data:`~compressor.data.volume.VOLUME_SOURCES` (:class:`VolumeFile`: ``project``,
  ``authors``, ``fastmri``, ``nifti``): stored fully sampled k-space is undersampled with the mask, stored
  undersampled k-space is used as is, and images (``fastmri``, ``nifti``, ``project`` files without k-space) have
  their measurement simulated, ``y = M ⊙ F(x)``. For a 2-channel model the readers are opened with ``keep_phase``:
  sources that carry phase give the complex image and its k-space on the measured grid (multi-coil fastMRI
  compressed to one virtual coil);
* ``ismrmrd`` (:class:`IsmrmrdFile`): an ISMRMRD raw scan (:mod:`compressor.export.scanner.raw_input`): its
  acquisitions assembled per slice, coils compressed, the lines the mask samples must have been acquired; its
  acquisitions can head ISMRMRD images of the reconstructions (``--ismrmrd-out``);
* ``mrd`` (:class:`MrdV2Stream`): an MRD v2 binary stream, reconstructed as it arrives by
  :mod:`compressor.export.scanner.mrd_stream`, never read whole.

Without ``--source`` the format that recognises the file's content wins over the one its name's ending names
(:class:`Recognition`): an ``.h5`` file holding ``/dataset/xml`` and ``/dataset/data`` is an ISMRMRD raw scan, any
other ``.h5``/``.hdf5`` a project HDF5, ``.npy`` k-space, ``.nii``/``.nii.gz`` NIfTI.

Adding a scanner input format: an :class:`InputFormat` subclass here and one entry of :func:`input_formats` (a new
volume file format is a reader in :mod:`compressor.data.readers` instead, and appears here by itself).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from compressor.data.coils import masked_virtual_coil
from compressor.data.hdf5_io import HDF5_EXTENSIONS
from compressor.data.volume import VOLUME_SOURCES, ReadOptions, SliceData
from compressor.errors import InputError
from compressor.export.run_models import simulated_kspace
from compressor.export.scanner.raw_input import read_raw_input
from compressor.export.scanner.scanner_input import (
    MULTI_COIL_MESSAGE,
    InputRequest,
    ScannerInput,
    check_finite,
    check_sampling,
    compress_coils,
    size_message,
)

ISMRMRD_DATASETS = ("dataset/xml", "dataset/data")  # what ismrmrd.Dataset writes, and no project file has


class Recognition(IntEnum):
    """How surely a file is of a format; the highest wins."""

    NO = 0
    BY_NAME = 1  # the file name's ending names the format
    BY_CONTENT = 2  # the file's content is the format's


class InputFormat(ABC):
    """One kind of scanner input.

    Attributes:
        name: the ``--source`` name.
        suffixes: the file name endings (lower case) that name this format (:meth:`recognise`).
        without_model: read without an exported model, so it also validates exports (``compress export
            --validation``).
        has_acquisitions: a raw scan whose acquisitions can head ISMRMRD images of the reconstructions
            (``--ismrmrd-out``).
        streamed: reconstructed slice by slice as it arrives (:mod:`compressor.export.scanner.mrd_stream`), never
            read whole nor recognised.
    """

    name: str
    suffixes: tuple[str, ...] = ()
    without_model: ClassVar[bool] = True
    has_acquisitions: ClassVar[bool] = False
    streamed: ClassVar[bool] = False

    def recognise(self, path: Path) -> Recognition:
        """How surely ``path`` is of this format: by its name's ending (formats that look inside override this)."""
        return Recognition.BY_NAME if path.name.lower().endswith(self.suffixes) else Recognition.NO

    def read(self, path: Path, request: InputRequest) -> ScannerInput:
        """``path`` as the undersampled k-space the model of ``request`` takes; every problem is an
        :class:`InputError` naming the file."""
        if not path.is_file():
            raise InputError("input file not found", path)
        return self._read(path, request)

    @abstractmethod
    def _read(self, path: Path, request: InputRequest) -> ScannerInput:
        """:meth:`read` of an existing file."""


class NpyKspace(InputFormat):
    """Measured, undersampled k-space in a ``.npy`` array (module docstring)."""

    name = "npy"
    suffixes = (".npy",)

    def _read(self, path: Path, request: InputRequest) -> ScannerInput:
        kspace = read_npy_kspace(path, request.kspace_centred)
        check_finite(kspace, path)
        if kspace.ndim == 4:
            if request.image_channels != 2:
                raise InputError(MULTI_COIL_MESSAGE, path)
            kspace = compress_coils(kspace)
        return check_sampling(kspace, request, path, measured=True)


class VolumeFile(InputFormat):
    """A volume of a registered data source, whole (module docstring)."""

    def __init__(self, name: str):
        self.name = name
        self.reader = VOLUME_SOURCES.get(name)
        self.suffixes = self.reader.named_by

    def _read(self, path: Path, request: InputRequest) -> ScannerInput:
        keep_phase = request.image_channels == 2
        # fastMRI with phase: the readout oversampling is cropped to the model's rows
        options = ReadOptions(keep_phase, request.acceleration, tuple(request.image_size) if keep_phase else None)
        reader = self.reader.open(path, options)
        if len(reader) == 0:
            raise InputError("the volume has no slices", path)
        if reader.image_shape != tuple(request.image_size):
            raise InputError(size_message(reader.image_shape, request.image_size), path)
        kspace, measured = volume_kspace([reader.read_slice(i) for i in range(len(reader))], request.mask)
        check_finite(kspace, path)
        return check_sampling(kspace, request, path, measured)


class IsmrmrdFile(InputFormat):
    """An ISMRMRD raw scan (HDF5: ``/dataset/xml``, ``/dataset/data``), read for an exported model."""

    name = "ismrmrd"
    without_model = False
    has_acquisitions = True

    def recognise(self, path: Path) -> Recognition:
        """:data:`Recognition.BY_CONTENT` for an HDF5 file holding :data:`ISMRMRD_DATASETS`; a file that cannot be
        opened is left to the reader of the format its name names."""
        if not path.name.lower().endswith(HDF5_EXTENSIONS):
            return Recognition.NO
        try:
            with h5py.File(path, "r") as file:
                found = all(name in file for name in ISMRMRD_DATASETS)
        except OSError:  # missing or not HDF5: the project reader says so
            return Recognition.NO
        return Recognition.BY_CONTENT if found else Recognition.NO

    def _read(self, path: Path, request: InputRequest) -> ScannerInput:
        if request.metadata is None:
            raise InputError("an ISMRMRD raw scan is read for an exported model (its graph decides which readouts "
                             "it takes)", path)
        return read_raw_input(path, request.metadata, request.mask)


class MrdV2Stream(InputFormat):
    """An MRD v2 binary stream (a file, or ``-`` for standard input): reconstructed as it arrives, images out as an
    MRD v2 stream (:func:`~compressor.export.scanner.mrd_stream.reconstruct_mrd`)."""

    name = "mrd"
    without_model = False
    streamed = True

    def _read(self, path: Path, request: InputRequest) -> ScannerInput:
        raise InputError("an MRD v2 stream is reconstructed as it arrives, not read whole: compress reconstruct "
                         "MODEL.onnx INPUT --source mrd", path)


def input_formats() -> list[InputFormat]:
    """Every scanner input format, in the order the CLI lists them (the volume sources as registered now)."""
    return [NpyKspace(), *(VolumeFile(name) for name in VOLUME_SOURCES.names()), IsmrmrdFile(), MrdV2Stream()]


def source_names(*, without_model: bool = False) -> list[str]:
    """The ``--source`` names: all (``compress reconstruct``), or those read without an exported model
    (``compress export --validation``)."""
    return [item.name for item in input_formats() if item.without_model or not without_model]


def input_format(name: str) -> InputFormat:
    """The format named ``name``; an unknown name is an :class:`InputError` listing the valid ones."""
    for item in input_formats():
        if item.name == name.lower():
            return item
    raise InputError(f"unknown source {name!r}; valid: {', '.join(source_names())}")


def infer_source(path: Path) -> str:
    """The source of ``path``: the format that recognises its content, else the one its name's ending names (module
    docstring). A file that cannot be opened is left to its reader's message."""
    recognition, found = max(((item.recognise(path), item) for item in input_formats()), key=lambda pair: pair[0])
    if recognition == Recognition.NO:
        names = [item.name for item in input_formats() if not item.streamed]
        raise InputError(f"cannot tell the source from the file name; pass --source ({', '.join(names)})", path)
    return found.name


def read_npy_kspace(path: Path, centred: bool) -> np.ndarray:
    """Complex k-space ``(S, H, W)`` (an ``(H, W)`` array is one slice) or multi-coil ``(S, coils, H, W)``, converted
    to uncentred."""
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"not a readable .npy array ({error.__class__.__name__}: {error})", path) from None
    if values.ndim == 2:
        values = values[None]
    if values.ndim not in (3, 4):
        raise InputError(f"k-space must be (S, H, W), (H, W) or multi-coil (S, coils, H, W), got shape {values.shape}",
                         path)
    if values.dtype.kind != "c":
        raise InputError(f"k-space must be complex, got dtype {values.dtype}", path)
    if values.size == 0:
        raise InputError(f"k-space is empty (shape {values.shape})", path)
    values = values.astype(np.complex64)
    return np.fft.ifftshift(values, axes=(-2, -1)) if centred else values


def volume_kspace(slices: list[SliceData], mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """A volume's slices as undersampled k-space ``(S, H, W)`` and whether it was measured: stored k-space is
    masked (or kept, if already undersampled), multi-coil k-space compressed as the server compresses it
    (:func:`~compressor.data.coils.masked_virtual_coil`); images-only volumes (real, or complex with ``keep_phase``)
    have their measurement simulated."""
    if slices[0].kspace is None:
        return simulated_kspace(np.stack([data.target for data in slices]), mask), False
    if slices[0].coil_kspace is not None:
        return np.stack([masked_virtual_coil(data.coil_kspace, mask)[0] for data in slices]), True
    stored = np.stack([data.kspace for data in slices]).astype(np.complex64)
    return (stored if slices[0].kspace_undersampled else stored * mask), True


def read_input(path: Path, source: str, image_size: tuple[int, int], mask: np.ndarray,
               acceleration: float | None = None, kspace_centred: bool = False,
               image_channels: int = 1) -> ScannerInput:
    """Read ``path`` of a format read without an exported model (``compress export --validation``) as undersampled
    k-space for a model of ``image_size``, ``acceleration`` and ``image_channels`` (:class:`InputRequest`), with
    ``mask`` ``(H, W)`` 0/1 uncentred; every input problem is an :class:`InputError` naming the file."""
    if not path.is_file():
        raise InputError("input file not found", path)
    names = source_names(without_model=True)
    if source not in names:
        raise InputError(f"unknown source {source!r}; valid: {', '.join(names)}")
    request = InputRequest(tuple(image_size), mask, image_channels, acceleration, kspace_centred)
    return input_format(source).read(path, request)
