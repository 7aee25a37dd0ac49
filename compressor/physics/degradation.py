r"""The degradation of the super-resolution task (Appendix B; the paper does not describe it, this is our choice).

A high-resolution (HR) image ``(..., H, W)`` is degraded for scale ``s`` (default 4) by

1. :func:`truncate_kspace`: keep the central ``H/s × W/s`` block of its centred k-space (the acquisition of a
   low-resolution (LR) scan: the same field of view, ``1/s`` of the frequencies in each direction), giving the
   LR image ``(..., H/s, W/s)``;
2. interpolation back to the HR grid (the network's input, as VDSR's): :func:`bicubic_interpolate` (the default:
   VDSR's own interpolation, ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``) or
   :func:`sinc_interpolate` (zero-padded k-space, the interpolation native to MRI).

:func:`degrade` chains the two and returns ``(..., H, W)``.

Conventions:

* **Intensities.** With the orthonormal centred FFT (:func:`~compressor.physics.fft.fft2c`), truncating
  ``H × W`` coefficients to ``h × w`` multiplies intensities by ``√(HW / hw) = s``; the kept coefficients are
  therefore scaled by ``1/s`` (and by ``s`` when zero-padding back), so a constant image keeps its value and
  every image keeps its mean exactly.
* **Sample positions.** LR pixel ``m`` stands for the HR block ``[s·m, s·m + s)`` and sits at its centre,
  HR coordinate ``s·m + (s − 1)/2``, which is what ``align_corners=False`` assumes. Plain truncation would put it
  at ``H//2 + s·(m − h//2)`` instead, so the kept coefficients get the linear phase of a sub-pixel shift
  :math:`c = (s-1)/2 - (H/\!/2 - s\,(h/\!/2))`: :math:`X(k) \mapsto X(k)\,e^{2\pi i k c / H}` per axis (undone by
  :func:`sinc_interpolate`).
* **Real part.** For even ``h`` the band holds the ``−h/2`` frequency without its ``+h/2`` partner, so the LR
  image has a small imaginary part; the real part is kept, as the data-fidelity layer does.

A band-limited image (no frequency with ``|k| ≥ h/2``, resp. ``w/2``) is reproduced exactly by
``sinc_interpolate(truncate_kspace(x, s), s)`` and up to bicubic interpolation error by the default path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compressor.errors import InputError
from compressor.physics.fft import fft2c, ifft2c, real_to_pair

INTERPOLATIONS = ("bicubic", "sinc")
DEFAULT_SCALE = 4


def check_factor(scale: int) -> None:
    """Raise :class:`InputError` unless ``scale`` is a positive integer."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"super-resolution scale must be a positive integer, got {scale!r}")


def check_scale(shape: tuple[int, ...], scale: int) -> None:
    """Raise :class:`InputError` unless ``scale`` is a positive integer dividing both ``H`` and ``W`` of ``shape``."""
    check_factor(scale)
    height, width = shape[-2:]
    if height % scale or width % scale:
        raise InputError(f"super-resolution scale {scale} does not divide the image size {height}x{width}")


def _band_start(size: int, low_size: int) -> int:
    """Index of the first kept coefficient of a centred axis of ``size`` when ``low_size`` are kept."""
    return size // 2 - low_size // 2


def _band_phase(size: int, low_size: int, scale: int) -> torch.Tensor:
    """``exp(2πi·k·c/size)`` for the kept signed frequencies ``k = −low_size//2 .. ``, complex ``(low_size,)``."""
    shift = (scale - 1) / 2 - (size // 2 - scale * (low_size // 2))
    frequencies = torch.arange(low_size, dtype=torch.float64) - low_size // 2
    return torch.polar(torch.ones(low_size, dtype=torch.float64), 2 * math.pi * frequencies * shift / size)


def _shift_band(kspace: torch.Tensor, size: tuple[int, int], scale: int, inverse: bool) -> torch.Tensor:
    """Multiply a centred LR-band k-space ``(..., h, w, 2)`` by the sub-pixel-shift phase (conjugate if inverse)."""
    low_h, low_w = kspace.shape[-3:-1]
    phase = _band_phase(size[0], low_h, scale)[:, None] * _band_phase(size[1], low_w, scale)[None, :]
    phase = (phase.conj() if inverse else phase).to(torch.complex64)
    return torch.view_as_real(torch.view_as_complex(kspace.contiguous()) * phase)


def truncate_kspace(image: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR image ``(..., H/s, W/s)`` of a real HR image ``(..., H, W)``: central ``1/s`` of centred k-space in
    each direction, scaled by ``1/s`` to keep intensities, shifted so that LR pixels sit at HR block centres."""
    check_scale(tuple(image.shape), scale)
    height, width = image.shape[-2:]
    low_h, low_w = height // scale, width // scale
    top, left = _band_start(height, low_h), _band_start(width, low_w)
    band = fft2c(real_to_pair(image))[..., top:top + low_h, left:left + low_w, :]
    band = _shift_band(band, (height, width), scale, inverse=False) / scale
    return ifft2c(band)[..., 0]


def sinc_interpolate(low_res: torch.Tensor, scale: int) -> torch.Tensor:
    """Zero-padded k-space interpolation of a real LR image ``(..., h, w)`` to ``(..., s·h, s·w)``: the exact
    inverse of :func:`truncate_kspace` on band-limited images (same centring, scaling and sample positions)."""
    check_factor(scale)
    low_h, low_w = low_res.shape[-2:]
    height, width = scale * low_h, scale * low_w
    top, left = _band_start(height, low_h), _band_start(width, low_w)
    band = _shift_band(fft2c(real_to_pair(low_res)), (height, width), scale, inverse=True) * scale
    kspace = band.new_zeros((*low_res.shape[:-2], height, width, 2))
    kspace[..., top:top + low_h, left:left + low_w, :] = band
    return ifft2c(kspace)[..., 0]


def bicubic_interpolate(low_res: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic interpolation of a real LR image ``(..., h, w)`` to ``(..., s·h, s·w)`` (PyTorch's cubic kernel,
    ``a = −0.75``, ``align_corners=False``, borders replicated)."""
    check_factor(scale)
    low_h, low_w = low_res.shape[-2:]
    flat = low_res.reshape(-1, 1, low_h, low_w)
    high = F.interpolate(flat, scale_factor=scale, mode="bicubic", align_corners=False)
    return high.reshape(*low_res.shape[:-2], scale * low_h, scale * low_w)


def degrade(image: torch.Tensor, scale: int = DEFAULT_SCALE, interpolation: str = "bicubic") -> torch.Tensor:
    """The SR network's input for an HR image ``(..., H, W)``: :func:`truncate_kspace` then ``interpolation``
    (``"bicubic"`` or ``"sinc"``) back to ``(..., H, W)``."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"SR interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    check_scale(tuple(image.shape), scale)
    low_res = truncate_kspace(image, scale)
    if interpolation == "sinc":
        return sinc_interpolate(low_res, scale)
    return bicubic_interpolate(low_res, scale)
