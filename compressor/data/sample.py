"""The per-slice record every data source yields, normalised by
:func:`compressor.physics.normalisation.normalise_kspace` (the one normalisation of training, evaluation, export and
reconstruct)."""

from __future__ import annotations

from typing import NamedTuple

import torch


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
