"""Retrospective undersampling and zero-filled reconstruction (uncentred k-space, real-pair tensors).

Shapes: images ``(B, 1, H, W)`` real; k-space ``(B, 1, H, W, 2)``; masks ``(B or 1, 1, H, W)`` with
values 0/1 and DC at index (0, 0). See :mod:`compressor.physics.fft` for the conventions.
"""

from __future__ import annotations

import torch

from compressor.physics.fft import FourierOperator, TorchFFT, real_to_pair


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


def zero_filled(kspace: torch.Tensor, fourier: FourierOperator | None = None) -> torch.Tensor:
    """Zero-filled reconstruction ``x_u = Re(F^{-1} y)`` of undersampled k-space ``(..., H, W, 2)``.

    The real part (not the magnitude) is kept, as the data-fidelity layer and the authors' code do.
    """
    fourier = fourier or TorchFFT()
    return fourier.backward(kspace)[..., 0]
