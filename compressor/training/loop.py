"""The one training loop: epochs of an :class:`~compressor.training.objectives.Objective`, validated every
epoch, checkpointed atomically, resumable after a kill at any moment with identical results (CPU, fixed seed).

Determinism: parameters are initialised by the caller under a fixed seed; each epoch's shuffling uses a
generator seeded from ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one.
Checkpoint order per epoch: the TensorBoard events (when watched, :mod:`compressor.training.watch`), ``last``
weights, ``best`` weights (if improved), ``history.json``, then ``checkpoint.pt`` last, as the commit point; an epoch
whose checkpoint was not written is redone (and its events are dropped first).

Several processes (``settings.distributed``, :mod:`compressor.training.distributed`): the trainable modules are
wrapped in DistributedDataParallel (:class:`TrainedModules`; a distillation's frozen teacher stays outside, in eval
mode), each rank trains on its share of the single-process batches of the global batch size, the validation L1 is
summed over ranks (so are the watched metrics), and rank 0 alone writes; every rank reads the same
``checkpoint.pt`` to resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from compressor.data.sample import Sample
from compressor.data.transforms import centre_crop
from compressor.io import save_json
from compressor.rundir import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    LAST_WEIGHTS_FILE,
    OUTPUT_MODEL_PART,
    TrainingCheckpoint,
    best_weights_file,
)
from compressor.training.checkpoint import load_state, save_state, save_weights
from compressor.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    WatchedDdp,
    index_loader,
    rank_batches,
    validation_batches,
)
from compressor.training.objectives import Objective, TrainingPhase, reconstruct
from compressor.training.watch import EpochSummary, StageWatch, Validation, ValidationScores


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int
    lr: float
    lr_step: int | None
    lr_gamma: float
    seed: int
    device: torch.device
    amp: bool = False
    num_workers: int = 0
    progress: bool = True
    distributed: DistributedContext = SINGLE_PROCESS
    scored_size: tuple[int, int] | None = None  # the centre region validation scores; None: the whole grid


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    history: list[dict]
    seconds: float
    resumed_from: int


def to_device(batch: Sample, device: torch.device) -> Sample:
    return Sample(*(f.to(device, non_blocking=True) if torch.is_tensor(f) else f for f in batch))


def make_loader(dataset: Dataset, settings: TrainSettings, shuffle: bool, epoch: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=settings.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=settings.num_workers, drop_last=False)


def autocast(settings: TrainSettings):
    """bfloat16 autocast for the convolutions on CUDA when ``amp`` is on; the DF casts back to float32."""
    if settings.amp and settings.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validate(objective: Objective, dataset: Dataset, settings: TrainSettings,
             scores: ValidationScores | None = None) -> Validation:
    """The output model on the validation split: the mean over slices of its L1 error (the paper's best-weight
    criterion) and, given ``scores``, the means of the watched metrics and the example slice it keeps."""
    model = objective.output_model.eval()
    total, count = 0.0, 0
    for batch in _validation_loader(dataset, settings):
        batch = to_device(batch, settings.device)
        with autocast(settings):
            output = reconstruct(model, batch)
        output, target = output.float(), batch.target
        if scores is not None:
            scores.add(batch, output)
        if settings.scored_size is not None:
            output, target = centre_crop(output, settings.scored_size), centre_crop(target, settings.scored_size)
        per_slice = F.l1_loss(output, target, reduction="none").mean(dim=(1, 2, 3))
        total += per_slice.sum().item()
        count += per_slice.numel()
    if settings.distributed.distributed:  # every rank its share; the sums make every rank's mean the global one
        total, count = settings.distributed.all_reduce_sum([total, count])
    if scores is None:
        return Validation(total / max(count, 1))
    return Validation(total / max(count, 1), scores.means(count, settings.distributed), scores.example)


def _validation_loader(dataset: Dataset, settings: TrainSettings) -> DataLoader:
    context = settings.distributed
    if not context.distributed:
        return make_loader(dataset, settings, shuffle=False)
    return index_loader(dataset, validation_batches(len(dataset), settings.batch_size, context), settings.seed,
                        settings.num_workers)


def _train_batches(dataset: Dataset, settings: TrainSettings, epoch: int):
    """``(batch, weight)`` pairs of an epoch: the single-process loader with weight ``None``, or this rank's share
    of each global batch with its loss weight (:func:`~compressor.training.distributed.rank_batches`)."""
    context = settings.distributed
    if not context.distributed:
        for batch in make_loader(dataset, settings, shuffle=True, epoch=epoch):
            yield batch, None
        return
    shares = rank_batches(len(dataset), settings.batch_size, context, settings.seed, epoch)
    loader = index_loader(dataset, [share.indices for share in shares], settings.seed * 1_000_003 + epoch,
                          settings.num_workers)
    yield from zip(loader, (share.weight for share in shares))


class TrainedModules(nn.Module):
    """The modules an objective trains, as one module for DistributedDataParallel; ``forward(batch)`` is the
    objective's loss (the total; the logged terms are kept in :attr:`logged`). Modules the objective holds
    otherwise (a distillation's frozen teacher) are not part of it and run unwrapped.

    Only the phase's trainable parameters are synchronised (DDP ignores the others: a KD loss's pre-trained
    modules after their phase, the student during that phase). ``find_unused_parameters`` is on when a trainable
    parameter lies outside the output model: the SFT teacher's student branches (``S_1`` is in no branch, eqs.
    3-5) and a KD loss's own modules (cascades it does not select); a model alone (teacher, student) and the
    parameter-free KD losses (AT, SP, CC, ...) use every parameter in every step and keep it off.
    """

    def __init__(self, objective: Objective):
        super().__init__()
        self.objective = objective
        self.parts = nn.ModuleList([objective.output_model, *objective.saved_models().values()])
        self.logged: dict[str, float] = {}

    def forward(self, batch: Sample) -> torch.Tensor:
        terms = self.objective.loss(batch)
        self.logged = terms.logged
        return terms.total

    def wrap(self, context: DistributedContext) -> WatchedDdp:
        trainable = {id(p) for p in self.objective.trainable()}
        ignored = [name for name, p in self.named_parameters() if id(p) not in trainable]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ignored)
        in_output = {id(p) for p in self.objective.output_model.parameters()}
        unused = any(i not in in_output for i in trainable)
        return WatchedDdp(self, context, find_unused_parameters=unused)


def _optimizer(objective: Objective, phase: TrainingPhase, settings: TrainSettings):
    optimizer = torch.optim.Adam(objective.trainable(), lr=settings.lr)
    step = settings.lr_step or 10**9
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=settings.lr_gamma)


def _train_epoch(objective: Objective, wrapped: WatchedDdp | None, optimizer: torch.optim.Optimizer,
                 train_data: Dataset, settings: TrainSettings, epoch: int) -> dict[str, float]:
    """One epoch of optimiser steps; the mean per batch of the loss (``"loss"``) and of each logged term, in that
    order (under several processes, the means of the global batches, summed over ranks)."""
    context = settings.distributed
    objective.train_mode()
    sums: dict[str, float] = {}
    batches = 0
    for batch, weight in _train_batches(train_data, settings, epoch):
        batch = to_device(batch, settings.device)
        if wrapped is None:
            with autocast(settings):
                terms = objective.loss(batch)
            total, logged = terms.total, terms.logged
        else:  # this rank's share of the global batch's mean loss (module docstring of .distributed)
            with autocast(settings):
                total = wrapped.forward(batch) * weight
            logged = {name: value * weight for name, value in wrapped.module.logged.items()}
        optimizer.zero_grad(set_to_none=True)
        if wrapped is None:
            total.backward()
        else:  # DDP's gradient all-reduce: a failed one is a CollectiveError
            wrapped.backward(total)
        optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + total.item()
        for name, value in logged.items():
            sums[name] = sums.get(name, 0.0) + value
        batches += 1
    if context.distributed:  # global-batch means: the sum over ranks of the weighted terms / world
        names = sorted(sums)
        sums = dict(zip(names, (v / context.world_size for v in context.all_reduce_sum([sums[n] for n in names]))))
    return {name: value / batches for name, value in sums.items()}


def _write_epoch(stage_dir: Path, models: dict[str, nn.Module], improved: bool, history: list[dict],
                 checkpoint: TrainingCheckpoint) -> None:
    """An epoch's files in the commit order of the module docstring: ``last`` weights, ``best`` weights of every
    part (if ``improved``), ``history.json``, then ``checkpoint.pt``."""
    save_weights(stage_dir / LAST_WEIGHTS_FILE, models[OUTPUT_MODEL_PART])
    if improved:
        for name, module in models.items():
            save_weights(stage_dir / best_weights_file(name), module)
    save_json(stage_dir / HISTORY_FILE, history)
    save_state(stage_dir / CHECKPOINT_FILE, checkpoint.to_state())


def _resume(stage_dir: Path, models: dict[str, nn.Module]) -> TrainingCheckpoint | None:
    """The stage's resume state, its weights loaded into ``models``; ``None`` when the stage starts afresh."""
    path = stage_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = TrainingCheckpoint.from_state(load_state(path), path)
    for name, module in models.items():
        module.load_state_dict(state.models[name])
    return state


