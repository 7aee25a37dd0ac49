"""Training you can watch: a stage's TensorBoard event files, written while it trains.

Each stage writes into its own folder, ``RUN/stages/<stage>/tensorboard/``
(:data:`compressor.rundir.TENSORBOARD_FOLDER`), so ``tensorboard --logdir RUN`` shows every stage of a run as a run
named by its folder. One step per epoch, the epoch's number (1-based, ``history.json``'s ``epoch``); the events of an
epoch are flushed when it ends:

- scalars ``train/loss`` (the total) and ``train/<term>`` for each term the objective logs (``train/l1``; an SFT
  teacher's ``train/teacher_rec``, ``train/student_rec``, ``train/imitation``; a distillation's ``train/kd_to_l1``),
  the distillation term itself as ``train/kd`` (:attr:`~compressor.training.objectives.Objective.kd_term`): the
  per-batch means of ``history.json``'s ``train_loss`` and ``terms``. ``validation/l1``: ``history.json``'s
  ``val_loss``. ``validation/psnr`` and ``validation/ssim``: the means over the validation slices of the metrics of
  the scored image (:func:`~compressor.data.transforms.scored_image`; data range the target slice's max, the
  standard 2-D SSIM), computed by the injected :class:`Scorer` as ``metrics_validation.json`` is. ``lr``: the
  learning rate the epoch's steps used (``history.json``'s ``lr`` is the one after the epoch's scheduler step).
  ``epoch_seconds``: ``history.json``'s ``seconds``. Event files hold the values as float32.
- the image :data:`IMAGE_TAG` every :data:`IMAGE_EVERY_EPOCHS` epochs and at the stage's last: the first validation
  slice as zero-filled | reconstruction | target | error magnitude (:meth:`ValidationSlice.panel`);
- with epoch 1, the stage's identity and determinants (its name, folder, key, role, architecture, method,
  acceleration, parents, the fields of its key, parameters): as hyperparameters (the HParams plugin; nested keys
  joined by ``.``) and as the JSON text :data:`TEXT_TAG`.

Each epoch once across resumes: an epoch's events are written before its checkpoint (the loop's commit point), and a
stage that starts or resumes first drops from its folder every event of an epoch after its checkpoint's
(:func:`drop_events_after`: an epoch a killed run logged but did not commit, which is trained and logged again).
Rank 0 alone writes; every rank computes its share of the metrics (:class:`ValidationScores`). Nothing here
changes what trains: no stage key, weight or ``history.json`` value depends on the watch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from compressor.data.sample import Sample
from compressor.data.transforms import scored_image
from compressor.errors import InputError
from compressor.io import atomic_path
from compressor.training.distributed import DistributedContext

WATCHED_METRICS = ("psnr", "ssim")
"""The metrics of every epoch's validation, by their scorer names (:data:`compressor.evaluate.metrics.METRICS`)."""
IMAGE_EVERY_EPOCHS = 5
IMAGE_TAG = "validation/reconstruction"
TEXT_TAG = "stage"
EVENT_FILE_PATTERN = "events.out.tfevents.*"


