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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from torch import nn

import compressor
from compressor.config import RunConfig
from compressor.data import DataSplits, build_splits
from compressor.data.sample import Sample
from compressor.errors import InputError
from compressor.io import atomic_path, file_digest, load_json, save_json
from compressor.kd import KD_LOSSES, DistillationLoss, build_kd_loss, weight_balance
from compressor.models import CascadeModel, ModelOptions, build_model
from compressor.training.checkpoint import load_weights
from compressor.training.loop import TrainSettings, make_loader, to_device, train_stage
from compressor.training.objectives import (
    Distillation,
    Objective,
    Phase,
    SFTWeights,
    StudentFriendlyTeacher,
    Supervised,
    reconstruct,
)
from compressor.training.stages import StageSpec

Scorer = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
"""Per-slice metrics ``(reconstruction (S,H,W), target (S,H,W)) -> {name: (S,)}``, injected by the CLI."""


@dataclass
class StageOutcome:
    """A stage trained or reused. ``record_role`` is the role ``results.json`` gives it when that differs from the
    stage's own (the from-scratch reference SFT teacher of a warm-started run: ``sft_teacher_scratch``)."""

    spec: StageSpec
    directory: Path
    reused: bool
    info: dict[str, Any]
    record_role: str | None = None
    setup: str = "image"


@dataclass
class PipelineResult:
    run_dir: Path
    results_file: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but PyTorch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


PAPER_METHODS = {"reconstruction": ["at", "fitnets", "sp", "fsp", "cc"],  # Table 1
                 "sr": ["at", "fitnets", "cc", "pkt", "ft", "nst"]}  # Table 9


def resolve_methods(names: list[str], task: str = "reconstruction") -> list[str]:
    """KD method names, checked against the registry; ``all`` is the task's table of the paper."""
    if any(n.lower() == "all" for n in names):
        return list(PAPER_METHODS[task])
    for name in names:
        KD_LOSSES.get(name)
    return [n.lower() for n in names]


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


