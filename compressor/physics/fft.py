"""Orthonormal 2-D Fourier transforms on real-pair tensors.

Conventions (used by every function in :mod:`compressor.physics`):

* Complex data travel as real tensors whose **last dimension has size 2** (real, imaginary), shape
  ``(..., H, W, 2)``, as in fastMRI and the authors' code. This keeps every operator exportable to ONNX,
  which has no complex dtype.
* ``norm="ortho"``: the transforms are unitary, so ``||F x|| = ||x||`` and ``F^{-1} = F^H``.
* **Uncentred** (``fft2``/``ifft2``): the DC coefficient sits at index ``(0, 0)``, low frequencies at the
  array's edges. This is the project's internal k-space convention (the authors' masks are unshifted).
* **Centred** (``fft2c``/``ifft2c``): DC at index ``(H // 2, W // 2)``, as fastMRI stores k-space. Only
  readers at the I/O boundary use them, to convert foreign data into the internal convention.

A :class:`FourierOperator` bundles a forward/backward pair so that the data-fidelity layer receives the
operator as an argument: training uses :class:`TorchFFT`; export swaps in :class:`MatmulDFT` (explicit DFT
matrices, which every ONNX Runtime execution provider runs) without touching the model.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

COMPLEX_DIM = -1
SPATIAL_DIMS = (-3, -2)


def _check_pair(data: torch.Tensor) -> None:
    if data.shape[-1] != 2:
        raise ValueError(f"complex data need a last dimension of size 2 (real, imag), got {tuple(data.shape)}")


def fft2(data: torch.Tensor) -> torch.Tensor:
    """Uncentred orthonormal 2-D FFT. ``(..., H, W, 2) -> (..., H, W, 2)``, DC at index (0, 0)."""
    _check_pair(data)
    kspace = torch.fft.fft2(torch.view_as_complex(data.contiguous()), dim=(-2, -1), norm="ortho")
    return torch.view_as_real(kspace)


def ifft2(data: torch.Tensor) -> torch.Tensor:
    """Uncentred orthonormal 2-D inverse FFT. ``(..., H, W, 2) -> (..., H, W, 2)``, DC expected at (0, 0)."""
    _check_pair(data)
    image = torch.fft.ifft2(torch.view_as_complex(data.contiguous()), dim=(-2, -1), norm="ortho")
    return torch.view_as_real(image)


def fftshift2(data: torch.Tensor) -> torch.Tensor:
    """Move DC from (0, 0) to (H // 2, W // 2) on a real-pair tensor ``(..., H, W, 2)``."""
    return torch.fft.fftshift(data, dim=SPATIAL_DIMS)


def ifftshift2(data: torch.Tensor) -> torch.Tensor:
    """Move DC from (H // 2, W // 2) back to (0, 0) on a real-pair tensor ``(..., H, W, 2)``."""
    return torch.fft.ifftshift(data, dim=SPATIAL_DIMS)


def fft2c(data: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT: image centred at (H//2, W//2) -> k-space with DC at (H//2, W//2)."""
    return fftshift2(fft2(ifftshift2(data)))


def ifft2c(data: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT, the inverse of :func:`fft2c`."""
    return fftshift2(ifft2(ifftshift2(data)))


def complex_abs(data: torch.Tensor) -> torch.Tensor:
    """Magnitude of a real-pair tensor ``(..., 2) -> (...)``."""
    _check_pair(data)
    return torch.sqrt(data[..., 0] ** 2 + data[..., 1] ** 2)


def real_to_pair(image: torch.Tensor) -> torch.Tensor:
    """A real image ``(...)`` as a real-pair tensor ``(..., 2)`` with zero imaginary part."""
    return torch.stack((image, torch.zeros_like(image)), dim=-1)


IMAGE_CHANNELS = (1, 2)
"""The image channel counts a model may have: 1 is the paper's real image, 2 the complex image as (real, imag)."""


def _check_channels(channels: int) -> None:
    if channels not in IMAGE_CHANNELS:
        raise ValueError(f"image channels must be 1 (real) or 2 (real, imag), got {channels}")


def channels_to_pair(image: torch.Tensor) -> torch.Tensor:
    """A model's image ``(..., C, H, W)`` as the complex image ``(..., 1, H, W, 2)`` the Fourier operators take.

    ``C = 1``: a real image (imaginary part zero); ``C = 2``: channel 0 is the real part, channel 1 the imaginary.
    """
    channels = image.shape[-3]
    _check_channels(channels)
    if channels == 1:
        return real_to_pair(image)
    return image.movedim(-3, -1).unsqueeze(-4)


def pair_to_channels(data: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`channels_to_pair`: ``(..., 1, H, W, 2) -> (..., C, H, W)``.

    ``channels = 1`` keeps the real part (the paper's real-valued models); ``2`` keeps both parts as channels.
    """
    _check_channels(channels)
    _check_pair(data)
    if channels == 1:
        return data[..., 0]
    if data.shape[-4] != 1:
        raise ValueError(f"a 2-channel image needs a singleton channel dimension before (H, W, 2), got "
                         f"{tuple(data.shape)}")
    return data.squeeze(-4).movedim(-1, -3)


def channel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """``|x|`` of a model's image ``(..., C, H, W) -> (..., 1, H, W)``: the absolute value of a real image
    (``C = 1``), the complex magnitude ``sqrt(re² + im²)`` of a 2-channel one."""
    _check_channels(image.shape[-3])
    if image.shape[-3] == 1:
        return image.abs()
    return torch.sqrt(image[..., :1, :, :] ** 2 + image[..., 1:, :, :] ** 2)


class FourierOperator(Protocol):
    """A forward/backward 2-D Fourier pair on real-pair tensors ``(..., H, W, 2)``, uncentred, orthonormal."""

    def forward(self, image: torch.Tensor) -> torch.Tensor: ...

    def backward(self, kspace: torch.Tensor) -> torch.Tensor: ...


class TorchFFT(nn.Module):
    """``torch.fft`` implementation of :class:`FourierOperator` (fast on CPU and CUDA; not ONNX-exportable
    by the TorchScript exporter)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return fft2(image)

    def backward(self, kspace: torch.Tensor) -> torch.Tensor:
        return ifft2(kspace)


def dft_matrix(n: int, inverse: bool = False, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the orthonormal, uncentred ``n x n`` DFT matrix.

    ``F[k, m] = exp(∓2πi·k·m/n) / sqrt(n)`` (minus sign for the forward transform). Built in float64 with the
    index product ``k·m`` reduced modulo ``n`` before the angle is formed, so that large products do not lose
    precision, then cast to ``dtype``. The matrix is symmetric.
    """
    index = torch.arange(n, dtype=torch.int64)
    product = torch.remainder(index[:, None] * index[None, :], n).to(torch.float64)
    sign = 1.0 if inverse else -1.0
    angle = sign * 2.0 * math.pi * product / n
    scale = 1.0 / math.sqrt(n)
    return (torch.cos(angle) * scale).to(dtype), (torch.sin(angle) * scale).to(dtype)


class MatmulDFT(nn.Module):
    """:class:`FourierOperator` as two matrix products with precomputed DFT matrices.

    ``F2(x) = F_H · x · F_W`` (the DFT matrices are symmetric), evaluated with real arithmetic on the
    (real, imag) pair. Exact to float32 rounding (~1e-6), exportable to ONNX as ``MatMul`` nodes, and runs on
    every ONNX Runtime execution provider (ONNX ``DFT`` has no CUDA kernel). Fixed image size ``(H, W)``.
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        for name, n in (("h", height), ("w", width)):
            fr, fi = dft_matrix(n)
            self.register_buffer(f"forward_{name}_re", fr, persistent=False)
            self.register_buffer(f"forward_{name}_im", fi, persistent=False)

    @staticmethod
    def _left(mr: Tensor, mi: Tensor, xr: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        """``M @ X`` for complex ``M = mr + i·mi`` and ``X = xr + i·xi``."""
        return mr @ xr - mi @ xi, mr @ xi + mi @ xr

    @staticmethod
    def _right(xr: Tensor, xi: Tensor, mr: Tensor, mi: Tensor) -> tuple[Tensor, Tensor]:
        """``X @ M`` for complex ``X`` and ``M``."""
        return xr @ mr - xi @ mi, xr @ mi + xi @ mr

    def _transform(self, data: torch.Tensor, conjugate: bool) -> torch.Tensor:
        _check_pair(data)
        if tuple(data.shape[-3:-1]) != (self.height, self.width):
            raise ValueError(f"MatmulDFT built for {self.height}x{self.width}, got {tuple(data.shape[-3:-1])}")
        sign = -1.0 if conjugate else 1.0
        hr, hi = self.forward_h_re, sign * self.forward_h_im
        wr, wi = self.forward_w_re, sign * self.forward_w_im
        xr, xi = data[..., 0], data[..., 1]
        yr, yi = self._left(hr, hi, xr, xi)
        zr, zi = self._right(yr, yi, wr, wi)
        return torch.stack((zr, zi), dim=-1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._transform(image, conjugate=False)

    def backward(self, kspace: torch.Tensor) -> torch.Tensor:
        return self._transform(kspace, conjugate=True)
