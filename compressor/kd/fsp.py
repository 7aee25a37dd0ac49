"""Flow of solution procedure (FSP)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

from compressor.errors import InputError
from compressor.kd.at import channel_energy
from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss


def fsp_matrix(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Yim et al.'s FSP matrix ``G_ij = Σ_{h,w} F1_{i,h,w} F2_{j,h,w} / (H·W)``.

    Shapes: ``(B, C1, H, W)`` and ``(B, C2, H, W)`` -> ``(B, C1, C2)``.
    """
    if lower.shape[-2:] != upper.shape[-2:]:
        raise ValueError(f"FSP needs two maps of the same spatial size, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    return lower.flatten(2) @ upper.flatten(2).transpose(1, 2) / lower.shape[-2:].numel()


@register_kd_loss
class FSPLoss(DistillationLoss):
    r"""FSP: Yim, Joo, Bae & Kim (2017), "A gift from knowledge distillation: fast optimization, network
    minimization and transfer learning", CVPR 2017.

    Paper mode: per cascade, the FSP matrix between the block's ``first`` and ``last`` hidden activations
    (``(B, C, H', W')`` each; for a d2 block they are the same ``relu1``, so ``G`` is its Gram matrix over
    positions), and

    .. math:: L = \mathrm{mean}_{b, i, j} \left( G_s - G_t \right)_{b i j}^2, \qquad
              G_{ij} = \frac{1}{H W} \sum_{h, w} F^{first}_{i h w} F^{last}_{j h w}

    (the paper sums over ``i, j`` and averages over samples; RepDistiller's ``FSP`` takes the element mean, for
    which its weight was tuned). Student and teacher need the same channel count. Every cascade by default.
    Yim et al. train in two stages: the student first minimises the FSP loss alone, then the task;
    ``feature_only_epochs_default`` asks the trainer for that first stage.

    Authors mode (SFT-KD-Recon code): ``block_output`` ``(B, 1, H, W)`` of cascades 1–4 of 5 (all but the last),
    squared (``E = Σ_c x²``); the FSP "matrix" (``1 × 1``) between consecutive selected cascades,
    ``G_k = mean_{h,w} E_k E_{k+1}``, and ``L = mean over pairs of mean_b (G_s − G_t)²``. Needs two selected
    cascades or more.

    Reduction: mean over the selected cascades (paper) or over consecutive pairs of them (authors).

    Default weights: paper 50, authors 0.5: RepDistiller's published 50 (``-b 50`` for ``fsp``), kept in paper mode and
    ×10⁻² in authors mode, by the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``).
    Initialisation phase: 30 epochs, RepDistiller's ``--init_epochs`` default for its FSP stage 1.
    """

    name = "fsp"
    paper = ("Yim et al. (2017), A gift from knowledge distillation: fast optimization, network minimization "
             "and transfer learning, CVPR 2017")
    default_weight = 50.0
    authors_default_weight = 0.5
    published_weight = 50.0
    weight_source = ("RepDistiller (Tian et al. 2020) published 50; ×1e-2 in authors mode to balance L1 on the "
                     "embedded data (ratios 3.2 (paper) and 77 → 0.8 (authors))")
    modes = ("paper", "authors")
    paper_taps = frozenset({"first", "last"})
    authors_taps = frozenset({"block_output"})
    feature_only_epochs_default = 30

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32):
        super().__init__(mode, cascades, n_cascades=n_cascades, student_channels=student_channels,
                         teacher_channels=teacher_channels)
        if self.mode == "paper" and student_channels != teacher_channels:
            raise InputError(f"KD method 'fsp' compares C×C matrices: student has {student_channels} channels, "
                             f"teacher {teacher_channels}")
        if self.mode == "authors" and len(self.cascades) < 2:
            raise InputError(f"KD method 'fsp' (authors) pairs consecutive cascades and needs at least 2, "
                             f"got cascades {list(self.cascades)}")

    def default_cascades(self, n_cascades: int) -> tuple[int, ...]:
        """Paper: every cascade. Authors: every cascade but the last (cascades 1–4 of 5)."""
        return tuple(range(n_cascades - 1 if self.mode == "authors" else n_cascades))

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        """Paper mode's term for one cascade (authors mode compares pairs of cascades in :meth:`selected_loss`)."""
        student_fsp = fsp_matrix(student.first, student.last)
        teacher_fsp = fsp_matrix(teacher.first, teacher.last)
        return (student_fsp - teacher_fsp).pow(2).mean()

    def selected_loss(self, student: list[CascadeFeatures], teacher: list[CascadeFeatures]) -> torch.Tensor:
        if self.mode == "paper":
            return super().selected_loss(student, teacher)
        student_energy = [channel_energy(s.block_output).unsqueeze(1) for s in student]
        teacher_energy = [channel_energy(t.block_output).unsqueeze(1) for t in teacher]
        losses = [
            (fsp_matrix(s_low, s_up) - fsp_matrix(t_low, t_up)).pow(2).mean()
            for (s_low, s_up), (t_low, t_up) in zip(pairwise(student_energy), pairwise(teacher_energy))
        ]
        return torch.stack(losses).mean()
