"""The per-slice record every data source yields, and the one normalisation used everywhere.

Normalisation (identical at train, evaluation and export/reconstruct time): each slice is divided by
``scale = max |x_u|``, the largest absolute value of its zero-filled image ``x_u = Re F^{-1}(y)``. It is
computed from the undersampled k-space alone, since at inference there is no target. The same ``scale``
divides the k-space, the zero-filled image and the target, so the model works on ``x_u`` in ``[-1, 1]``;
multiply a model output by ``scale`` to return to the input's units.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPSILON = 1e-12


class Sample(NamedTuple):
    """One slice, normalised. Tensors have a leading channel dimension of 1; k-space is uncentred.

    Attributes:
        zero_filled: ``Re F^{-1}(y) / scale``, ``(1, H, W)`` float32.
        kspace: undersampled k-space ``y / scale``, ``(1, H, W, 2)`` float32 (real, imag).
        mask: sampling mask, ``(1, H, W)`` float32 0/1, DC at ``(0, 0)``.
        target: fully sampled image ``x / scale``, ``(1, H, W)`` float32.
        scale: the normalisation divisor, a 0-d float32 tensor (so default collation stacks it).
        volume: name of the source volume (file stem).
        slice_index: index of the slice inside its volume.
    """

    zero_filled: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    scale: torch.Tensor
    volume: str
    slice_index: int


def normalisation_scale(zero_filled: torch.Tensor) -> torch.Tensor:
    """``max |x_u|`` over the last two dimensions, ``(..., H, W) -> (...)``; never below 1e-12."""
    return zero_filled.abs().amax(dim=(-2, -1)).clamp_min(EPSILON)
