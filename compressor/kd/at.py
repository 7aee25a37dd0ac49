"""Attention transfer (AT)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from compressor.errors import InputError
from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss, resize_map_to


def spatial_attention(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT paper's attention map ``F^p_mean``: ``mean_c |A_c|^p``, ``(B, C, H, W) -> (B, H, W)``."""
    return features.abs().pow(p).mean(dim=1)


def normalise_per_sample(attention: torch.Tensor) -> torch.Tensor:
    """Flatten ``(B, H, W) -> (B, H·W)`` and divide each sample by its L2 norm over spatial positions."""
    return F.normalize(attention.flatten(1), dim=1)


def channel_energy(features: torch.Tensor) -> torch.Tensor:
    """The SFT-KD-Recon code's activation map ``Σ_c A_c²``, ``(B, C, H, W) -> (B, H, W)``."""
    return features.pow(2).sum(dim=1)


def normalise_over_batch(activation_map: torch.Tensor) -> torch.Tensor:
    """L2-normalise ``(B, H, W)`` along the **batch** axis (each pixel's vector over the batch has unit norm).

    This is what the SFT-KD-Recon code does; the AT paper normalises each sample over spatial positions instead.
    """
    return F.normalize(activation_map, dim=0)


@register_kd_loss
class AttentionTransferLoss(DistillationLoss):
    r"""Attention transfer: Zagoruyko & Komodakis (2016), "Paying more attention to attention: improving the
    performance of convolutional neural networks via attention transfer", arXiv:1612.03928.

    Taps: ``middle`` of every cascade, ``(B, C_s, H, W)`` (student) and ``(B, C_t, H, W)`` (teacher).

    Paper mode (as RepDistiller implements it): with :math:`Q = \mathrm{vec}(\mathrm{mean}_c |A_c|^p)`, ``p = 2``,

    .. math:: L = \mathrm{mean}_{b, j} \left( \frac{Q_s}{\|Q_s\|_2} - \frac{Q_t}{\|Q_t\|_2} \right)_{b j}^2

    i.e. ``(at(f_s) - at(f_t)).pow(2).mean()`` with ``at(f) = normalize(f.pow(2).mean(1).view(B, -1))``; the
    paper writes the norm of the difference summed over layers, RepDistiller's mean of squares is what its weight
    was tuned for. If the spatial sizes differ, the student's attention map is adaptive-average-pooled to the
    teacher's size (height and width separately) before normalising.

    Authors mode (SFT-KD-Recon code): ``Q = Σ_c A_c²`` normalised along the batch axis, ``L = mean |Q_s - Q_t|``.

    Reduction: mean over the selected cascades (every cascade by default, in both modes).

    Default weights: paper 1000, authors 1: RepDistiller's published 1000 (``-b 1000`` for ``attention``), kept in paper
    mode and ×10⁻³ in authors mode by the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "at"
    paper = ("Zagoruyko & Komodakis (2016), Paying more attention to attention: improving the performance of "
             "convolutional neural networks via attention transfer, arXiv:1612.03928")
    default_weight = 1000.0
    authors_default_weight = 1.0
    published_weight = 1000.0
    weight_source = ("RepDistiller (Tian et al. 2020) published 1000 (paper mode; KD/L1 0.15 in the quick preset's "
                     "first Std-KD epoch), ×1e-3 in authors mode to balance L1 (ratio 760 → 0.8)")
    modes = ("paper", "authors")
    paper_taps = frozenset({"middle"})
    authors_taps = frozenset({"middle"})

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32, p: float = 2.0):
        super().__init__(mode, cascades, n_cascades=n_cascades, student_channels=student_channels,
                         teacher_channels=teacher_channels)
        if p <= 0:
            raise InputError(f"KD method 'at' needs an attention exponent p > 0, got {p}")
        self.p = p

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        if self.mode == "authors":
            student_map = resize_map_to(channel_energy(student.middle), teacher.middle)
            teacher_map = channel_energy(teacher.middle)
            return (normalise_over_batch(student_map) - normalise_over_batch(teacher_map)).abs().mean()
        student_map = resize_map_to(spatial_attention(student.middle, self.p), teacher.middle)
        teacher_map = spatial_attention(teacher.middle, self.p)
        return (normalise_per_sample(student_map) - normalise_per_sample(teacher_map)).pow(2).mean()
