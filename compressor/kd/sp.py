"""Similarity-preserving knowledge distillation (SP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss


def batch_similarity(features: torch.Tensor) -> torch.Tensor:
    """SP's ``G̃``: ``Q Qᵀ`` of the flattened features ``Q`` ``(B, D)``, each row L2-normalised, ``(B, B)``."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``‖G̃_s − G̃_t‖_F² / B²`` for one pair of features with the same batch size (other dimensions may differ)."""
    batch = student.shape[0]
    return (batch_similarity(student) - batch_similarity(teacher)).pow(2).sum() / batch**2


@register_kd_loss
class SimilarityPreservingLoss(DistillationLoss):
    r"""Similarity-preserving KD: Tung & Mori (2019), "Similarity-preserving knowledge distillation", ICCV 2019.

    With :math:`Q` the features flattened to ``(B, D)`` and :math:`\tilde G = \mathrm{rownorm}(Q Q^\top)`,

    .. math:: L = \frac{1}{B^2} \| \tilde G_s - \tilde G_t \|_F^2

    Student and teacher may have different channel counts or sizes: only the ``B × B`` matrices are compared.

    Paper mode: taps ``middle`` ``(B, C, H', W')`` of every cascade. Authors mode (SFT-KD-Recon code): the same
    loss on ``block_output`` ``(B, 1, H, W)`` of cascades 1–4 of 5 (every cascade but the last).

    Reduction: mean over the selected cascades.

    Default weights: paper 300, authors 30: RepDistiller's published 3000 (``-b 3000`` for ``similarity``, whose
    ``Similarity`` loss is this formula) ×10⁻¹ and ×10⁻², by the rule of :class:`~compressor.kd.base.DistillationLoss`
    (ratios measured: ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "sp"
    paper = "Tung & Mori (2019), Similarity-preserving knowledge distillation, ICCV 2019"
    default_weight = 300.0
    authors_default_weight = 30.0
    published_weight = 3000.0
    weight_source = ("RepDistiller (Tian et al. 2020) published 3000, ×0.1 (paper) and ×1e-2 (authors) to balance "
                     "L1 on the embedded data (ratios 20 and 280 → 2 and 2.8)")
    modes = ("paper", "authors")
    paper_taps = frozenset({"middle"})
    authors_taps = frozenset({"block_output"})

    def default_cascades(self, n_cascades: int) -> tuple[int, ...]:
        """Paper: every cascade. Authors: every cascade but the last (cascades 1–4 of 5)."""
        return tuple(range(n_cascades - 1 if self.mode == "authors" else n_cascades))

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        tap = "block_output" if self.mode == "authors" else "middle"
        return similarity_preserving_loss(getattr(student, tap), getattr(teacher, tap))
