"""What each stage optimises. One training loop (:mod:`compressor.training.loop`) runs any of these.

An :class:`Objective` names the modules it trains, the model whose validation L1 picks the best epoch
(``output_model``), any extra models saved with it, and computes :class:`BatchLoss` for a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from compressor.data.sample import Sample
from compressor.data.transforms import centre_crop
from compressor.kd import CascadeFeatures, CompositeLoss, DistillationLoss, record_cascade_features
from compressor.models import CascadeModel
from compressor.rundir import KD_LOSS_PART, STUDENT_BRANCHES_PART


@dataclass
class BatchLoss:
    """A batch's total loss (to minimise) and the named values the loop logs for it."""

    total: torch.Tensor
    logged: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPhase:
    """A run of epochs with one optimizer. ``rec_weight``/``kd_weight`` scale the distillation objective's two
    terms (ignored by the other objectives); ``pretraining`` trains only a KD loss's own modules."""

    name: str
    epochs: int
    rec_weight: float = 1.0
    kd_weight: float = 1.0
    pretraining: bool = False


class Objective(Protocol):
    output_model: CascadeModel
    kd_term: str | None
    """The logged term that is a distillation loss (the KD method's name), ``None`` when the objective has none."""

    def start_phase(self, phase: TrainingPhase) -> None: ...

    def trainable(self) -> list[nn.Parameter]: ...

    def saved_models(self) -> dict[str, nn.Module]: ...

    def train_mode(self) -> None: ...

    def loss(self, batch: Sample) -> BatchLoss: ...


def reconstruct(model: CascadeModel, batch: Sample) -> torch.Tensor:
    return model(batch.zero_filled, batch.kspace, batch.mask)


RECONSTRUCTION_LOSSES: dict[str, Callable[[], nn.Module]] = {"l1": nn.L1Loss, "mse": nn.MSELoss}
"""Image losses by name, each the mean over pixels: ``l1`` (the paper) and ``mse`` (the feature-domain SFT ablation,
where the classification losses of Park et al. 2021 are replaced by MSE)."""


class ScoredRegionLoss(nn.Module):
    """An image loss on the scored region only: both images cropped to their centre ``size``
    (:func:`~compressor.data.transforms.centre_crop`). A source with measured k-space keeps its measured grid (the
    DF runs there) while the loss, like the metrics, sees the ``image_size`` centre; on the other sources the grid
    is the scored region and the crop takes everything."""

    def __init__(self, loss: nn.Module, size: tuple[int, int]):
        super().__init__()
        self.loss = loss
        self.size = size

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(centre_crop(output, self.size), centre_crop(target, self.size))


def reconstruction_loss(name: str, scored_size: tuple[int, int] | None = None) -> nn.Module:
    """A new instance of the loss ``name`` (a module, so it can be a term of a
    :class:`~compressor.kd.CompositeLoss`), on the centre ``scored_size`` of the images when given."""
    if name not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"unknown reconstruction loss {name!r}; valid: {', '.join(RECONSTRUCTION_LOSSES)}")
    loss = RECONSTRUCTION_LOSSES[name]()
    return loss if scored_size is None else ScoredRegionLoss(loss, scored_size)


class Supervised:
    """Stages 1 and 2 (teacher alone, student alone): ``loss(model(x_u), x)``, L1 in the paper."""

    kd_term: str | None = None

    def __init__(self, model: CascadeModel, loss: str = "l1", scored_size: tuple[int, int] | None = None):
        self.output_model = model
        self.loss_name = loss
        self.rec_loss = reconstruction_loss(loss, scored_size)

    def start_phase(self, phase: TrainingPhase) -> None:
        """One phase only: nothing to switch."""

    def trainable(self) -> list[nn.Parameter]:
        return list(self.output_model.parameters())

    def saved_models(self) -> dict[str, nn.Module]:
        return {}

    def train_mode(self) -> None:
        self.output_model.train()

    def loss(self, batch: Sample) -> BatchLoss:
        rec = self.rec_loss(reconstruct(self.output_model, batch), batch.target)
        return BatchLoss(rec, {self.loss_name: rec.item()})


@dataclass(frozen=True)
class SFTWeights:
    teacher: float = 1.0
    student: float = 1.0
    imitation: float = 1.0
    imitation_per_pixel: bool = False


