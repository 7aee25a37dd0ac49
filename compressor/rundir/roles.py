"""The vocabulary of a run's records: what a model is (:class:`Role`), the training setups and tasks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from compressor.vocabulary import Task


class Role(str, Enum):
    """What a model of a run is; ``label`` is how every table and figure names it."""

    label: str

    def __new__(cls, value: str, label: str) -> Role:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    ZERO_FILLED = "zero_filled", "ZF"
    TEACHER = "teacher", "Teacher"
    STUDENT = "student", "Student"
    STD_KD = "std_kd", "Std-KD"
    SFT_TEACHER = "sft_teacher", "SFT teacher"
    SFT_KD = "sft_kd", "SFT-KD-Recon"
    SFT_KD_RANDOM = "sft_kd_random", "SFT-KD-Recon (random init)"
    SFT_TEACHER_SCRATCH = "sft_teacher_scratch", "SFT teacher (from scratch)"

    def __str__(self) -> str:
        return self.value


ROLES = tuple(role.value for role in Role)
STAGE_ROLES = ("teacher", "student", "std_kd", "sft_teacher", "sft_kd", "sft_kd_random")  # what a stage trains
KD_ROLES = ("std_kd", "sft_kd", "sft_kd_random")
STUDENT_ROLES = ("student", *KD_ROLES)
ROLE_LABELS = {role.value: role.label for role in Role}
SETUPS = ("image", "feature")  # SFT-KD-Recon (DC-CNNs, image domain); the feature-domain SFT ablation (rcnnL)
TASKS = tuple(task.value for task in Task)  # undersampled MRI reconstruction; super-resolution (Appendix B)


def sr_interpolations() -> tuple[str, ...]:
    """How an SR input was brought back to the HR grid (from :mod:`compressor.physics.degradation`)."""
    from compressor.physics.degradation import INTERPOLATIONS

    return tuple(INTERPOLATIONS)


@dataclass(frozen=True)
class Setup:
    """One teacher/student family run through the stage graph.

    Attributes:
        name: ``image`` (SFT-KD-Recon: the configured models, DF after each block) or ``feature`` (the
            feature-domain SFT ablation).
        teacher: teacher architecture.
        students: student architectures, each with its own SFT teacher and KD stages.
        loss: the reconstruction loss of every stage (``l1``; ``mse`` for the feature setup).
    """

    name: str
    teacher: str
    students: tuple[str, ...]
    loss: str = "l1"
