"""Neuron selectivity transfer (NST)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss, resize_map_to


def channel_distributions(features: torch.Tensor) -> torch.Tensor:
    """Each channel's map flattened and L2-normalised over positions: ``(B, C, H, W) -> (B, C, H·W)``."""
    return F.normalize(features.flatten(2), dim=2)


def mean_polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples and channel pairs of ``k(a_i, b_j) = (a_i · b_j)²``; ``(B, C_a, N), (B, C_b, N)`` -> scalar."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


@register_kd_loss
class NeuronSelectivityLoss(DistillationLoss):
    r"""NST: Huang & Wang (2017), "Like what you like: knowledge distill via neuron selectivity transfer",
    arXiv:1707.01219.

    The squared MMD between the student's and the teacher's channel distributions, with the polynomial kernel
    ``k(x, y) = (xᵀy + c)^d``, ``d = 2``, ``c = 0`` (the paper's best kernel, RepDistiller's ``NSTLoss``): with
    ``s_i``, ``t_j`` the channels of the ``middle`` activations flattened and L2-normalised over positions,

    .. math:: L = \mathrm{mean}_{i,i'} k(t_i, t_{i'}) + \mathrm{mean}_{j,j'} k(s_j, s_{j'})
                  - 2\, \mathrm{mean}_{i,j} k(s_j, t_i)

    each mean also over the batch. Channel counts may differ; if the spatial sizes differ, the student's map is
    adaptive-average-pooled to the teacher's. Every cascade by default; the paper mode is the only mode.

    Reduction: mean over the selected cascades.

    Default weight 0.5: RepDistiller's published 50 (``-b 50`` for ``nst``) ×10⁻², by the rule of
    :class:`~compressor.kd.base.DistillationLoss` (ratios measured: ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "nst"
    paper = ("Huang & Wang (2017), Like what you like: knowledge distill via neuron selectivity transfer, "
             "arXiv:1707.01219")
    default_weight = 0.5
    published_weight = 50.0
    weight_source = ("RepDistiller (Tian et al. 2020) published 50, ×1e-2 to balance L1 on the embedded data "
                     "(ratio 130 → 1.3)")
    paper_taps = frozenset({"middle"})

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        s = channel_distributions(resize_map_to(student.middle, teacher.middle))
        t = channel_distributions(teacher.middle)
        return mean_polynomial_kernel(t, t) + mean_polynomial_kernel(s, s) - 2 * mean_polynomial_kernel(s, t)