class StudentFriendlyTeacher:
    """Stage 4: the teacher trained jointly with unfolded student branches (Algorithm 1, step 1).

    With teacher cascades ``T_1..T_N`` and student cascades ``S_1..S_N`` (shared between branches), branch ``i``
    (``i = 1..N-1``) feeds the teacher's cascade-``i`` output into ``S_{i+1} → … → S_N``. The loss is eqs. (3)-(5):

    ``w_T·||x − x_T||_1 + w_S·(1/(N−1))·Σ_i ||x − x_{S,i}||_1 + w_I·(1/(N−1))·Σ_i ||x_T − x_{S,i}||_1``

    with ``||·||_1`` the mean absolute error. ``S_1`` is in no branch and receives no gradient. The imitation term
    back-propagates into both the teacher and the branch (eq. 5 names no stop-gradient). ``imitation_per_pixel``
    divides it by ``H·W`` as the authors' code did. ``loss="mse"`` puts the mean squared error in all three terms
    (the feature-domain ablation, where branches pass feature maps rather than images between blocks).
    """

    kd_term: str | None = None

    def __init__(self, teacher: CascadeModel, student: CascadeModel, weights: SFTWeights, loss: str = "l1",
                 scored_size: tuple[int, int] | None = None):
        if teacher.n_cascades != student.n_cascades:
            raise ValueError(f"SFT needs equal cascade counts, got {teacher.n_cascades} and {student.n_cascades}")
        self.output_model = teacher
        self.student_branches = student
        self.weights = weights
        self.rec_loss = reconstruction_loss(loss, scored_size)

    def start_phase(self, phase: TrainingPhase) -> None:
        """One phase only: nothing to switch."""

    def trainable(self) -> list[nn.Parameter]:
        return list(self.output_model.parameters()) + list(self.student_branches.parameters())

    def saved_models(self) -> dict[str, nn.Module]:
        return {STUDENT_BRANCHES_PART: self.student_branches}

    def train_mode(self) -> None:
        self.output_model.train()
        self.student_branches.train()

    def branch_outputs(self, batch: Sample) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher output and the outputs of branches ``i = 1..N-1`` (teacher cascade ``i`` → ``S_{i+1}..S_N``)."""
        teacher_run = self.output_model.run_cascades(batch.zero_filled, batch.kspace, batch.mask)
        branches = [
            self.student_branches.run_cascades(teacher_run.cascade_outputs[i - 1], batch.kspace, batch.mask,
                                               start=i).image
            for i in range(1, self.output_model.n_cascades)
        ]
        return teacher_run.image, branches

    def loss(self, batch: Sample) -> BatchLoss:
        teacher_image, branches = self.branch_outputs(batch)
        teacher_rec = self.rec_loss(teacher_image, batch.target)
        student_rec = torch.stack([self.rec_loss(b, batch.target) for b in branches]).mean()
        imitation = torch.stack([self.rec_loss(b, teacher_image) for b in branches]).mean()
        if self.weights.imitation_per_pixel:
            imitation = imitation / batch.target[0, 0].numel()
        w = self.weights
        total = w.teacher * teacher_rec + w.student * student_rec + w.imitation * imitation
        return BatchLoss(total, {"teacher_rec": teacher_rec.item(), "student_rec": student_rec.item(),
                                 "imitation": imitation.item()})


def record_features(model: CascadeModel, batch: Sample, taps: set[str]) -> list[CascadeFeatures]:
    """Run ``model`` on ``batch`` and collect, per cascade, the feature taps a distillation loss asked for."""
    return record_cascade_features(model, batch.zero_filled, batch.kspace, batch.mask, taps)


def slice_of(batch: Sample, index: int) -> Sample:
    """Slice ``index`` of a collated batch, as a batch of one (a mask shared by the batch stays shared)."""
    def one(value):
        if torch.is_tensor(value):
            return value[index:index + 1] if value.dim() and value.shape[0] > 1 else value
        return value[index:index + 1]
    return Sample(*(one(value) for value in batch))


class TeacherFeatureCache:
    """A frozen teacher's features of every training slice, computed once per stage instead of once per epoch.

    A distillation's teacher is frozen (eval mode, no gradient) and a training slice is the same in every epoch (no
    augmentation), so its features are a function of the slice alone; recomputing them costs a teacher forward
    pass per batch, a third of a Std-KD step. Each slice is computed on its own (a batch of one) the first time it
    is seen, so the cache's contents depend neither on how epochs are shuffled nor on the epoch a run resumed from.
    A batch of one may run other kernels than a larger batch: cached features differ from batched ones by float
    rounding only.

    All or nothing: when the first slice's taps times ``slices`` exceed ``budget_bytes``, nothing is cached and
    the teacher runs on every batch. Slices are keyed by ``(volume, slice_index)`` (volume names are unique within a
    split: :func:`compressor.data.build_splits` refuses two). The budget is per process: under ``torchrun`` each
    rank caches the slices it trains on, over the epochs all of them.
    """

    def __init__(self, slices: int, budget_bytes: int, log: Callable[[str], None] = print):
        self.slices = slices
        self.budget_bytes = budget_bytes
        self.log = log
        self.enabled = budget_bytes > 0
        self.features: dict[tuple[str, int], list[CascadeFeatures]] = {}

    def _fits(self, one_slice: list[CascadeFeatures]) -> bool:
        needed = self.slices * sum(t.numel() * t.element_size() for f in one_slice for t in f.taps().values())
        if needed > self.budget_bytes:
            self.enabled = False
            self.log(f"teacher features not cached: {self.slices} slices need {needed / 2**20:.0f} MiB, more than "
                     f"the {self.budget_bytes / 2**20:.0f} MiB of train.teacher_cache_mib; the teacher runs every "
                     "batch")
        return self.enabled

    def lookup(self, teacher: CascadeModel, batch: Sample, taps: set[str]) -> list[CascadeFeatures] | None:
        """The teacher's ``taps`` for ``batch`` (features concatenated along the batch), or ``None`` when the cache
        is off (the caller runs the teacher on the batch). Call under ``torch.no_grad``."""
        if not self.enabled:
            return None
        keys = [(str(volume), int(index)) for volume, index in zip(batch.volume, batch.slice_index)]
        for position, key in enumerate(keys):
            if key not in self.features:
                one_slice = [f.detached() for f in record_features(teacher, slice_of(batch, position), taps)]
                if not self.features and not self._fits(one_slice):
                    return None
                self.features[key] = one_slice
        per_slice = [self.features[key] for key in keys]
        return [CascadeFeatures.concatenated(list(cascade)) for cascade in zip(*per_slice)]


class Distillation:
    """Stages 3 and 5: ``w_rec·L_rec(student, x) + w_kd·L_KD(student features, teacher features)``, ``L_rec`` the
    stage's reconstruction loss (L1 in the paper).

    The teacher is frozen (eval mode, no gradient). The weights are set per phase: the paper's joint schedule
    uses ``(1, w)`` throughout; a KD-loss-only phase (the authors' two-phase schedule, FSP's initialisation)
    uses ``(0, w)`` and the authors' fine-tuning phase ``(1, 0)``; a loss's own pre-training (FT's paraphraser)
    trains only the loss's modules on teacher features.
    """

    def __init__(self, student: CascadeModel, teacher: CascadeModel, kd_loss: DistillationLoss, kd_weight: float,
                 loss: str = "l1", scored_size: tuple[int, int] | None = None,
                 teacher_cache: TeacherFeatureCache | None = None):
        self.output_model = student
        self.kd_term: str | None = kd_loss.name
        self.teacher_cache = teacher_cache
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight
        self.loss_name = loss
        self.rec_loss = reconstruction_loss(loss, scored_size)
        self.pretraining = False
        self.composite = self._composite(TrainingPhase("joint", 1))

    def _composite(self, phase: TrainingPhase) -> CompositeLoss:
        return CompositeLoss({self.loss_name: (phase.rec_weight, self.rec_loss),
                              self.kd_loss.name: (self.kd_weight * phase.kd_weight, self.kd_loss)})

    def start_phase(self, phase: TrainingPhase) -> None:
        self.composite = self._composite(phase)
        self.pretraining = phase.pretraining

    def trainable(self) -> list[nn.Parameter]:
        if self.pretraining:
            return list(self.kd_loss.pretrain_parameters())
        return list(self.output_model.parameters()) + list(self.kd_loss.trainable_parameters())

    def saved_models(self) -> dict[str, nn.Module]:
        return {KD_LOSS_PART: self.kd_loss} if any(True for _ in self.kd_loss.parameters()) else {}

    def train_mode(self) -> None:
        self.output_model.train()
        self.kd_loss.train()

    def loss(self, batch: Sample) -> BatchLoss:
        taps = self.kd_loss.required_taps()
        with torch.no_grad():
            cached = self.teacher_cache.lookup(self.teacher, batch, taps) if self.teacher_cache else None
            teacher_features = cached if cached is not None else record_features(self.teacher, batch, taps)
        if self.pretraining:
            pretrain = self.kd_loss.pretrain_loss(teacher_features)
            return BatchLoss(pretrain, {"pretrain": pretrain.item()})
        student_features = record_features(self.output_model, batch, taps)
        name, rec = self.kd_loss.name, self.loss_name
        terms = self.composite(**{rec: (student_features[-1].output, batch.target),
                                  name: (student_features, teacher_features)})
        logged = {rec: terms.terms[rec].item(), name: terms.weighted(name).item()}
        if terms.weights[rec] and terms.weights[name]:
            logged[f"kd_to_{rec}"] = terms.ratio(name, rec)
        return BatchLoss(terms.total, logged)
