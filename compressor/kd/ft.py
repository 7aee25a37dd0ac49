"""Factor transfer (FT): a paraphraser pre-trained on the teacher's features and a translator on the student's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import InputError
from compressor.kd.base import CascadeFeatures, DistillationLoss, register_kd_loss, resize_map_to


def conv_stack(widths: Sequence[int], transposed: bool = False) -> nn.Sequential:
    """3×3 (transposed) convolutions, stride 1, padding 1, each followed by LeakyReLU(0.1); sizes are kept."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(widths):
        layers += [conv(c_in, c_out, kernel_size=3, padding=1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Kim et al.'s paraphraser: a convolutional autoencoder on the teacher's feature ``(B, C, H, W)``.

    Encoder: ``C → C → kC → kC`` (its output is the teacher *factor*, ``(B, kC, H, W)``); decoder (transposed
    convolutions): ``kC → kC → C → C``, as in the authors' and RepDistiller's code (there without BatchNorm).
    """

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = conv_stack([channels, channels, factor_channels, factor_channels])
        self.decoder = conv_stack([factor_channels, factor_channels, channels, channels], transposed=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``features``, ``(B, C, H, W)``."""
        return self.decoder(self.encoder(features))


def unit_factor(factor: torch.Tensor) -> torch.Tensor:
    """Flatten a factor ``(B, C, H, W) -> (B, C·H·W)`` and L2-normalise each sample."""
    return F.normalize(factor.flatten(1), dim=1)


@register_kd_loss
class FactorTransferLoss(DistillationLoss):
    r"""Factor transfer: Kim, Park & Kwak (2018), "Paraphrasing complex network: network compression via factor
    transfer", NeurIPS 2018.

    Two trainable parts per selected cascade, both on the ``middle`` activations ``(B, C, H', W')``:

    * a :class:`Paraphraser` on the teacher's feature, trained first in a pre-training phase on the teacher alone
      with the reconstruction loss ``mean (P(x_t) − x_t)²`` (:meth:`pretrain_loss`, parameters
      :meth:`pretrain_parameters`), then frozen; its encoder output is the teacher factor ``F_t``;
    * a translator (:func:`conv_stack` ``C_s → C_s → kC_t → kC_t``) on the student's feature, trained with the
      student (:meth:`trainable_parameters`); its output is the student factor ``F_s``.

    Paraphrase rate ``k = 0.5``. With ``u = vec(F) / ‖vec(F)‖₂`` per sample and ``p = 1``:

    .. math:: L = \mathrm{mean}_{b, j} \left| u_s - u_t \right|_{b j}

    (the paper writes the per-sample L1 norm, a sum; the element mean keeps the scale RepDistiller's weight was
    tuned for). If spatial sizes differ, ``F_s`` is adaptive-average-pooled to ``F_t``'s size. Every cascade by
    default; the paper mode is the only mode. RepDistiller's ``FactorTransfer`` compares AT-like channel means of
    squared factors instead of the factors themselves; we follow the paper.

    Reduction: mean over the selected cascades.

    Default weight 200: RepDistiller (Tian et al. 2020) ``train_student.py`` defaults (``-b 200`` for ``factor``), kept
    by the rule of :class:`~compressor.kd.base.DistillationLoss` (ratios measured:
    ``benchmarks/results/kd_weight_calibration.md``). Pre-training phase: 30 epochs, RepDistiller's ``--init_epochs``
    default for its paraphraser.
    """

    name = "ft"
    paper = ("Kim, Park & Kwak (2018), Paraphrasing complex network: network compression via factor transfer, "
             "NeurIPS 2018")
    default_weight = 200.0
    published_weight = 200.0
    weight_source = "RepDistiller (Tian et al. 2020) train_student.py defaults (ratio to L1 on the embedded data 8.9)"
    paper_taps = frozenset({"middle"})
    pretrain_epochs_default = 30

    def __init__(self, mode: str = "paper", cascades: Sequence[int] | None = None, *, n_cascades: int = 5,
                 student_channels: int = 32, teacher_channels: int = 32, rate: float = 0.5):
        super().__init__(mode, cascades, n_cascades=n_cascades, student_channels=student_channels,
                         teacher_channels=teacher_channels)
        factor_channels = int(teacher_channels * rate)
        if not 0 < rate <= 1 or factor_channels < 1:
            raise InputError(f"KD method 'ft': paraphrase rate must be in (0, 1] and leave at least one factor "
                             f"channel of {teacher_channels}, got {rate}")
        self.rate = rate
        self.paraphrasers = nn.ModuleDict({str(i): Paraphraser(teacher_channels, factor_channels)
                                           for i in self.cascades})
        self.translators = nn.ModuleDict({
            str(i): conv_stack([student_channels, student_channels, factor_channels, factor_channels])
            for i in self.cascades
        })

    def pretrain_parameters(self) -> Iterator[nn.Parameter]:
        return self.paraphrasers.parameters()

    def pretrain_loss(self, teacher: Sequence[CascadeFeatures]) -> torch.Tensor:
        """Paraphraser reconstruction loss on the teacher's features alone: mean over the selected cascades of
        ``mean (P(x_t) − x_t)²``."""
        self._check_features(teacher, "teacher")
        losses = []
        for i in self.cascades:
            target = teacher[i].middle.detach()
            losses.append(F.mse_loss(self.paraphrasers[str(i)](target), target))
        return torch.stack(losses).mean()

    def cascade_loss(self, cascade: int, student: CascadeFeatures, teacher: CascadeFeatures) -> torch.Tensor:
        # The paraphraser is frozen after its pre-training phase: no gradient reaches it from the KD loss.
        with torch.no_grad():
            teacher_factor = self.paraphrasers[str(cascade)].encoder(teacher.middle)
        student_factor = resize_map_to(self.translators[str(cascade)](student.middle), teacher_factor)
        return (unit_factor(student_factor) - unit_factor(teacher_factor)).abs().mean()
