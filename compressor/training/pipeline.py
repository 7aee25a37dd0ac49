"""Algorithm 1 of the paper and its baselines as a cached stage graph (per acceleration):

1. ``teacher``: the teacher alone (L1).            2. ``student``: the student alone (L1).
3. ``std_kd``: student distilled from (1).         4. ``sft_teacher``: teacher + student branches (eqs. 3-5).
5. ``sft_kd``: student initialised from (4)'s student blocks ``S_2..S_N`` (``S_1`` fresh), distilled from (4).
   ``sft_kd_random``: the same with a random initialisation (Table 5 ablation, ``kd.random_init``).

Stages 1, 2 and 4 are shared by every KD method. Numbers reported come from the best-validation-L1 weights.

The graph runs once per :class:`Setup`: ``image`` (the configured models, the paper) and, with
``sft.feature_ablation``, ``feature`` (Tables 2 and 4: residual CNNs with the same conv counts, MSE losses).
With ``model.init_teacher`` the image setup's teacher and SFT teacher start from those weights, and the SFT teacher
is also trained from scratch as Fig. 7's reference (recorded with role ``sft_teacher_scratch``).

Responsibilities: :func:`~compressor.training.stages.plan_run` says which stages a config has and their keys;
:class:`~compressor.training.factories.StageFactory` builds their models and objectives; this module runs the
plan (reusing complete stages), evaluates each stage and writes every outcome through :mod:`compressor.rundir`.

Several processes (``torchrun``, :mod:`compressor.training.distributed`): every rank runs the plan and trains
each stage's share of its batches; rank 0 alone writes (config, masks, stage records, weights, checkpoints,
TensorBoard events, evaluation files, ``results.json``) and evaluates. All ranks meet at a barrier at each stage
boundary, before they look at the stage folder (so all reach the same reuse/resume decision from the same files) and
after its training (so every rank then loads the stage's best weights as rank 0 wrote them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import compressor
from compressor import rundir
from compressor.config import RunConfig
from compressor.data import DataSplits, build_splits
from compressor.data.sample import Sample
from compressor.data.transforms import centre_crop, scored_image
from compressor.errors import InputError
from compressor.io import atomic_path, load_json, save_json
from compressor.kd import weight_balance
from compressor.models import CascadeModel
from compressor.physics import channels_to_pair
from compressor.process import keep_freed_memory
from compressor.rundir import MaskRecord, ModelResult, Role, RunRecord, Setup, StageRecord
from compressor.training.distributed import SINGLE_PROCESS, DistributedContext
from compressor.training.factories import REFERENCE_KD_EPOCHS, StageFactory, kd_phases, transfer_student_blocks
from compressor.training.loop import TrainSettings, make_loader, to_device, train_stage
from compressor.training.objectives import reconstruct
from compressor.training.stages import (
    PAPER_METHODS,
    PlannedStage,
    StageSpec,
    conv_layers,
    model_options,
    plan_run,
    resolve_methods,
)
from compressor.training.watch import Scorer, StageWatch

__all__ = ["PAPER_METHODS", "REFERENCE_KD_EPOCHS", "Pipeline", "PipelineResult", "Setup", "StageOutcome",
           "conv_layers", "kd_phases", "resolve_device", "resolve_methods", "transfer_student_blocks"]


@dataclass
class StageOutcome:
    """A stage trained or reused, with its ``stage.json`` record. ``record_role`` is the role ``results.json``
    gives it when that differs from the stage's own (``sft_teacher_scratch``)."""

    spec: StageSpec
    directory: Path
    reused: bool
    record: StageRecord
    record_role: Role | None = None
    setup: str = "image"


@dataclass
class PipelineResult:
    run_dir: Path
    results_file: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0


