"""Where each file of a run directory lives: the file and folder names, and :class:`RunLayout`, the only place that
joins them into paths (the layout is drawn in the package docstring, :mod:`compressor.rundir`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compressor.masks import acceleration_label

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
BENCHMARK_FILE = "benchmark.json"
BENCHMARK_TABLE_FILE = "benchmark.csv"
LOCK_FILE = ".compress.lock"
STAGES_FOLDER = "stages"
MASKS_FOLDER = "masks"
EXPORTS_FOLDER = "exports"
EXPORTS_FILE = "exports.json"
REPORT_FOLDER = "report"

STAGE_FILE = "stage.json"
HISTORY_FILE = "history.json"
CHECKPOINT_FILE = "checkpoint.pt"
TENSORBOARD_FOLDER = "tensorboard"
"""A stage's TensorBoard event files (``RUN/stages/<stage>/tensorboard/``, :mod:`compressor.training.watch`):
``tensorboard --logdir RUN`` shows each stage as a run named by its folder. Absent with
``train.tensorboard = false``."""
WEIGHTS_SUFFIX = ".safetensors"
BEST_WEIGHTS = "best"
LAST_WEIGHTS = "last"
BEST_WEIGHTS_FILE = BEST_WEIGHTS + WEIGHTS_SUFFIX
LAST_WEIGHTS_FILE = LAST_WEIGHTS + WEIGHTS_SUFFIX
OUTPUT_MODEL_PART = "model"
"""The part name of a stage's output model; its other saved parts (an SFT teacher's student branches, a KD loss's
trained modules) are ``best_<part>.safetensors``."""
STUDENT_BRANCHES_PART = "student_branches"
"""An SFT teacher's student branches (``best_student_branches.safetensors``): what starts an SFT-KD student."""
KD_LOSS_PART = "kd_loss"
"""A KD loss's trained modules, when it has any (``best_kd_loss.safetensors``)."""

COMPLEX_TARGET_KEY = "target_complex"
"""The dataset of a 2-channel stage's ``reconstructions_<split>.h5`` that holds the complex target on the model's grid
(normalised units): what export validation undersamples for 2-channel models."""


def weights_file(weights: str) -> str:
    """``<weights>.safetensors``: :data:`BEST_WEIGHTS` or :data:`LAST_WEIGHTS`."""
    return weights + WEIGHTS_SUFFIX


def best_weights_file(part: str = OUTPUT_MODEL_PART) -> str:
    """The best-validation weights of one saved part of a stage: ``best.safetensors`` for the output model,
    ``best_<part>.safetensors`` for the others."""
    return BEST_WEIGHTS_FILE if part == OUTPUT_MODEL_PART else f"{BEST_WEIGHTS}_{part}{WEIGHTS_SUFFIX}"


def metrics_file(split: str) -> str:
    return f"metrics_{split}.json"


def reconstructions_file(split: str) -> str:
    return f"reconstructions_{split}.h5"


def zero_filled_file(acceleration: float, split: str) -> str:
    return f"zero_filled_{acceleration:g}x_{split}.json"


def mask_file(acceleration: float) -> str:
    """The mask of an acceleration, relative to the run directory."""
    return f"{MASKS_FOLDER}/mask_{acceleration_label(acceleration)}x.npy"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory ``root``; nothing here touches the disk."""

    root: Path

    @classmethod
    def of_stage(cls, stage_dir: Path) -> RunLayout:
        """The run that holds the stage folder ``RUN/stages/<stage>``."""
        return cls(Path(stage_dir).parent.parent)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def benchmark(self) -> Path:
        return self.root / BENCHMARK_FILE

    @property
    def benchmark_table(self) -> Path:
        return self.root / BENCHMARK_TABLE_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def stages(self) -> Path:
        return self.root / STAGES_FOLDER

    @property
    def exports(self) -> Path:
        return self.root / EXPORTS_FOLDER

    @property
    def exports_file(self) -> Path:
        return self.root / EXPORTS_FOLDER / EXPORTS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FOLDER

    def stage(self, folder: str) -> Path:
        """A stage folder, ``RUN/stages/<folder>``."""
        return self.stages / folder

    def mask(self, acceleration: float) -> Path:
        return self.root / mask_file(acceleration)
