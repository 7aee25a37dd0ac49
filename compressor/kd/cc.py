"""Correlation congruence (CC)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from compressor.errors import InputError
from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss


def pooled_embedding(features: torch.Tensor) -> torch.Tensor:
    """Global-average-pool ``(B, C, H, W)`` to ``(B, C)`` and L2-normalise each sample."""
    return F.normalize(features.mean(dim=(-2, -1)), dim=1)


def rbf_correlation(embedding: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    r"""CC's correlation matrix ``(B, B)`` of unit-norm embeddings ``(B, D)``: the Gaussian RBF kernel
    :math:`\exp(-\gamma \|e_i - e_j\|^2)` by its order-``P`` Taylor expansion,

    .. math:: \psi_{ij} = e^{-2\gamma} \sum_{p=0}^{P} \frac{(2\gamma)^p}{p!} (e_i \cdot e_j)^p

    (exact as ``P → ∞`` for unit-norm ``e``, which is why the embeddings are normalised).
    """
    inner = embedding @ embedding.t()
    expansion = sum((2 * gamma) ** p / math.factorial(p) * inner.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * expansion


def consecutive_difference_product(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RepDistiller's simplified CC on ``(B, C, ...)`` tensors: ``mean((δ[:-1] · δ[1:]).sum(1))``, ``δ = |s − t|``."""
    if student.shape[0] < 2:
        raise InputError(f"KD method 'cc' (authors) multiplies consecutive batch items and needs a batch of 2 or "
                         f"more, got {student.shape[0]}")
    delta = (student - teacher).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register_kd_loss
class CorrelationCongruenceLoss(DistillationLoss):
    r"""Correlation congruence: Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang (2019), "Correlation congruence for
    knowledge distillation", ICCV 2019.

    Paper mode: embeddings ``e`` = the ``middle`` activations ``(B, C, H', W')`` global-average-pooled to
    ``(B, C)`` and L2-normalised (the paper uses the penultimate embedding of a classifier; a reconstruction
    network has none, so we pool hidden features), ``ψ`` = :func:`rbf_correlation` with the paper's Gaussian
    RBF kernel, ``γ = 0.4``, ``P = 2`` (torchdistill's CCKD configuration), and the correlation congruence term

    .. math:: L = \frac{1}{B^2} \| \psi(E_s) - \psi(E_t) \|_F^2

    (the paper's instance congruence term is its KD loss on logits, which has no counterpart here). Every
    cascade by default.

    Authors mode (SFT-KD-Recon code, RepDistiller's simplified CC): ``δ = |x_s − x_t|`` of the ``block_output``
    ``(B, 1, H, W)`` of every cascade; products of consecutive batch items summed over channels and averaged,
    ``L = mean_{b < B-1, h, w} Σ_c δ_{b c h w} δ_{b+1, c h w}``. Needs a batch of 2 or more.

    Reduction: mean over the selected cascades.

    Default weights: paper 2e4, authors 0.02: RepDistiller's published 0.02 (``-b 0.02`` for ``correlation``), tuned for
    its ``Correlation``, the simplified authors-mode formula (on embeddings), not the paper's kernel form: kept in
    authors mode and ×10⁶ in paper mode, by the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "cc"
    paper = "Peng et al. (2019), Correlation congruence for knowledge distillation, ICCV 2019"
    default_weight = 2e4
    authors_default_weight = 0.02
    published_weight = 0.02
    weight_source = ("RepDistiller (Tian et al. 2020) published 0.02, tuned for its simplified CC (the authors-mode "
                     "formula); ×1e6 in paper mode to balance L1 on the embedded data (ratio 1.2e-6 → 1.2; "
                     "authors 0.2)")
    modes = ("paper", "authors")
    paper_taps = frozenset({"middle"})
    authors_taps = frozenset({"block_output"})

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32, gamma: float = 0.4, order: int = 2):
        super().__init__(mode, cascades, n_cascades=n_cascades, student_channels=student_channels,
                         teacher_channels=teacher_channels)
        if gamma <= 0 or order < 1:
            raise InputError(f"KD method 'cc' needs gamma > 0 and order >= 1, got gamma={gamma}, order={order}")
        self.gamma = gamma
        self.order = order

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        if self.mode == "authors":
            return consecutive_difference_product(student.block_output, teacher.block_output)
        student_psi = rbf_correlation(pooled_embedding(student.middle), self.gamma, self.order)
        teacher_psi = rbf_correlation(pooled_embedding(teacher.middle), self.gamma, self.order)
        return (student_psi - teacher_psi).pow(2).sum() / student.middle.shape[0] ** 2