def conv_layers(model: nn.Module) -> int:
    """The number of 2-D convolutions in ``model`` (d5c5: 25, d3c5: 15)."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def feature_domain_setup(teacher: CascadeModel, students: list[CascadeModel]) -> Setup:
    """The ablation of Tables 2 and 4: ``rcnnL`` networks with as many convs as the image-domain models."""
    return Setup("feature", f"rcnn{conv_layers(teacher)}", tuple(f"rcnn{conv_layers(s)}" for s in students), "mse")


class WarmStart(NamedTuple):
    """The weights that start the teacher and SFT teacher, and their digest (part of those stages' keys)."""

    path: Path
    digest: str


def resolve_init_weights(location: str) -> Path:
    """A ``.safetensors`` file, or a stage directory holding ``best.safetensors``."""
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise InputError("no such weights file (give a .safetensors file or a stage directory of another run)", path)
    return path


class Pipeline:
    """Runs the stage graph for one :class:`RunConfig` into ``run_dir``."""

    def __init__(self, config: RunConfig, run_dir: Path, score: Scorer, log: Callable[[str], None] = print,
                 progress: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.score = score
        self.log = log
        self.device = resolve_device(config.train.device)
        self.methods = resolve_methods(config.kd.method, config.data.task)
        self.model_options = ModelOptions(block_form=config.model.block_form, block_padding=config.model.block_padding,
                                          dc_lambda=config.model.dc_lambda, dc_learnable=config.model.dc_learnable)
        # Building each model once checks every name before any training; the teachers' sizes give compressions.
        image = Setup("image", config.model.teacher, tuple(config.model.student))
        built = {arch: build_model(arch, self.model_options) for arch in (image.teacher, *image.students)}
        self.setups = [image]
        if config.sft.feature_ablation:
            feature = feature_domain_setup(built[image.teacher], [built[arch] for arch in image.students])
            built |= {arch: build_model(arch, self.model_options) for arch in (feature.teacher, *feature.students)}
            self.setups.append(feature)
        self.teacher_parameters = {setup.name: built[setup.teacher].num_parameters() for setup in self.setups}
        self.warm_start = self._check_init_teacher(built[image.teacher])
        t = config.train
        self.settings = TrainSettings(batch_size=t.batch_size, lr=t.lr, lr_step=t.lr_step, lr_gamma=t.lr_gamma,
                                      seed=t.seed, device=self.device, amp=t.amp, num_workers=t.num_workers,
                                      progress=progress)
        self.outcomes: list[StageOutcome] = []

    def _check_init_teacher(self, teacher: CascadeModel) -> WarmStart | None:
        """The warm-start weights, checked to fit the teacher now rather than after the first stages."""
        if self.config.model.init_teacher is None:
            return None
        path = resolve_init_weights(self.config.model.init_teacher)
        load_weights(path, teacher)
        return WarmStart(path, file_digest(path))

    # -- stage identity -------------------------------------------------------------------------------------
    def _determinants(self, splits: DataSplits, epochs: int, **extra: Any) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self.config.data).items() if k not in ("acceleration", "cache_dir")}
        if data["task"] == "reconstruction":
            # Only the SR task reads these; leaving them out keeps the keys of reconstruction stages cached before
            # the task existed. (The SR scale, which the all-zero mask's digest does not show, is in ``extra``.)
            del data["task"], data["sr_interpolation"]
        t = self.config.train
        return {"data": data, "mask": splits.mask.digest(), "model_options": self.model_options.to_dict(),
                "epochs": epochs, "batch_size": t.batch_size, "lr": t.lr, "lr_step": t.lr_step,
                "lr_gamma": t.lr_gamma, "seed": t.seed, "amp": t.amp, **extra}

    # -- building blocks --------------------------------------------------------------------------------------
    def _trained(self, outcome: StageOutcome, file: str = "best.safetensors", arch: str | None = None) -> CascadeModel:
        model = build_model(arch or outcome.spec.arch, self.model_options)
        return load_weights(outcome.directory / file, model).to(self.device)

    def _kd_weight(self, method: str) -> float:
        """``kd.weight`` if set, else the method's documented default for the configured mode."""
        kd = self.config.kd
        return kd.weight if kd.weight is not None else KD_LOSSES.get(method).default_weight_for(kd.mode)

    def _kd_phases(self, method: str, student: CascadeModel,
                   teacher: CascadeModel) -> tuple[list[Phase], float, DistillationLoss]:
        """The distillation loss (sized for the two models' paired activations), its weight and the phases of its
        stage (see :func:`kd_phases`)."""
        kd = self.config.kd
        loss = build_kd_loss(method, mode=kd.mode, channels=(student.channels, teacher.channels),
                             n_cascades=teacher.n_cascades)
        phases = kd_phases(loss, kd.schedule, self.config.train.epochs_kd, kd.feature_epochs)
        return phases, self._kd_weight(method), loss.to(self.device)

    # -- running one stage ------------------------------------------------------------------------------------
    def _run(self, spec: StageSpec, splits: DataSplits, build: Callable[[], tuple[Objective, list[Phase]]],
             setup: Setup, extra_info: dict[str, Any] | None = None, record_role: str | None = None) -> StageOutcome:
        directory = spec.directory(self.run_dir)
        info_path = directory / "stage.json"
        if info_path.is_file():
            info = load_json(info_path)
            if info.get("complete"):
                self.log(f"reusing {spec.name} from {directory.relative_to(self.run_dir)}")
                outcome = StageOutcome(spec, directory, True, info, record_role, setup.name)
                self.outcomes.append(outcome)
                return outcome
        objective, phases = build()
        info = {"stage": directory.name, "role": spec.role, "arch": spec.arch, "method": spec.method,
                "acceleration": spec.acceleration, "key": spec.key, "name": spec.name, "parents": spec.parents,
                "config": spec.determinants, "model_options": self.model_options.to_dict(),
                "mask_digest": splits.mask.digest(), "image_size": list(splits.mask.shape),
                "parameters": objective.output_model.num_parameters(), "complete": False,
                "phases": [asdict(p) for p in phases], "setup": setup.name, "loss": setup.loss,
                "tool_version": compressor.__version__, **(extra_info or {})}
        save_json(info_path, info)
        result = train_stage(objective, phases, splits.train, splits.validation, self.settings, directory,
                             label=spec.name, log=self.log)
        kd_ratio = next((value for h in result.history for term, value in h["terms"].items()
                         if term.startswith("kd_to_")), None)
        if kd_ratio is not None:
            self.log(f"{spec.name}: weighted KD / {setup.loss.upper()} in the first distillation epoch = "
                     f"{kd_ratio:.3g} ({weight_balance(kd_ratio)})")
        model = self._trained(StageOutcome(spec, directory, False, info))
        info.update(best_epoch=result.best_epoch, best_val_loss=result.best_val_loss, train_seconds=result.seconds,
                    slices_per_second=len(splits.train) * len(result.history[result.resumed_from:])
                    / max(result.seconds, 1e-9) if len(result.history) > result.resumed_from else None)
        for split_name, dataset in self._eval_splits(splits).items():
            self.evaluate(model, dataset, directory, split_name)
        info["complete"] = True
        save_json(info_path, info)
        outcome = StageOutcome(spec, directory, False, info, record_role, setup.name)
        self.outcomes.append(outcome)
        return outcome

    @staticmethod
    def _eval_splits(splits: DataSplits) -> dict[str, Any]:
        return {"validation": splits.validation, **({"test": splits.test} if splits.test is not None else {})}

    @torch.no_grad()
    def evaluate(self, model: CascadeModel, dataset: Any, directory: Path, split: str) -> dict[str, list]:
        """Reconstruct ``split`` with ``model``; write ``reconstructions_<split>.h5`` and ``metrics_<split>.json``."""
        model.eval()
        batches = [to_device(b, self.device) for b in make_loader(dataset, self.settings, shuffle=False)]
        arrays = {
            "reconstruction": np.concatenate([reconstruct(model, b)[:, 0].float().cpu().numpy() for b in batches]),
            **_reference_arrays(batches),
        }
        volumes, slices = _slice_ids(batches)
        with atomic_path(directory / f"reconstructions_{split}.h5") as tmp, h5py.File(tmp, "w") as f:
            for name, values in arrays.items():
                f.create_dataset(name, data=values.astype(np.float32))
            f.create_dataset("volume", data=np.array(volumes, dtype="S"))
            f.create_dataset("slice_index", data=np.array(slices, dtype=np.int64))
        return self._save_metrics(directory / f"metrics_{split}.json", split, arrays["reconstruction"],
                                  arrays["target"], volumes, slices)

    def _save_metrics(self, path: Path, split: str, reconstruction: np.ndarray, target: np.ndarray,
                      volumes: list[str], slices: list[int]) -> dict[str, list]:
        scores = self.score(reconstruction, target)
        metrics = {"split": split, "volume": volumes, "slice_index": slices,
                   **{k: [float(x) for x in v] for k, v in scores.items()}}
        save_json(path, metrics)
        return metrics

    def _zero_filled_metrics(self, splits: DataSplits, acceleration: float) -> dict[str, Path]:
        """Score the zero-filled images of each evaluation split (the ZF row); computed once per acceleration."""
        files = {}
        for split, dataset in self._eval_splits(splits).items():
            path = self.run_dir / f"zero_filled_{acceleration:g}x_{split}.json"
            if not path.is_file():
                batches = list(make_loader(dataset, self.settings, shuffle=False))
                arrays = _reference_arrays(batches)
                self._save_metrics(path, split, arrays["zero_filled"], arrays["target"], *_slice_ids(batches))
            files[split] = path
        return files

    # -- the graph ----------------------------------------------------------------------------------------------
    def run(self) -> PipelineResult:
        started = time.perf_counter()
        records: list[dict[str, Any]] = []
        data = self.config.data
        for acceleration in data.acceleration:
            splits = build_splits(data, acceleration, log=self.log)
            # Written once the data is known to be readable, so a bad file leaves no run directory behind.
            save_json(self.run_dir / "config.json", self.config.to_dict())
            sampled = "" if data.task == "sr" else f"; {splits.mask.sampled_fraction:.1%} of k-space sampled"
            self.log(f"data: {splits.description}{sampled}")
            for split, file in self._zero_filled_metrics(splits, acceleration).items():
                records.append(self._record(None, "zero_filled", acceleration, split,
                                            self.teacher_parameters["image"], file))
            for setup in self.setups:
                for outcome in self._run_graph(splits, acceleration, setup):
                    for split in self._eval_splits(splits):
                        records.append(self._record(outcome, outcome.record_role or outcome.spec.role, acceleration,
                                                    split, self.teacher_parameters[setup.name],
                                                    outcome.directory / f"metrics_{split}.json"))
        results = {"schema": 1, "tool_version": compressor.__version__, "split": "validation",
                   "teacher": self.config.model.teacher, "task": data.task,
                   **({"sr_interpolation": data.sr_interpolation} if data.task == "sr" else {}), "models": records}
        results_file = save_json(self.run_dir / "results.json", results)
        return PipelineResult(self.run_dir, results_file, self.outcomes, time.perf_counter() - started)

    def _spec(self, splits: DataSplits, acceleration: float, setup: Setup, role: str, arch: str, epochs: int,
              method: str | None = None, parents: dict[str, str] | None = None, **extra: Any) -> StageSpec:
        # Key parts that only non-default runs have are added only then, so the paper's stages keep their keys.
        if setup.loss != "l1":
            extra["loss"] = setup.loss
        if self.config.data.task == "sr":
            extra["sr_scale"] = acceleration
        return StageSpec(role, arch, acceleration, method, self._determinants(splits, epochs, **extra), parents or {})

    def _run_graph(self, splits: DataSplits, acceleration: float, setup: Setup) -> list[StageOutcome]:
        """Stages 1-5 (and the Table 5 ablation) of ``setup`` for every student and method; shared stages run
        once. The image setup's teacher and SFT teacher are warm-started when ``model.init_teacher`` is set."""
        cfg, epochs = self.config, self.config.train
        warm_start = self.warm_start if setup.name == "image" else None
        init = warm_start.path if warm_start else None
        warm = {"init_teacher": warm_start.digest} if warm_start else {}
        warm_info = {"init_teacher": str(init)} if warm_start else {}
        run = partial(self._run, splits=splits, setup=setup)
        spec = partial(self._spec, splits, acceleration, setup)
        teacher = run(spec("teacher", setup.teacher, epochs.epochs_teacher, **warm),
                      build=partial(self._supervised, setup.teacher, epochs.epochs_teacher, setup.loss, init),
                      extra_info=warm_info)
        outcomes = [teacher]
        for student_arch in setup.students:
            student = run(spec("student", student_arch, epochs.epochs_student),
                          build=partial(self._supervised, student_arch, epochs.epochs_student, setup.loss, None))
            sft_spec = partial(spec, "sft_teacher", setup.teacher, epochs.epochs_sft, student_arch=student_arch,
                               sft=self._sft_determinants())
            sft = run(sft_spec(**warm), build=partial(self._student_friendly_teacher, setup, student_arch, init),
                      extra_info={"student_arch": student_arch, **warm_info})
            outcomes += [student, sft]
            if init:
                outcomes.append(run(sft_spec(), build=partial(self._student_friendly_teacher, setup, student_arch,
                                                               None),
                                    extra_info={"student_arch": student_arch}, record_role="sft_teacher_scratch"))
            variants = [("std_kd", teacher, None), ("sft_kd", sft, sft)]
            if cfg.kd.random_init:
                variants.append(("sft_kd_random", sft, None))
            for method in self.methods:
                # The resolved weight, not the option: a changed default must not reuse stages trained with the old.
                kd = {"method": method, "mode": cfg.kd.mode, "schedule": cfg.kd.schedule,
                      "weight": self._kd_weight(method), "feature_epochs": cfg.kd.feature_epochs}
                for role, source, init_from in variants:
                    outcomes.append(run(spec(role, student_arch, epochs.epochs_kd, method, {"teacher": source.spec.key},
                                             kd=kd),
                                        build=partial(self._distillation, setup, student_arch, method, source,
                                                      init_from)))
        return outcomes

    def _sft_determinants(self) -> dict[str, Any]:
        sft = asdict(self.config.sft)
        del sft["feature_ablation"]  # which setups run, not what one SFT teacher computes
        return sft

    def _new_model(self, arch: str, init: Path | None = None) -> CascadeModel:
        torch.manual_seed(self.config.train.seed)
        model = build_model(arch, self.model_options)
        return (load_weights(init, model) if init else model).to(self.device)

    def _supervised(self, arch: str, n_epochs: int, loss: str, init: Path | None) -> tuple[Objective, list[Phase]]:
        return Supervised(self._new_model(arch, init), loss), [Phase("train", n_epochs)]

    def _student_friendly_teacher(self, setup: Setup, student_arch: str,
                                  init: Path | None) -> tuple[Objective, list[Phase]]:
        sft = self.config.sft
        weights = SFTWeights(sft.teacher_weight, sft.student_weight, sft.imitation_weight, sft.imitation_per_pixel)
        objective = StudentFriendlyTeacher(self._new_model(setup.teacher, init), self._new_model(student_arch),
                                           weights, setup.loss)
        return objective, [Phase("train", self.config.train.epochs_sft)]

    def _distillation(self, setup: Setup, student_arch: str, method: str, teacher: StageOutcome,
                      init_from: StageOutcome | None) -> tuple[Objective, list[Phase]]:
        student = self._new_model(student_arch)
        if init_from is not None:
            branches = self._trained(init_from, "best_student_branches.safetensors", arch=student_arch)
            transfer_student_blocks(branches, student)
        trained_teacher = self._trained(teacher)
        phases, weight, loss = self._kd_phases(method, student, trained_teacher)
        return Distillation(student, trained_teacher, loss, weight, setup.loss), phases

    def _record(self, outcome: StageOutcome | None, role: str, acceleration: float, split: str,
                teacher_params: int, metrics_file: Path) -> dict:
        metrics = load_json(metrics_file)
        summary = {name: {"mean": float(np.mean(metrics[name])), "std": float(np.std(metrics[name]))}
                   for name in metrics if name not in ("split", "volume", "slice_index")}
        rel = lambda p: str(p.relative_to(self.run_dir)) if p else None  # noqa: E731
        spec = outcome.spec if outcome else None
        arch, method = (spec.arch, spec.method) if spec else (None, None)
        parameters = outcome.info["parameters"] if outcome else 0
        # An SFT teacher is trained for one student architecture: its name says which (``d5c5+d3c5``).
        student_arch = outcome.info.get("student_arch") if outcome else None
        model = f"{arch}+{student_arch}" if student_arch else arch
        name = f"{role}{'/' + method if method else ''}{'/' + model if model else ''}@{acceleration:g}x"
        return {"name": name, "role": role, "arch": arch, "method": method, "acceleration": acceleration,
                "split": split, "parameters": parameters,
                "compression": (1 - parameters / teacher_params) if arch else None, **summary,
                "stage_dir": rel(outcome.directory) if outcome else None, "metrics_file": rel(metrics_file),
                "reconstructions_file": rel(outcome.directory / f"reconstructions_{split}.h5") if outcome else None,
                "student_arch": student_arch, "setup": outcome.setup if outcome else "image",
                "init_teacher": outcome.info.get("init_teacher") if outcome else None,
                "best_epoch": outcome.info.get("best_epoch") if outcome else None,
                "train_seconds": outcome.info.get("train_seconds") if outcome else None}



