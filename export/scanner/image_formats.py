r"""Served-image conventions: how one slice's reconstruction becomes the pixels of its ISMRMRD image.

Every image the scanner side writes (the server's, ``compress reconstruct --ismrmrd-out``'s, the MRD v2 filter's)
goes through one :class:`ImageFormat` of :data:`IMAGE_FORMATS`, chosen by name (``--image-format``):

* ``magnitude16`` (:class:`Magnitude16`, the default): what a scanner, FIRE/OpenRecon and a PACS store. The magnitude
  ``|x|`` scaled so that its maximum is ``2^BitsStored - 1`` exactly and rounded to the nearest integer (nothing
  clipped): int16 (``DATATYPE_SHORT``) when ``BitsStored`` < 16, uint16 (``DATATYPE_USHORT``) when it is 16, as
  python-ismrmrd-server's examples scale theirs. ``BitsStored`` is the header's ``userParameterLong`` of that name,
  12 when absent (:func:`bits_stored`). ``RescaleSlope`` = max ``|x|`` / (2^BitsStored - 1) (``RescaleIntercept``
  0), so ``pixel x RescaleSlope`` is the reconstruction in its own units (the input's) to within half a step; an
  all-zero image has slope 1.
* ``float32`` (:class:`Float32Magnitude`, research): ``|x|`` as float32, in the reconstruction's units (slope 1).
* ``complex`` (:class:`ComplexImage`, research): ``x`` as complex64 (``IMTYPE_COMPLEX``, ``DATATYPE_CXFLOAT``); the
  phase of a 2-channel model is the virtual coil's (arbitrary up to the coil compression); a 1-channel model's image
  is real.

**Window.** Each image carries the window that shows its whole range, computed as python-ismrmrd-server's examples
do for the stored pixels (centre ``(max + 1) / 2``, width ``max + 1`` with ``max = 2^BitsStored - 1``; ``max |x|``
for the float formats) and expressed, as DICOM defines Window Center/Width (PS3.3 C.11.2.1.2), in the units *after*
the rescale (stored value x ``RescaleSlope``), which is what a viewer applies it to once it has applied the slope
(Siemens' own phase images, slope 2 and intercept -4096, window in rescaled units, follow the same rule). The width
is then about the image's maximum in its own units; DICOM's linear window asks for a width of at least 1, which
holds for noise-prewhitened scans (SNR units, the case of FIRE streams, which carry their noise scans) and any
reconstruction whose maximum is above 1.

**Layout.** ISMRMRD image data are ``(channels, z, y, x)`` with ``x`` the readout; the tool's image is ``(H, W)`` =
(readout, phase-encode), so ``data[0, 0] = image.T`` ``(W, H)``.

Adding a served-image convention: an :class:`ImageFormat` subclass here, registered with
``@IMAGE_FORMATS.register("name")``; ``--image-format`` offers it at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import ismrmrd
import numpy as np

from compressor.errors import InputError
from compressor.registry import Registry

DEFAULT_BITS_STORED = 12
BITS_STORED_PARAMETER = "BitsStored"
DEFAULT_IMAGE_FORMAT = "magnitude16"


@dataclass(frozen=True)
class ImagePixels:
    """One image's pixels and how to read them.

    Attributes:
        data: ``(1, 1, W, H)`` ``(channels, z, y phase-encode, x readout)``, C-contiguous, in the format's dtype.
        data_type: the ISMRMRD ``DATATYPE_*`` of ``data``.
        image_type: the ISMRMRD ``IMTYPE_*``.
        rescale_slope: ``pixel x rescale_slope`` = the reconstruction in its own units (intercept 0).
        window: ``(centre, width)`` in rescaled units (module docstring).
    """

    data: np.ndarray
    data_type: int
    image_type: int
    rescale_slope: float
    window: tuple[float, float]


class ImageFormat(ABC):
    """A served-image convention (module docstring); subclasses set :attr:`summary` and implement :meth:`pixels`."""

    summary: ClassVar[str]

    @abstractmethod
    def pixels(self, reconstruction: np.ndarray, bits_stored: int) -> ImagePixels:
        """The pixels of one reconstruction ``(H, W)`` (readout, phase-encode; float32 or complex64, finite) for a
        scan whose header asks for ``bits_stored`` bits (used by integer formats only)."""


IMAGE_FORMATS: Registry[type[ImageFormat]] = Registry("image format")


def _layout(image: np.ndarray, dtype: type) -> np.ndarray:
    """``(H, W)`` -> ``(1, 1, W, H)`` C-contiguous ``dtype``."""
    return np.ascontiguousarray(image.T, dtype=dtype)[None, None]


def _peak(magnitude: np.ndarray) -> float:
    """The largest magnitude, refusing a reconstruction that is not finite (it would scale every pixel to garbage)."""
    peak = float(magnitude.max(initial=0.0))
    if not np.isfinite(peak):
        raise InputError("the model's reconstruction holds NaN or Inf; no image is sent for it")
    return peak


@IMAGE_FORMATS.register(DEFAULT_IMAGE_FORMAT)
class Magnitude16(ImageFormat):
    summary = ("magnitude as int16 scaled to 2^BitsStored - 1 (uint16 when BitsStored is 16), with RescaleSlope: "
               "what scanners and PACS store")

    def pixels(self, reconstruction: np.ndarray, bits_stored: int) -> ImagePixels:
        top = float(2 ** bits_stored - 1)
        magnitude = np.abs(reconstruction).astype(np.float32, copy=False)
        peak = _peak(magnitude)
        slope = peak / top if peak > 0 else 1.0
        np.multiply(magnitude, np.float32(top / peak if peak > 0 else 0.0), out=magnitude)
        np.rint(magnitude, out=magnitude)
        unsigned = bits_stored == 16
        data = _layout(magnitude, np.uint16 if unsigned else np.int16)
        return ImagePixels(data, ismrmrd.DATATYPE_USHORT if unsigned else ismrmrd.DATATYPE_SHORT,
                           ismrmrd.IMTYPE_MAGNITUDE, slope, ((top + 1) / 2 * slope, (top + 1) * slope))


@IMAGE_FORMATS.register("float32")
class Float32Magnitude(ImageFormat):
    summary = "magnitude as float32 in the reconstruction's units (research)"

    def pixels(self, reconstruction: np.ndarray, bits_stored: int) -> ImagePixels:
        magnitude = _layout(np.abs(reconstruction), np.float32)
        peak = _peak(magnitude)
        return ImagePixels(magnitude, ismrmrd.DATATYPE_FLOAT, ismrmrd.IMTYPE_MAGNITUDE, 1.0, (peak / 2, peak))


@IMAGE_FORMATS.register("complex")
class ComplexImage(ImageFormat):
    summary = "the complex image as complex64 in the reconstruction's units (research)"

    def pixels(self, reconstruction: np.ndarray, bits_stored: int) -> ImagePixels:
        peak = _peak(np.abs(reconstruction))
        return ImagePixels(_layout(reconstruction, np.complex64), ismrmrd.DATATYPE_CXFLOAT, ismrmrd.IMTYPE_COMPLEX,
                           1.0, (peak / 2, peak))


def image_format(name: str) -> ImageFormat:
    """The convention registered as ``name``; an unknown name is an :class:`InputError` listing the known ones."""
    return IMAGE_FORMATS.get(name)()


def image_format_help() -> str:
    """One line per convention, for ``--image-format``'s help."""
    return "; ".join(f"{name}: {IMAGE_FORMATS.get(name).summary}" for name in IMAGE_FORMATS.names())


def bits_stored(header: ismrmrd.xsd.ismrmrdHeader | None, source: str | Path) -> int:
    """The header's ``userParameterLong`` ``BitsStored`` (:data:`DEFAULT_BITS_STORED` when absent or without a
    header); a value outside 1..16 is an :class:`InputError` naming ``source``."""
    parameters = header.userParameters if header is not None else None
    values = [int(item.value) for item in (parameters.userParameterLong if parameters is not None else [])
              if item.name == BITS_STORED_PARAMETER]
    bits = values[0] if values else DEFAULT_BITS_STORED
    if not 1 <= bits <= 16:
        raise InputError(f"the header's userParameterLong {BITS_STORED_PARAMETER} is {bits}; a 16-bit image stores "
                         "1 to 16 bits", source)
    return bits