class Scorer(Protocol):
    """Per-slice metrics of the given names (default: every metric the scorer has), ``(reconstruction (S, H, W),
    target (S, H, W), same dtype) -> {name: (S,)}``, data range the target slice's max:
    :func:`compressor.evaluate.metrics.slice_metrics`, injected by the CLI. Raises :class:`InputError` where a
    metric is undefined (a non-finite image, an all-zero target slice)."""

    def __call__(self, reconstruction: np.ndarray, target: np.ndarray,
                 names: Sequence[str] = ...) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class ValidationSlice:
    """One validation slice's scored images, ``(H', W')`` each, normalised units."""

    zero_filled: np.ndarray
    reconstruction: np.ndarray
    target: np.ndarray

    def panel(self) -> np.ndarray:
        """Zero-filled | reconstruction | target | ``|reconstruction − target|`` side by side, ``(H', 4·W')``
        float32: each divided by the target's max (1 if that is not positive), clipped to [0, 1], NaN as 0."""
        peak = float(self.target.max())
        images = (self.zero_filled, self.reconstruction, self.target, np.abs(self.reconstruction - self.target))
        panel = np.concatenate(images, axis=-1) / (peak if peak > 0 else 1.0)
        return np.clip(np.nan_to_num(panel), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Validation:
    """An epoch's validation of the output model: the mean over slices of its L1 error (the best-weight
    criterion), the means over slices of the watched metrics (empty when not watched), and the example slice
    (when asked for)."""

    l1: float
    metrics: dict[str, float] = field(default_factory=dict)
    example: ValidationSlice | None = None


@dataclass(frozen=True)
class EpochSummary:
    """What an epoch logs: its number (1-based), the per-batch means of the loss (``"loss"``) and of each term the
    objective logs, the learning rate its steps used, its seconds and its validation."""

    epoch: int
    terms: dict[str, float]
    lr: float
    seconds: float
    validation: Validation


class ValidationScores:
    """The watched metrics of one validation pass, collected batch by batch from this rank's slices, and the
    first slice when ``keep_example``."""

    def __init__(self, score: Scorer, scored_size: tuple[int, int] | None, keep_example: bool):
        self.score = score
        self.scored_size = scored_size
        self.keep_example = keep_example
        self.outputs: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.example: ValidationSlice | None = None

    def add(self, batch: Sample, output: torch.Tensor) -> None:
        """A batch and the model's output for it, ``(B, C, H, W)``."""
        reconstruction = scored_image(output.float(), self.scored_size).cpu().numpy()
        target = scored_image(batch.target.float(), self.scored_size).cpu().numpy()
        self.outputs.append(reconstruction)
        self.targets.append(target)
        if self.keep_example and self.example is None:
            zero_filled = scored_image(batch.zero_filled[:1].float(), self.scored_size).cpu().numpy()
            self.example = ValidationSlice(zero_filled[0], reconstruction[0], target[0])

    def means(self, slices: float, context: DistributedContext) -> dict[str, float]:
        """Each watched metric's mean over the split's ``slices`` slices (the sums are reduced over ``context``'s
        ranks); NaN where it is undefined on some slice, so a diverging stage trains on as it would unwatched."""
        sums = self._sums()
        totals = context.all_reduce_sum([sums[name] for name in WATCHED_METRICS])
        return {name: total / max(slices, 1) for name, total in zip(WATCHED_METRICS, totals)}

    def _sums(self) -> dict[str, float]:
        if not self.outputs:  # this rank's share of the split is empty
            return dict.fromkeys(WATCHED_METRICS, 0.0)
        try:
            scores = self.score(np.concatenate(self.outputs), np.concatenate(self.targets), names=WATCHED_METRICS)
        except InputError:
            return dict.fromkeys(WATCHED_METRICS, math.nan)
        return {name: float(np.sum(scores[name])) for name in WATCHED_METRICS}


class StageWatch:
    """A stage's TensorBoard events (module docstring); a context manager that closes its writer.

    Args:
        folder: where rank 0 writes them (``RUN/stages/<stage>/tensorboard``); ``None`` on the other ranks, which
            compute their share of the metrics and write nothing.
        score: the per-slice metrics (:class:`Scorer`).
        stage: the stage's identity and determinants, a JSON object (module docstring).
        kd_term: the objective's distillation term, logged as ``train/kd``.
    """

    def __init__(self, folder: Path | None, score: Scorer, stage: dict[str, Any], kd_term: str | None = None):
        self.folder = folder
        self.score = score
        self.stage = stage
        self.kd_term = kd_term
        self._writer: SummaryWriter | None = None

    def __enter__(self) -> StageWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, resumed_from: int) -> None:
        """Before the first epoch this run trains: drop the events of every epoch after ``resumed_from``."""
        if self.folder is not None and self.folder.is_dir():
            drop_events_after(self.folder, resumed_from)

    def scores(self, scored_size: tuple[int, int] | None, epoch: int, last_epoch: int) -> ValidationScores:
        """The collector of epoch ``epoch``'s validation metrics (1-based); it keeps the example slice where this
        rank writes an image: every :data:`IMAGE_EVERY_EPOCHS` epochs and at ``last_epoch``."""
        image = self.folder is not None and (epoch % IMAGE_EVERY_EPOCHS == 0 or epoch == last_epoch)
        return ValidationScores(self.score, scored_size, image)

    def write(self, summary: EpochSummary) -> None:
        """Log an epoch and flush (nothing without a folder). The writer, and its file, start at the first write."""
        if self.folder is None:
            return
        if self._writer is None:
            self._writer = SummaryWriter(str(self.folder))
        writer = self._writer
        if summary.epoch == 1:
            self._write_stage(writer)
        for tag, value in self.scalars(summary).items():
            writer.add_scalar(tag, value, summary.epoch)
        if summary.validation.example is not None:
            writer.add_image(IMAGE_TAG, summary.validation.example.panel(), summary.epoch, dataformats="HW")
        writer.flush()

    def scalars(self, summary: EpochSummary) -> dict[str, float]:
        """Tag → value of an epoch's scalars (module docstring)."""
        train = {f"train/{'kd' if name == self.kd_term else name}": value for name, value in summary.terms.items()}
        validation = {f"validation/{name}": value for name, value in summary.validation.metrics.items()}
        return {**train, "validation/l1": summary.validation.l1, **validation, "lr": summary.lr,
                "epoch_seconds": summary.seconds}

    def _write_stage(self, writer: SummaryWriter) -> None:
        """The stage's record as hyperparameters and as text, at step 1 (dropped with epoch 1's events)."""
        metrics = dict.fromkeys(["validation/l1", *(f"validation/{name}" for name in WATCHED_METRICS)], 0.0)
        for summary in hparams(flat_hparams(self.stage), metrics):
            writer.file_writer.add_summary(summary, 1)
        text = json.dumps(self.stage, indent=2, sort_keys=True, default=str)
        writer.add_text(TEXT_TAG, "\n".join("    " + line for line in text.splitlines()), 1)  # a Markdown code block

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A JSON object as hyperparameters: nested objects' keys joined by ``.``; numbers, booleans and strings kept,
    every other value (a list, ``null``, an empty object) as its JSON text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def drop_events_after(folder: Path, epoch: int) -> None:
    """Remove from the event files in ``folder`` every event of a step after ``epoch``. A file left with no event
    of a step (its header alone) is deleted; another is rewritten atomically, its other records unchanged."""
    for path in sorted(folder.glob(EVENT_FILE_PATTERN)):
        records = list(RawEventFileLoader(str(path)).Load())
        steps = [Event.FromString(record).step for record in records]
        if max(steps, default=0) <= epoch:
            continue
        if not any(0 < step <= epoch for step in steps):
            path.unlink()
            continue
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            writer = RecordWriter(stream)
            for record, step in zip(records, steps):
                if step <= epoch:
                    writer.write(record)
