"""Models and objectives of a planned stage: fresh or warm-started models, trained parents, and the
supervised, student-friendly-teacher and distillation objectives with their phases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from compressor import rundir
from compressor.config import RunConfig
from compressor.errors import InputError
from compressor.kd import DistillationLoss, build_kd_loss
from compressor.models import CascadeModel, ModelOptions, build_model
from compressor.training.checkpoint import load_weights
from compressor.training.objectives import (
    Distillation,
    Objective,
    SFTWeights,
    StudentFriendlyTeacher,
    Supervised,
    TeacherFeatureCache,
    TrainingPhase,
)
from compressor.training.stages import PlannedStage, kd_weight

# The KD losses state their own phase lengths for RepDistiller's 240-epoch schedule (``--init_epochs 30``);
# they are scaled to the stage's epochs.
REFERENCE_KD_EPOCHS = 240


def kd_phases(loss: DistillationLoss, schedule: str, epochs: int,
              feature_epochs: int | None = None) -> list[TrainingPhase]:
    """The phases of a distillation stage of ``epochs`` epochs.

    * ``joint`` (Algorithm 1, step 2): L1 + w·KD together, preceded by the method's own initialisation phase when
      its paper has one (FSP: KD loss alone first), scaled from :data:`REFERENCE_KD_EPOCHS` to ``epochs``;
    * ``two-phase`` (the authors' scripts): ``feature_epochs`` (default ``epochs``) of KD loss alone, then
      ``epochs`` of L1 alone.

    A loss with a pre-training phase of its own modules (FT's paraphraser) gets it first, scaled likewise.
    """
    def scaled(default: int) -> int:
        return max(1, round(default * epochs / REFERENCE_KD_EPOCHS)) if default else 0

    phases = [TrainingPhase("paraphraser", scaled(loss.pretrain_epochs_default), pretraining=True)] \
        if loss.pretrain_epochs_default else []
    if schedule == "two-phase":
        return [*phases, TrainingPhase("feature", feature_epochs or epochs, rec_weight=0.0),
                TrainingPhase("finetune", epochs, kd_weight=0.0)]
    if schedule != "joint":
        raise InputError(f"unknown KD schedule {schedule!r}; valid: joint, two-phase")
    feature_only = min(scaled(loss.feature_only_epochs_default), epochs - 1)
    if feature_only > 0:
        phases.append(TrainingPhase("feature", feature_only, rec_weight=0.0))
    return [*phases, TrainingPhase("joint", epochs - feature_only)]


def transfer_student_blocks(branches: CascadeModel, student: CascadeModel) -> list[str]:
    """Copy the SFT student blocks ``S_2..S_N`` (cascades 1..N-1) into ``student``; ``S_1`` keeps its fresh
    initialisation because no branch trains it (Fig. 2). Returns the copied parameter names."""
    source = branches.state_dict()
    copied = {k: v for k, v in source.items() if k.startswith("cascades.") and int(k.split(".")[1]) >= 1}
    student.load_state_dict(copied, strict=False)
    return sorted(copied)


class StageFactory:
    """Builds the objective and phases of a :class:`PlannedStage` whose parents are trained in ``run_dir``."""

    def __init__(self, config: RunConfig, options: ModelOptions, run_dir: Path, device: torch.device,
                 log: Callable[[str], None] = print):
        self.config, self.options, self.run_dir, self.device = config, options, Path(run_dir), device
        self.log = log

    @property
    def scored_size(self) -> tuple[int, int]:
        """The centre region losses see (:attr:`compressor.config.DataConfig.image_size`)."""
        return self.config.data.image_size, self.config.data.image_size

    def new_model(self, arch: str, init: Path | None = None) -> CascadeModel:
        torch.manual_seed(self.config.train.seed)
        model = build_model(arch, self.options)
        return (load_weights(init, model) if init else model).to(self.device)

    def trained(self, stage: PlannedStage, file: str = rundir.BEST_WEIGHTS_FILE,
                arch: str | None = None) -> CascadeModel:
        model = build_model(arch or stage.spec.arch, self.options)
        return load_weights(stage.spec.directory(self.run_dir) / file, model).to(self.device)

    def build(self, stage: PlannedStage, training_slices: int) -> tuple[Objective, list[TrainingPhase]]:
        """The stage's objective and phases. ``training_slices``, the training split's size (at least what one
        process sees), sizes a distillation's teacher-feature cache."""
        if stage.kind == "supervised":
            model = self.new_model(stage.spec.arch, stage.init)
            return Supervised(model, stage.setup.loss, self.scored_size), [TrainingPhase("train", stage.epochs)]
        if stage.kind == "sft_teacher":
            return self._student_friendly_teacher(stage)
        return self._distillation(stage, training_slices)

    def _student_friendly_teacher(self, stage: PlannedStage) -> tuple[Objective, list[TrainingPhase]]:
        sft = self.config.sft
        weights = SFTWeights(sft.teacher_weight, sft.student_weight, sft.imitation_weight, sft.imitation_per_pixel)
        objective = StudentFriendlyTeacher(self.new_model(stage.setup.teacher, stage.init),
                                           self.new_model(stage.student_arch), weights, stage.setup.loss,
                                           self.scored_size)
        return objective, [TrainingPhase("train", stage.epochs)]

    def _distillation(self, stage: PlannedStage, training_slices: int) -> tuple[Objective, list[TrainingPhase]]:
        student = self.new_model(stage.spec.arch)
        if stage.init_from is not None:
            branches = self.trained(stage.init_from, rundir.best_weights_file(rundir.STUDENT_BRANCHES_PART),
                                    arch=stage.spec.arch)
            transfer_student_blocks(branches, student)
        teacher = self.trained(stage.teacher)
        kd = self.config.kd
        loss = build_kd_loss(stage.spec.method, mode=kd.mode, channels=(student.width, teacher.width),
                             n_cascades=teacher.n_cascades)
        phases = kd_phases(loss, kd.schedule, self.config.train.epochs_kd, kd.feature_epochs)
        cache = TeacherFeatureCache(training_slices, self.config.train.teacher_cache_mib * 2**20, self.log)
        return (Distillation(student, teacher, loss.to(self.device), kd_weight(self.config, stage.spec.method),
                             stage.setup.loss, self.scored_size, cache), phases)