def _epoch(objective: Objective, wrapped: DistributedDataParallel | None, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, data: tuple[Dataset, Dataset], settings: TrainSettings,
           epoch: int, phase: TrainingPhase, scores: ValidationScores | None) -> tuple[dict, EpochSummary]:
    """Epoch ``epoch`` (0-based) trained on ``data`` (train, validation) and validated: its ``history.json`` record
    and what the watch logs of it."""
    tick = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    means = _train_epoch(objective, wrapped, optimizer, data[0], settings, epoch)
    scheduler.step()
    val = validate(objective, data[1], settings, scores)
    record = {"epoch": epoch + 1, "phase": phase.name, "train_loss": means.pop("loss"), "val_loss": val.l1,
              "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - tick, "terms": means}
    return record, EpochSummary(epoch + 1, {"loss": record["train_loss"], **means}, lr, record["seconds"], val)


def train_stage(objective: Objective, phases: Sequence[TrainingPhase], train_data: Dataset, val_data: Dataset,
                settings: TrainSettings, stage_dir: Path, label: str, log: Callable[[str], None] = print,
                watch: StageWatch | None = None) -> TrainResult:
    """Train ``objective`` through ``phases``, writing weights, history and resume state into ``stage_dir``
    (rank 0 only when several processes train; every rank reads the same resume state, and returns once rank 0
    has written the last epoch's files). ``watch``: the stage's TensorBoard events (:mod:`compressor.training.watch`;
    every rank computes the watched metrics, the watch of rank 0 alone has a folder)."""
    context = settings.distributed
    writes = context.is_main
    if writes:
        stage_dir.mkdir(parents=True, exist_ok=True)
    models = {OUTPUT_MODEL_PART: objective.output_model, **objective.saved_models()}
    state = _resume(stage_dir, models)
    history: list[dict] = list(state.history) if state else []
    best_val = state.best_val if state else math.inf
    best_epoch = state.best_epoch if state else -1
    resumed_from = len(history)
    total_epochs = sum(p.epochs for p in phases)
    if state:
        log(f"{label}: resuming after epoch {resumed_from} of {total_epochs}")
    if watch is not None:
        watch.start(resumed_from)
    started = time.perf_counter()
    bar = tqdm(total=total_epochs, initial=resumed_from, desc=label, unit="epoch",
               disable=not (settings.progress and writes), dynamic_ncols=True, leave=True)
    global_epoch = 0
    with watch or nullcontext():
        for phase_index, phase in enumerate(phases):
            phase_start = global_epoch
            global_epoch += phase.epochs
            if global_epoch <= resumed_from:
                continue
            objective.start_phase(phase)
            optimizer, scheduler = _optimizer(objective, phase, settings)
            if state and state.phase == phase_index:
                optimizer.load_state_dict(state.optimizer)
                scheduler.load_state_dict(state.scheduler)
            # One DDP wrapper per phase: its synchronised parameters are the phase's trainable ones.
            wrapped = TrainedModules(objective).wrap(context) if context.distributed else None
            for epoch in range(max(resumed_from, phase_start), global_epoch):
                scores = watch.scores(settings.scored_size, epoch + 1, total_epochs) if watch else None
                record, summary = _epoch(objective, wrapped, optimizer, scheduler, (train_data, val_data), settings,
                                         epoch, phase, scores)
                history.append(record)
                improved = record["val_loss"] < best_val
                if improved:
                    best_val, best_epoch = record["val_loss"], epoch + 1
                bar.set_postfix(loss=f"{record['train_loss']:.4g}", val=f"{record['val_loss']:.4g}", phase=phase.name)
                bar.update(1)
                if writes:
                    if watch is not None:
                        watch.write(summary)
                    _write_epoch(stage_dir, models, improved, history, TrainingCheckpoint(
                        phase=phase_index, history=history, best_val=best_val, best_epoch=best_epoch,
                        models={name: module.state_dict() for name, module in models.items()},
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict()))
    bar.close()
    context.barrier()  # on every rank, the stage's files are now written (rank 0 wrote them)
    return TrainResult(best_epoch, best_val, history, time.perf_counter() - started, resumed_from)