# The KD losses state their own phase lengths for RepDistiller's 240-epoch schedule (``--init_epochs 30``);
# they are scaled to the stage's epochs.
REFERENCE_KD_EPOCHS = 240


def kd_phases(loss: DistillationLoss, schedule: str, epochs: int, feature_epochs: int | None = None) -> list[Phase]:
    """The phases of a distillation stage of ``epochs`` epochs.

    * ``joint`` (Algorithm 1, step 2): L1 + w·KD together, preceded by the method's own initialisation phase when
      its paper has one (FSP: KD loss alone first), scaled from :data:`REFERENCE_KD_EPOCHS` to ``epochs``;
    * ``two-phase`` (the authors' scripts): ``feature_epochs`` (default ``epochs``) of KD loss alone, then
      ``epochs`` of L1 alone.

    A loss with a pre-training phase of its own modules (FT's paraphraser) gets it first, scaled likewise.
    """
    def scaled(default: int) -> int:
        return max(1, round(default * epochs / REFERENCE_KD_EPOCHS)) if default else 0

    phases = [Phase("paraphraser", scaled(loss.pretrain_epochs_default), pretraining=True)] \
        if loss.pretrain_epochs_default else []
    if schedule == "two-phase":
        return [*phases, Phase("feature", feature_epochs or epochs, rec_weight=0.0),
                Phase("finetune", epochs, kd_weight=0.0)]
    if schedule != "joint":
        raise InputError(f"unknown KD schedule {schedule!r}; valid: joint, two-phase")
    feature_only = min(scaled(loss.feature_only_epochs_default), epochs - 1)
    if feature_only > 0:
        phases.append(Phase("feature", feature_only, rec_weight=0.0))
    return [*phases, Phase("joint", epochs - feature_only)]


def transfer_student_blocks(branches: CascadeModel, student: CascadeModel) -> list[str]:
    """Copy the SFT student blocks ``S_2..S_N`` (cascades 1..N-1) into ``student``; ``S_1`` keeps its fresh
    initialisation because no branch trains it (Fig. 2). Returns the copied parameter names."""
    source = branches.state_dict()
    copied = {k: v for k, v in source.items() if k.startswith("cascades.") and int(k.split(".")[1]) >= 1}
    student.load_state_dict(copied, strict=False)
    return sorted(copied)


def _reference_arrays(batches: list[Sample]) -> dict[str, np.ndarray]:
    """Target, zero-filled image and scale of a list of batches, as ``(S, H, W)`` / ``(S,)`` arrays."""
    return {"target": np.concatenate([b.target[:, 0].cpu().numpy() for b in batches]),
            "zero_filled": np.concatenate([b.zero_filled[:, 0].cpu().numpy() for b in batches]),
            "scale": np.concatenate([b.scale.cpu().numpy().reshape(-1) for b in batches])}


def _slice_ids(batches: list[Sample]) -> tuple[list[str], list[int]]:
    return [v for b in batches for v in b.volume], [int(i) for b in batches for i in b.slice_index]