def configure_cpu(device: torch.device, threads: int | None) -> None:
    """``train.threads`` intra-op threads when set, and, when training on the CPU, glibc told to keep freed
    activations (:func:`~compressor.process.keep_freed_memory`: faster steps, the same values)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but PyTorch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


class Pipeline:
    """Runs the stage graph for one :class:`RunConfig` into ``run_dir``.

    Construction plans every stage (checking names, masks and warm-start weights) without reading data;
    :meth:`run` holds the run directory's lock (:func:`compressor.rundir.run_lock`) while it trains and writes.
    ``distributed``: this process's place in a multi-process run (rank 0 alone logs, writes and holds the lock).
    """

    def __init__(self, config: RunConfig, run_dir: Path, score: Scorer, log: Callable[[str], None] = print,
                 progress: bool = True, distributed: DistributedContext = SINGLE_PROCESS):
        self.config = config
        self.run_dir = Path(run_dir)
        self.score = score
        self.dist = distributed
        self.writes = distributed.is_main
        self.log = log if self.writes else _quiet
        self.device = distributed.device if distributed.distributed else resolve_device(config.train.device)
        configure_cpu(self.device, config.train.threads)
        self.plan = plan_run(config, world_size=distributed.world_size)
        self.methods = self.plan.methods
        self.setups = self.plan.setups
        self.factory = StageFactory(config, model_options(config), self.run_dir, self.device, self.log)
        t = config.train
        self.settings = TrainSettings(batch_size=t.batch_size, lr=t.lr, lr_step=t.lr_step, lr_gamma=t.lr_gamma,
                                      seed=t.seed, device=self.device, amp=t.amp, num_workers=t.num_workers,
                                      progress=progress, distributed=distributed,
                                      scored_size=(config.data.image_size, config.data.image_size))
        self.outcomes: list[StageOutcome] = []

    # -- the graph ----------------------------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        """Train (or reuse) every planned stage and write ``results.json``, holding the run directory's lock."""
        if not self.writes:
            return self._run()
        with rundir.run_lock(self.run_dir):
            return self._run()

    def _run(self) -> PipelineResult:
        started = time.perf_counter()
        earlier = self._earlier_run()
        records: list[ModelResult] = []
        masks: dict[str, MaskRecord] = {}
        coil_compression: rundir.CoilCompressionRecord | None = None
        data = self.config.data
        if self.dist.distributed:
            self.log(self.dist.describe(self.settings.batch_size, self.settings.lr))
        for acceleration in data.acceleration:
            with self.dist.main_first():  # rank 0 fills a data cache (embedded MNI) before the others read it
                splits = build_splits(data, acceleration, log=self.log,
                                      image_channels=self.config.model.image_channels)
            if splits.mask.digest() != self.plan.masks[acceleration].digest():
                raise RuntimeError("the data's mask is not the planned one (build_splits and build_mask disagree)")
            if not self.writes:
                mask = MaskRecord(rundir.mask_file(acceleration), splits.mask.digest())
                for stage in self.plan.stages[acceleration]:
                    self._stage(stage, splits, mask)
                continue
            # Written once the data is known to be readable, so a bad file leaves no run directory behind.
            rundir.write_config(self.run_dir, self.config)
            mask = rundir.save_mask(self.run_dir, acceleration, splits.mask.values, splits.mask.digest())
            masks[rundir.acceleration_label(acceleration)] = mask
            sampled = "" if data.task == "sr" else f"; {splits.mask.sampled_fraction:.1%} of k-space sampled"
            self.log(f"data: {splits.description}{sampled}")
            if coil_compression is None:
                coil_compression = self._coil_compression(splits)
            for split, file in self._zero_filled_metrics(splits, acceleration).items():
                records.append(self._result(None, acceleration, split, file))
            for stage in self.plan.stages[acceleration]:
                outcome = self._stage(stage, splits, mask)
                records += [self._result(outcome, acceleration, split,
                                         outcome.directory / rundir.metrics_file(split))
                            for split in _eval_splits(splits)]
        new = RunRecord(teacher=self.config.model.teacher, task=data.task, split="validation",
                        sr_interpolation=data.sr_interpolation if data.task == "sr" else None,
                        models=tuple(records), masks=masks, tool_version=compressor.__version__,
                        config=self.config.to_dict(),
                        distributed=self.dist.record(self.settings.batch_size, self.settings.lr),
                        coil_compression=coil_compression)
        if not self.writes:
            return PipelineResult(self.run_dir, self.run_dir / rundir.RESULTS_FILE, self.outcomes,
                                  time.perf_counter() - started)
        merged, note = rundir.merge_results(*earlier, new, self.config.to_dict())
        if note:
            self.log(note)
        results_file = rundir.write_results(self.run_dir, merged)
        return PipelineResult(self.run_dir, results_file, self.outcomes, time.perf_counter() - started)

    def _earlier_run(self) -> tuple[RunRecord | None, dict[str, Any] | None]:
        """The directory's ``results.json`` from before this run and the config that wrote it (format 1: the
        ``config.json`` beside it), when it has them."""
        if not (self.run_dir / rundir.RESULTS_FILE).is_file():
            return None, None
        earlier = rundir.read_results(self.run_dir)
        config_path = self.run_dir / rundir.CONFIG_FILE
        if earlier.config is not None or not config_path.is_file():
            return earlier, earlier.config
        return earlier, load_json(config_path)

    # -- one stage ----------------------------------------------------------------------------------------------
    def _stage(self, stage: PlannedStage, splits: DataSplits, mask: MaskRecord) -> StageOutcome:
        spec, directory = stage.spec, stage.spec.directory(self.run_dir)
        self.dist.barrier()  # the stage boundary: rank 0 has finished writing the previous stage
        record = rundir.read_stage_if_complete(directory)
        reused = record is not None
        if reused:
            self.log(f"reusing {spec.name} from {directory.relative_to(self.run_dir)}")
            if self.dist.distributed:  # every rank can read the weights (a shared file system)
                self.factory.trained(stage)
        else:
            record = self._train(stage, directory, splits, mask)
        outcome = StageOutcome(spec, directory, reused, record, stage.record_role, stage.setup.name)
        self.outcomes.append(outcome)
        return outcome

    def _train(self, stage: PlannedStage, directory: Path, splits: DataSplits, mask: MaskRecord) -> StageRecord:
        spec, setup = stage.spec, stage.setup
        objective, phases = self.factory.build(stage, len(splits.train))
        record = StageRecord(
            stage=directory.name, name=spec.name, role=Role(spec.role), arch=spec.arch,
            acceleration=spec.acceleration, key=spec.key, method=spec.method, parents=spec.parents,
            config=spec.determinants, model_options=self.factory.options.to_dict(), mask_digest=mask.digest,
            mask_file=mask.file, image_size=splits.mask.shape, parameters=objective.output_model.num_parameters(),
            phases=tuple(asdict(phase) for phase in phases), setup=setup.name, loss=setup.loss,
            student_arch=stage.student_arch, init_teacher=str(stage.init) if stage.init else None,
            tool_version=compressor.__version__)
        if self.writes:
            rundir.write_stage(directory, record)
        watch = None
        if self.config.train.tensorboard:  # rank 0's watch writes; the others compute their share of its metrics
            folder = directory / rundir.TENSORBOARD_FOLDER if self.writes else None
            identity = {"stage": directory.name, "name": spec.name, "key": spec.key, **asdict(spec),
                        "parameters": record.parameters}
            watch = StageWatch(folder, self.score, identity, objective.kd_term)
        result = train_stage(objective, phases, splits.train, splits.validation, self.settings, directory,
                             label=spec.name, log=self.log, watch=watch)
        del objective  # with it a distillation's teacher-feature cache (up to train.teacher_cache_mib) goes
        kd_ratio = next((value for h in result.history for term, value in h["terms"].items()
                         if term.startswith("kd_to_")), None)
        if kd_ratio is not None:
            self.log(f"{spec.name}: weighted KD / {setup.loss.upper()} in the first distillation epoch = "
                     f"{kd_ratio:.3g} ({weight_balance(kd_ratio)})")
        trained_epochs = len(result.history) - result.resumed_from
        record = replace(record, best_epoch=result.best_epoch, best_val_loss=result.best_val_loss,
                         train_seconds=result.seconds,
                         slices_per_second=len(splits.train) * trained_epochs / max(result.seconds, 1e-9)
                         if trained_epochs > 0 else None)
        model = self.factory.trained(stage)  # every rank: train_stage returns once rank 0 has written them
        record = replace(record, complete=True)
        if not self.writes:
            return record
        for split_name, dataset in _eval_splits(splits).items():
            self.evaluate(model, dataset, directory, split_name)
        rundir.write_stage(directory, record)
        return record

    # -- evaluation outputs -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: CascadeModel, dataset: Any, directory: Path, split: str) -> dict[str, list]:
        """Reconstruct ``split`` with ``model``; write ``reconstructions_<split>.h5`` and ``metrics_<split>.json``."""
        model.eval()
        batches = [to_device(b, self.device) for b in make_loader(dataset, self.settings, shuffle=False)]
        size = self.settings.scored_size
        arrays = {
            "reconstruction": np.concatenate([scored_image(reconstruct(model, b).float(), size).cpu().numpy()
                                              for b in batches]),
            **_reference_arrays(batches, size),
        }
        volumes, slices = _slice_ids(batches)
        with atomic_path(directory / rundir.reconstructions_file(split)) as tmp, h5py.File(tmp, "w") as f:
            for name, values in arrays.items():
                f.create_dataset(name, data=values.astype(np.float32))
            if batches[0].target.shape[1] == 2:  # the complex data, on the model's grid, for export validation
                targets = [channels_to_pair(b.target.float())[:, 0].contiguous() for b in batches]
                f.create_dataset(rundir.COMPLEX_TARGET_KEY,
                                 data=np.concatenate([torch.view_as_complex(t).cpu().numpy() for t in targets]))
            f.create_dataset("volume", data=np.array(volumes, dtype="S"))
            f.create_dataset("slice_index", data=np.array(slices, dtype=np.int64))
        return self._save_metrics(directory / rundir.metrics_file(split), split, arrays["reconstruction"],
                                  arrays["target"], volumes, slices)

    def _save_metrics(self, path: Path, split: str, reconstruction: np.ndarray, target: np.ndarray,
                      volumes: list[str], slices: list[int]) -> dict[str, list]:
        scores = self.score(reconstruction, target)
        metrics = {"split": split, "volume": volumes, "slice_index": slices,
                   **{k: [float(x) for x in v] for k, v in scores.items()}}
        save_json(path, metrics)
        return metrics

    def _coil_compression(self, splits: DataSplits) -> rundir.CoilCompressionRecord | None:
        """Score the virtual coil against the root-sum-of-squares image on the validation slices (multi-coil data
        only), and say what it costs before any model runs."""
        references = splits.validation.coil_references()
        if references is None:
            return None
        size = self.settings.scored_size
        virtual, rss = (centre_crop(images, size) for images in references)
        scores = self.score(virtual, rss)
        summaries = {name: rundir.MetricSummary(float(np.mean(values)), float(np.std(values)))
                     for name, values in scores.items()}
        record = rundir.CoilCompressionRecord("validation", len(rss), summaries)
        self.log(f"coil compression (SVD, one virtual coil per slice) against the root-sum-of-squares image, "
                 f"{len(rss)} validation slices: " + ", ".join(
                     f"{name} {summary.mean:.4g}" for name, summary in record.metrics.items()))
        return record

    def _zero_filled_metrics(self, splits: DataSplits, acceleration: float) -> dict[str, Path]:
        """Score the zero-filled images of each evaluation split (the ZF row); computed once per acceleration."""
        files = {}
        for split, dataset in _eval_splits(splits).items():
            path = self.run_dir / rundir.zero_filled_file(acceleration, split)
            if not path.is_file():
                batches = list(make_loader(dataset, self.settings, shuffle=False))
                arrays = _reference_arrays(batches, self.settings.scored_size)
                self._save_metrics(path, split, arrays["zero_filled"], arrays["target"], *_slice_ids(batches))
            files[split] = path
        return files

    def _result(self, outcome: StageOutcome | None, acceleration: float, split: str,
                metrics_path: Path) -> ModelResult:
        """The ``results.json`` record of a stage outcome (``None``: the zero-filled images) on ``split``."""
        metrics = load_json(metrics_path)
        summary = {name: rundir.MetricSummary(float(np.mean(metrics[name])), float(np.std(metrics[name])))
                   for name in metrics if name not in ("split", "volume", "slice_index")}
        relative = str(metrics_path.relative_to(self.run_dir))
        if outcome is None:
            return ModelResult(name=f"zero_filled@{acceleration:g}x", role=Role.ZERO_FILLED,
                               acceleration=acceleration, split=split, parameters=0, metrics=summary,
                               metrics_file=relative)
        spec, stage = outcome.spec, outcome.record
        role = outcome.record_role or Role(spec.role)
        # An SFT teacher is trained for one student architecture: its name says which (``d5c5+d3c5``).
        model = f"{spec.arch}+{stage.student_arch}" if stage.student_arch else spec.arch
        teacher_parameters = self.plan.teacher_parameters[outcome.setup]
        return ModelResult(
            name=f"{role.value}{'/' + spec.method if spec.method else ''}/{model}@{acceleration:g}x", role=role,
            arch=spec.arch, method=spec.method, acceleration=acceleration, split=split,
            parameters=stage.parameters, compression=1 - (stage.parameters or 0) / teacher_parameters,
            metrics=summary, stage_dir=str(outcome.directory.relative_to(self.run_dir)), metrics_file=relative,
            reconstructions_file=str((outcome.directory / rundir.reconstructions_file(split))
                                     .relative_to(self.run_dir)),
            student_arch=stage.student_arch, setup=outcome.setup, init_teacher=stage.init_teacher,
            best_epoch=stage.best_epoch, train_seconds=stage.train_seconds)


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the run."""


def _eval_splits(splits: DataSplits) -> dict[str, Any]:
    return {"validation": splits.validation, **({"test": splits.test} if splits.test is not None else {})}


def _reference_arrays(batches: list[Sample], size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Target, zero-filled image (the scored region, :func:`~compressor.data.transforms.scored_image`) and scale of
    a list of batches, as ``(S, H', W')`` / ``(S,)`` arrays."""
    return {"target": np.concatenate([scored_image(b.target, size).cpu().numpy() for b in batches]),
            "zero_filled": np.concatenate([scored_image(b.zero_filled, size).cpu().numpy() for b in batches]),
            "scale": np.concatenate([b.scale.cpu().numpy().reshape(-1) for b in batches])}



def _slice_ids(batches: list[Sample]) -> tuple[list[str], list[int]]:
    return [v for b in batches for v in b.volume], [int(i) for b in batches for i in b.slice_index]
