"""Probabilistic knowledge transfer (PKT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss

PKT_EPSILON = 1e-7


def cosine_probabilities(features: torch.Tensor) -> torch.Tensor:
    """PKT's conditional probabilities ``(B, B)``: cosine similarities of the flattened samples mapped to
    ``[0, 1]`` by ``(cos + 1) / 2`` and normalised to sum 1 along each row (self-similarity included)."""
    unit = F.normalize(features.flatten(1), dim=1, eps=PKT_EPSILON)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_kd_loss
class ProbabilisticTransferLoss(DistillationLoss):
    r"""PKT: Passalis & Tefas (2018), "Learning deep representations with probabilistic knowledge transfer",
    ECCV 2018.

    With :math:`P = ` :func:`cosine_probabilities` of the ``middle`` activations flattened per sample
    (``(B, C·H'·W')``; student and teacher sizes may differ) and ``ε = 1e-7``,

    .. math:: L = \mathrm{mean}_{i, j} \; P^t_{ij} \log \frac{P^t_{ij} + \varepsilon}{P^s_{ij} + \varepsilon}

    the KL divergence of the teacher's from the student's, as in the authors' released code and RepDistiller
    (the mean runs over all ``B²`` entries). Every cascade by default; the paper mode is the only mode.

    Reduction: mean over the selected cascades.

    Default weight 30000: RepDistiller (Tian et al. 2020) ``train_student.py`` defaults (``-b 30000`` for ``pkt``), kept
    by the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "pkt"
    paper = ("Passalis & Tefas (2018), Learning deep representations with probabilistic knowledge transfer, "
             "ECCV 2018")
    default_weight = 30000.0
    published_weight = 30000.0
    weight_source = "RepDistiller (Tian et al. 2020) train_student.py defaults (ratio to L1 on the embedded data 7.8)"
    paper_taps = frozenset({"middle"})

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        student_p = cosine_probabilities(student.middle)
        teacher_p = cosine_probabilities(teacher.middle)
        return (teacher_p * torch.log((teacher_p + PKT_EPSILON) / (student_p + PKT_EPSILON))).mean()
