"""Retrospective undersampling and zero-filled reconstruction (uncentred k-space, real-pair tensors).

Shapes: images ``(B, C, H, W)`` (``C = 1`` real, ``C = 2`` real and imaginary parts); k-space
``(B, 1, H, W, 2)``; masks ``(B or 1, 1, H, W)`` with values 0/1 and DC at index (0, 0). See
:mod:`compressor.physics.fft` for the conventions.
"""

from __future__ import annotations

import torch

from compressor.physics.fft import FourierOperator, TorchFFT, pair_to_channels, real_to_pair


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``M ⊙ k``: zero the k-space samples that were not acquired. ``mask`` broadcasts over ``kspace[..., 0]``."""
    return kspace * mask.unsqueeze(-1)


def undersample(image: torch.Tensor, mask: torch.Tensor, fourier: FourierOperator | None = None) -> torch.Tensor:
    """Forward model ``y = M ⊙ F(x)`` for a real image ``(..., H, W)``; returns k-space ``(..., H, W, 2)``.

    Used to simulate measurements from magnitude images (fastMRI reconstructions, NIfTI volumes, the MNI
    template), which is what the paper's retrospective undersampling does.
    """
    fourier = fourier or TorchFFT()
    return apply_mask(fourier.forward(real_to_pair(image)), mask)


def zero_filled(kspace: torch.Tensor, fourier: FourierOperator | None = None, channels: int = 1) -> torch.Tensor:
    """Zero-filled reconstruction ``x_u = F^{-1} y`` of undersampled k-space as a model's input image.

    ``channels = 1``: the real part ``Re(F^{-1} y)`` (not the magnitude), as the paper's data-fidelity layer and the
    authors' code keep it; k-space ``(..., H, W, 2) -> (..., H, W)``. ``channels = 2``: the complex image as
    (real, imag) channels; k-space ``(..., 1, H, W, 2) -> (..., 2, H, W)``.
    """
    fourier = fourier or TorchFFT()
    return pair_to_channels(fourier.backward(kspace), channels)
