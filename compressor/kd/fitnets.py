"""FitNets hint learning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compressor.kd.at import channel_energy, normalise_over_batch
from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss, resize_map_to


def hint_regressor(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """FitNets' convolutional regressor for equal spatial sizes: 1×1 conv ``C_s → C_t`` then ReLU.

    The paper sizes the kernel so the regressor's output matches the hint (``N_g - N_h + 1``: 1 for equal sizes)
    and gives it the hint layer's non-linearity (our hints are ReLU outputs). RepDistiller's ``ConvReg`` adds a
    BatchNorm, which the paper does not have.
    """
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, kernel_size=1), nn.ReLU())


@register_kd_loss
class FitNetsLoss(DistillationLoss):
    r"""FitNets: Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2014), "FitNets: hints for thin deep nets",
    arXiv:1412.6550.

    Paper mode: hint = the teacher's ``middle`` activation ``(B, C_t, H, W)``, guided layer = the student's
    ``middle`` ``(B, C_s, H, W)``; one trainable regressor ``r`` per cascade (:func:`hint_regressor`, trained with
    the student: :meth:`trainable_parameters`), and

    .. math:: L = \mathrm{mean}_{b, c, h, w} \left( r(v_s) - u_t \right)^2

    (the paper's ``½‖u_t − r(v_s)‖²`` summed; RepDistiller's ``HintLoss`` takes the element mean, for which its
    weight was tuned). If the spatial sizes differ, ``r(v_s)`` is adaptive-average-pooled to the hint's size.
    Every cascade by default. Romero et al. train the student up to the guided layer on this loss alone before
    the task: the trainer's feature phase (KD-loss-only epochs) does that when asked; it is off by default here,
    as in RepDistiller.

    Authors mode (SFT-KD-Recon code): cascade 3 of 5 only (the middle cascade, ``M // 2``), taps
    ``block_output`` ``(B, 1, H, W)`` turned into ``Q = Σ_c x²`` normalised along the batch axis as for AT, no
    regressor: ``L = mean |Q_s − Q_t|``.

    Reduction: mean over the selected cascades.

    Default weights: paper 1, authors 0.1: RepDistiller's published 100 (``-b 100`` for ``hint``) ×10⁻² and ×10⁻³, by
    the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``).
    """

    name = "fitnets"
    paper = "Romero et al. (2014), FitNets: hints for thin deep nets, arXiv:1412.6550"
    default_weight = 1.0
    authors_default_weight = 0.1
    published_weight = 100.0
    weight_source = ("RepDistiller (Tian et al. 2020) published 100, ×1e-2 (paper) and ×1e-3 (authors) to balance "
                     "L1 on the embedded data (ratios 160 and 360 → 1.6 and 0.4)")
    modes = ("paper", "authors")
    paper_taps = frozenset({"middle"})
    authors_taps = frozenset({"block_output"})

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32):
        super().__init__(mode, cascades, n_cascades=n_cascades, student_channels=student_channels,
                         teacher_channels=teacher_channels)
        with_regressor = self.mode == "paper"
        self.regressors = nn.ModuleDict({
            str(i): hint_regressor(student_channels, teacher_channels) for i in self.cascades if with_regressor
        })

    def default_cascades(self, n_cascades: int) -> tuple[int, ...]:
        """Paper: every cascade. Authors: the middle one (cascade 3 of 5)."""
        return (n_cascades // 2,) if self.mode == "authors" else tuple(range(n_cascades))

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        if self.mode == "authors":
            student_map = normalise_over_batch(channel_energy(student.block_output))
            teacher_map = normalise_over_batch(channel_energy(teacher.block_output))
            return (student_map - teacher_map).abs().mean()
        guided = resize_map_to(self.regressors[str(cascade)](student.middle), teacher.middle)
        return F.mse_loss(guided, teacher.middle)
