"""The run directory: what ``compress --out RUN`` holds, and the only code that writes or reads it.

Training writes through this module; export, evaluation and the CLI read through it. It imports no torch, so the
evaluation can use it without the training stack.

Layout (format 2; a format-1 directory is still read, see *Versions*)::

    RUN/
      config.json                  the RunConfig of the last invocation (CONFIG_FILE)
      results.json                 the run record, RunRecord (RESULTS_FILE)
      masks/mask_<R>x.npy          each acceleration's sampling mask, float32 (H, W), uncentred (MASKS_FOLDER)
      zero_filled_<R>x_<split>.json   per-slice metrics of the zero-filled images
      .compress.lock               held (fcntl.flock) by the one compress run using the directory (LOCK_FILE)
      benchmark.json, .csv         ONNX Runtime vs PyTorch latency (compress benchmark)
      exports/                     ONNX files and exports.json (compress export; EXPORTS_FOLDER)
      report/                      tables and figures (compress report)
      stages/<role>[-<method>]-<arch>-<key>/   one trained stage (STAGES_FOLDER)
        stage.json                 the stage record, StageRecord (STAGE_FILE)
        history.json               [{"epoch", "train_loss", "val_loss", "lr", "seconds", "terms"}] (HISTORY_FILE)
        best.safetensors, best_<part>.safetensors, last.safetensors   weights (tensors only)
        checkpoint.pt              resume state, plain tensors and numbers only (CHECKPOINT_FILE)
        reconstructions_<split>.h5 datasets reconstruction, target, zero_filled (S, H, W) float32, scale (S,),
                                   volume (S,) bytes, slice_index (S,); normalised units; the images are what
                                   the metrics score: the image_size centre of the grid, the real image of
                                   1-channel models, the magnitude of 2-channel ones, which also store
                                   target_complex (S, H, W) complex64 on the model's grid (COMPLEX_TARGET_KEY)
        metrics_<split>.json       {"split", "volume": [...], "slice_index": [...], "<metric>": [...]}

Records (frozen dataclasses; ``to_json``/``from_json`` are the JSON form):

* :class:`RunRecord` (``results.json``): ``schema`` (the format version), ``tool_version``, ``split`` (the one
  that picked the best weights), ``teacher``, ``task``, ``sr_interpolation`` (``sr`` runs), ``config`` (the
  RunConfig of the latest run that wrote it, format 2), ``masks`` (acceleration label → :class:`MaskRecord`,
  format 2), ``distributed`` (only when several processes trained, ``torchrun``: ``world_size``, ``backend``,
  ``per_rank_batch_size``, ``global_batch_size``, ``lr``), ``coil_compression`` (only for multi-coil data,
  :class:`CoilCompressionRecord`: ``split``, ``slices``, one ``{"mean", "std"}`` per metric of the virtual coil's
  magnitude against the root-sum-of-squares image) and ``models``, a list of :class:`ModelResult`.
* :class:`ModelResult`: ``name`` (``role[/method]/arch[+student]@Rx``), ``role`` (a :class:`Role`), ``arch``,
  ``method``, ``acceleration``, ``split``, ``parameters``, ``compression`` (1 − parameters / teacher parameters),
  one ``{"mean", "std"}`` per metric (``psnr``, ``ssim``, ...), ``stage_dir``, ``metrics_file``,
  ``reconstructions_file`` (relative to RUN; ``null`` for ``zero_filled`` except its metrics file),
  ``student_arch`` (SFT teachers), ``setup`` (``image``/``feature``), ``init_teacher`` (warm-start weights or
  ``null``), ``best_epoch``, ``train_seconds``. Missing optional keys take these defaults.
* :class:`StageRecord` (``stage.json``): ``stage`` (folder), ``name``, ``role``, ``arch``, ``method``,
  ``acceleration``, ``key``, ``parents`` ({role: key}), ``config`` (the determinants hashed into ``key``),
  ``model_options``, ``mask_digest``, ``mask_file`` (format 2), ``image_size``, ``parameters``, ``phases``,
  ``setup``, ``loss``, ``student_arch``, ``init_teacher``, ``tool_version``, ``complete`` and, once complete,
  ``best_epoch``, ``best_val_loss``, ``train_seconds``, ``slices_per_second``; ``format`` (absent: 1).

Roles (:class:`Role`, each with its report label): ``zero_filled``, ``teacher``, ``student``, ``std_kd``,
``sft_teacher``, ``sft_kd``, ``sft_kd_random`` (Table 5), ``sft_teacher_scratch`` (Fig. 7's from-scratch
reference of a warm-started run; recorded, never a KD teacher).

Versions: :data:`FORMAT_VERSION` is written; :data:`READABLE_FORMATS` are read. Format 1 (every committed run
under ``docs/results``) has no ``masks`` (export rebuilds a mask from ``config.json`` and checks its digest);
a newer format is refused with one line naming the version found and the ones this tool reads.

Stage keys (:func:`stage_determinants`, one rule): a field enters the key of a stage unless

1. it never determines a stage's result (:data:`NOT_DETERMINANTS`: the accelerations, the data cache, devices,
   which setups run, ...), or
2. it applies only to another task (:data:`ONLY_FOR_TASK`: ``sr_interpolation`` and the SR scale), or
3. it is not one of the format-1 key fields (:data:`KEY_FIELDS_V1`) and holds its declared default (the
   dataclass default of its config section or of ``ModelOptions``; :data:`STAGE_DEFAULTS` for the stage's own
   parts: ``loss`` ``l1``, ``init_teacher`` none, ``world_size`` 1).

So a field added later (image channels, precision, ...) leaves every committed key unchanged until a run sets it,
and ``TRAINING_CODE_VERSION`` (``compressor.training.stages``) stays the one way to retire keys on purpose.

Several invocations may share a directory: stages are reused by key, one run at a time (:func:`run_lock`), and
:func:`merge_results` keeps earlier records a run did not produce when their config differs only in what ran
(:data:`SELECTION_FIELDS`); otherwise ``results.json`` is replaced and the caller logs it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from compressor.config import SECTION_TYPES, Task
from compressor.errors import InputError
from compressor.io import load_json, save_json, write_atomic
from compressor.masks import acceleration_label

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
BENCHMARK_FILE = "benchmark.json"
STAGE_FILE = "stage.json"
HISTORY_FILE = "history.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".compress.lock"
STAGES_FOLDER = "stages"
MASKS_FOLDER = "masks"
EXPORTS_FOLDER = "exports"


COMPLEX_TARGET_KEY = "target_complex"
"""The dataset of a 2-channel stage's ``reconstructions_<split>.h5`` that holds the complex target on the model's grid
(normalised units): what export validation undersamples for 2-channel models."""


def metrics_file(split: str) -> str:
    return f"metrics_{split}.json"


def reconstructions_file(split: str) -> str:
    return f"reconstructions_{split}.h5"


def zero_filled_file(acceleration: float, split: str) -> str:
    return f"zero_filled_{acceleration:g}x_{split}.json"


def mask_file(acceleration: float) -> str:
    return f"{MASKS_FOLDER}/mask_{acceleration_label(acceleration)}x.npy"


# -- vocabularies -------------------------------------------------------------------------------------------------
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


# -- the stage-key rule ---------------------------------------------------------------------------------------------
NOT_DETERMINANTS: dict[str, frozenset[str]] = {
    "data": frozenset({"acceleration", "cache_dir"}),
    "train": frozenset({"epochs_teacher", "epochs_student", "epochs_kd", "epochs_sft", "device", "num_workers",
                        "threads", "teacher_cache_mib"}),
    "sft": frozenset({"feature_ablation"}),  # which setups run, not what one SFT teacher computes
    "kd": frozenset({"random_init", "method_weights"}),  # which stages run; the resolved weight is in the key
    "model_options": frozenset(),
    "stage": frozenset(),
}
"""Fields that never enter a stage key, per section (``stage``: the stage's own parts)."""

KEY_FIELDS_V1: dict[str, frozenset[str]] = {
    "data": frozenset({"source", "train", "validation", "test", "image_size", "downsample", "mask_type", "mask_seed",
                       "center_fraction", "mask_file", "mask_centred", "max_train_slices", "max_eval_slices",
                       "fastmri_target_key", "sr_interpolation"}),
    "train": frozenset({"batch_size", "lr", "lr_step", "lr_gamma", "seed", "amp"}),
    "model_options": frozenset({"block_form", "block_padding", "dc_lambda", "dc_learnable", "channels"}),
    "sft": frozenset({"teacher_weight", "student_weight", "imitation_weight", "imitation_per_pixel"}),
    "kd": frozenset({"method", "weight", "schedule", "mode", "feature_epochs"}),
    "stage": frozenset({"data", "mask", "model_options", "epochs", "student_arch", "sft", "kd", "sr_scale"}),
}
"""The fields of the format-1 keys: they enter a key even at their default, so committed keys stay the same."""

ONLY_FOR_TASK = {"data.sr_interpolation": "sr", "stage.sr_scale": "sr"}
"""Fields that apply to one task only; other tasks' keys leave them out."""

STAGE_DEFAULTS = {"loss": "l1", "init_teacher": None, "world_size": 1}
"""Declared defaults of the stage's own key parts that are not config fields (``world_size``: the processes that
train it, ``torchrun``; ``train.batch_size`` is the per-rank batch, so the global batch is their product)."""


def _section_defaults(section: str) -> dict[str, Any]:
    if section not in SECTION_TYPES:
        return {}
    out = {}
    for spec in fields(SECTION_TYPES[section]):
        if spec.default is not MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            out[spec.name] = spec.default_factory()
    return out


def key_fields(section: str, values: dict[str, Any], task: str, defaults: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The part of ``values`` (one section) that enters a stage key, by the rule of the module docstring.

    ``defaults``: the declared defaults of the section's fields (default: the config section's dataclass).
    """
    defaults = _section_defaults(section) if defaults is None else defaults
    kept = {}
    for name, value in values.items():
        where = f"{section}.{name}"
        if name in NOT_DETERMINANTS.get(section, ()):
            continue
        if where in ONLY_FOR_TASK and ONLY_FOR_TASK[where] != task:
            continue
        if name not in KEY_FIELDS_V1.get(section, ()) and name in defaults and value == defaults[name]:
            continue
        kept[name] = value
    return kept


def stage_determinants(config: dict[str, Any], model_options: dict[str, Any], model_option_defaults: dict[str, Any],
                       mask_digest: str, epochs: int, stage: dict[str, Any]) -> dict[str, Any]:
    """Everything a stage's key hashes besides role, arch, acceleration, method and parents.

    Args:
        config: the run's config as a dict (``RunConfig.to_dict()``).
        model_options: ``ModelOptions.to_dict()``; ``model_option_defaults`` the same of ``ModelOptions()``.
        mask_digest: the acceleration's mask digest.
        epochs: the stage's epochs.
        stage: the stage's own parts (``loss``, ``sr_scale``, ``init_teacher``, ``student_arch``, and the
            ``sft`` and ``kd`` determinants of SFT-teacher and KD stages, already passed through
            :func:`key_fields`).
    """
    task = config["data"]["task"]
    return key_fields("stage", {
        "data": key_fields("data", config["data"], task), "mask": mask_digest,
        "model_options": key_fields("model_options", model_options, task, model_option_defaults),
        "epochs": epochs, **key_fields("train", config["train"], task), **stage,
    }, task, STAGE_DEFAULTS)


# -- records ----------------------------------------------------------------------------------------------------------
def _check_format(version: Any, path: Path, key: str) -> int:
    if version not in READABLE_FORMATS:
        raise InputError(f"run-directory format {version!r} is not one this tool reads "
                         f"({', '.join(map(str, READABLE_FORMATS))}); use the tool version that wrote it", path, key)
    return int(version)


def _number(value: Any, path: Path, key: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number{' or null' if optional else ''}, got {value!r}", path, key)
    return float(value)


def _text(value: Any, path: Path, key: str, optional: bool = True, what: str = "a string") -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"expected {what}{' or null' if optional else ''}, got {value!r}", path, key)
    return value


def _choice(value: Any, valid: tuple[str, ...], path: Path, key: str) -> str:
    if value not in valid:
        raise InputError(f"unknown {key.rsplit('.', 1)[-1]} {value!r}; valid: {', '.join(valid)}", path, key)
    return value


def _object(raw: Any, path: Path, key: str | None = None, what: str = "an object") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(f"expected {what}", path, key)
    return raw


def _integer(value: Any, path: Path, key: str) -> int | None:
    number = _number(value, path, key)
    return None if number is None else int(number)


@dataclass(frozen=True)
class MetricSummary:
    """Mean and standard deviation of a metric over a split's slices, as ``results.json`` states them."""

    mean: float | None
    std: float | None


@dataclass(frozen=True)
class ModelResult:
    """One entry of ``results.json``'s ``models`` (see the module docstring); paths relative to the run."""

    name: str
    role: Role
    acceleration: float
    split: str
    arch: str | None = None
    method: str | None = None
    parameters: int | None = None
    compression: float | None = None
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    stage_dir: str | None = None
    metrics_file: str | None = None
    reconstructions_file: str | None = None
    student_arch: str | None = None
    setup: str = "image"
    init_teacher: str | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None

    @property
    def merge_key(self) -> tuple[str, str, str | None]:
        """What identifies a record across runs of one directory."""
        return (self.name, self.split, self.stage_dir)

    def to_json(self) -> dict[str, Any]:
        out = {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.name != "metrics"}
        out["role"] = self.role.value
        return {**out, **{name: asdict(summary) for name, summary in self.metrics.items()}}

    @classmethod
    def from_json(cls, entry: Any, path: Path, key: str, default_split: str = "validation") -> ModelResult:
        entry = _object(entry, path, key)
        for required in ("name", "role", "acceleration"):
            if required not in entry:
                raise InputError(f"missing key {required!r}", path, key)
        role = Role(_choice(entry["role"], ROLES, path, f"{key}.role"))
        names = {spec.name for spec in fields(cls)}
        metrics = {}
        for name, stated in entry.items():  # every other object is a metric summary; psnr and ssim must be
            if name in names or stated is None or (not isinstance(stated, dict) and name not in ("psnr", "ssim")):
                continue
            if not isinstance(stated, dict) or "mean" not in stated:
                raise InputError('expected {"mean": ..., "std": ...}', path, f"{key}.{name}")
            metrics[name] = MetricSummary(_number(stated["mean"], path, f"{key}.{name}.mean"),
                                          _number(stated.get("std"), path, f"{key}.{name}.std"))
        return cls(
            name=str(entry["name"]), role=role,
            acceleration=_number(entry["acceleration"], path, f"{key}.acceleration", optional=False),
            split=str(entry.get("split", default_split)),
            arch=_text(entry.get("arch"), path, f"{key}.arch"),
            method=_text(entry.get("method"), path, f"{key}.method"),
            parameters=_integer(entry.get("parameters"), path, f"{key}.parameters"),
            compression=_number(entry.get("compression"), path, f"{key}.compression"),
            metrics=metrics,
            stage_dir=_text(entry.get("stage_dir"), path, f"{key}.stage_dir"),
            metrics_file=_text(entry.get("metrics_file"), path, f"{key}.metrics_file"),
            reconstructions_file=_text(entry.get("reconstructions_file"), path, f"{key}.reconstructions_file"),
            student_arch=_text(entry.get("student_arch"), path, f"{key}.student_arch"),
            setup=_choice(entry.get("setup", "image"), SETUPS, path, f"{key}.setup"),
            init_teacher=_text(entry.get("init_teacher"), path, f"{key}.init_teacher", what="a weights file path"),
            best_epoch=_integer(entry.get("best_epoch"), path, f"{key}.best_epoch"),
            train_seconds=_number(entry.get("train_seconds"), path, f"{key}.train_seconds"),
        )


@dataclass(frozen=True)
class MaskRecord:
    """A saved sampling mask: its file (relative to the run) and digest (``SamplingMask.digest``)."""

    file: str
    digest: str


@dataclass(frozen=True)
class ProcessesRecord:
    """How many processes trained the run (``torchrun``) and the batch and learning rate they used."""

    world_size: int
    backend: str
    per_rank_batch_size: int
    global_batch_size: int
    lr: float

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> ProcessesRecord:
        raw = _object(raw, path, "distributed")
        try:
            return cls(world_size=int(raw["world_size"]), backend=str(raw["backend"]),
                       per_rank_batch_size=int(raw["per_rank_batch_size"]),
                       global_batch_size=int(raw["global_batch_size"]), lr=float(raw["lr"]))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"expected world_size, backend, per_rank_batch_size, global_batch_size and lr ({error})",
                             path, "distributed") from None


@dataclass(frozen=True)
class CoilCompressionRecord:
    """What compressing multi-coil k-space to one virtual coil costs, apart from any model: the magnitude of the
    virtual-coil image scored against the root-sum-of-squares image of the same slices (``split``, ``slices`` of
    them; each pair divided by the RSS slice's maximum; the scored region)."""

    split: str
    slices: int
    metrics: dict[str, MetricSummary]

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "slices": self.slices,
                **{name: asdict(summary) for name, summary in self.metrics.items()}}

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> CoilCompressionRecord:
        raw = _object(raw, path, "coil_compression")
        metrics = {}
        for name, stated in raw.items():
            if name in ("split", "slices"):
                continue
            stated = _object(stated, path, f"coil_compression.{name}")
            metrics[name] = MetricSummary(_number(stated.get("mean"), path, f"coil_compression.{name}.mean"),
                                          _number(stated.get("std"), path, f"coil_compression.{name}.std"))
        return cls(split=_text(raw.get("split"), path, "coil_compression.split", optional=False),
                   slices=int(_number(raw.get("slices"), path, "coil_compression.slices")), metrics=metrics)


@dataclass(frozen=True)
class RunRecord:
    """``results.json``: the run and its models (see the module docstring)."""

    teacher: str | None
    task: str = "reconstruction"
    split: str = "validation"
    sr_interpolation: str | None = None
    models: tuple[ModelResult, ...] = ()
    masks: dict[str, MaskRecord] = field(default_factory=dict)
    schema: int = FORMAT_VERSION
    tool_version: str | None = None
    config: dict[str, Any] | None = None
    distributed: ProcessesRecord | None = None
    coil_compression: CoilCompressionRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "tool_version": self.tool_version, "split": self.split,
                "teacher": self.teacher, "task": self.task,
                **({"sr_interpolation": self.sr_interpolation} if self.task == "sr" else {}),
                **({"config": self.config} if self.config is not None else {}),
                **({"distributed": asdict(self.distributed)} if self.distributed is not None else {}),
                **({"coil_compression": self.coil_compression.to_json()} if self.coil_compression else {}),
                "masks": {label: asdict(mask) for label, mask in self.masks.items()},
                "models": [model.to_json() for model in self.models]}

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> RunRecord:
        raw = _object(raw, path, what="an object with a 'models' list")
        if not isinstance(raw.get("models"), list):
            raise InputError("expected an object with a 'models' list", path)
        schema = _check_format(raw.get("schema"), path, "schema")
        split = str(raw.get("split", "validation"))
        task = _choice(raw.get("task", "reconstruction"), TASKS, path, "task")
        interpolation = raw.get("sr_interpolation")
        if interpolation is not None:
            _choice(interpolation, sr_interpolations(), path, "sr_interpolation")
        masks = {}
        for label, mask in _object(raw.get("masks", {}), path, "masks").items():
            mask = _object(mask, path, f"masks.{label}")
            masks[label] = MaskRecord(_text(mask.get("file"), path, f"masks.{label}.file", optional=False),
                                      _text(mask.get("digest"), path, f"masks.{label}.digest", optional=False))
        models = tuple(ModelResult.from_json(entry, path, f"models[{index}]", split)
                       for index, entry in enumerate(raw["models"]))
        return cls(teacher=_text(raw.get("teacher"), path, "teacher"), task=task, split=split,
                   sr_interpolation=interpolation, models=models, masks=masks, schema=schema,
                   tool_version=_text(raw.get("tool_version"), path, "tool_version"),
                   config=_object(raw["config"], path, "config") if raw.get("config") is not None else None,
                   distributed=ProcessesRecord.from_json(raw["distributed"], path)
                   if raw.get("distributed") is not None else None,
                   coil_compression=CoilCompressionRecord.from_json(raw["coil_compression"], path)
                   if raw.get("coil_compression") is not None else None)


@dataclass(frozen=True)
class StageRecord:
    """``stage.json`` of a stage folder (see the module docstring)."""

    stage: str
    name: str
    role: Role
    arch: str
    acceleration: float
    key: str
    method: str | None = None
    parents: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    mask_digest: str | None = None
    mask_file: str | None = None
    image_size: tuple[int, int] | None = None
    parameters: int | None = None
    phases: tuple[dict[str, Any], ...] = ()
    setup: str = "image"
    loss: str = "l1"
    student_arch: str | None = None
    init_teacher: str | None = None
    tool_version: str | None = None
    complete: bool = False
    best_epoch: int | None = None
    best_val_loss: float | None = None
    train_seconds: float | None = None
    slices_per_second: float | None = None
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        out = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        out.update(role=self.role.value, image_size=list(self.image_size) if self.image_size else None,
                   phases=list(self.phases))
        return out

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> StageRecord:
        raw = _object(raw, path)
        for required in ("role", "arch", "acceleration"):
            if required not in raw:
                raise InputError(f"missing key {required!r}", path)
        version = _check_format(raw.get("format", 1), path, "format")
        size = raw.get("image_size")
        return cls(
            stage=str(raw.get("stage", path.parent.name)), name=str(raw.get("name", path.parent.name)),
            role=Role(_choice(raw["role"], STAGE_ROLES, path, "role")),
            arch=_text(raw["arch"], path, "arch", optional=False),
            acceleration=_number(raw["acceleration"], path, "acceleration", optional=False),
            key=str(raw.get("key", "")), method=_text(raw.get("method"), path, "method"),
            parents=dict(_object(raw.get("parents", {}), path, "parents")),
            config=dict(_object(raw.get("config", {}), path, "config")),
            model_options=dict(_object(raw.get("model_options", {}), path, "model_options")),
            mask_digest=_text(raw.get("mask_digest"), path, "mask_digest"),
            mask_file=_text(raw.get("mask_file"), path, "mask_file"),
            image_size=tuple(int(v) for v in size) if isinstance(size, list) else None,
            parameters=_integer(raw.get("parameters"), path, "parameters"),
            phases=tuple(raw.get("phases") or ()),
            setup=_choice(raw.get("setup", "image"), SETUPS, path, "setup"),
            loss=str(raw.get("loss", "l1")),
            student_arch=_text(raw.get("student_arch"), path, "student_arch"),
            init_teacher=_text(raw.get("init_teacher"), path, "init_teacher"),
            tool_version=_text(raw.get("tool_version"), path, "tool_version"),
            complete=raw.get("complete") is True,
            best_epoch=_integer(raw.get("best_epoch"), path, "best_epoch"),
            best_val_loss=_number(raw.get("best_val_loss"), path, "best_val_loss"),
            train_seconds=_number(raw.get("train_seconds"), path, "train_seconds"),
            slices_per_second=_number(raw.get("slices_per_second"), path, "slices_per_second"),
            format=version,
        )


# -- reading and writing ----------------------------------------------------------------------------------------------
def read_stage(stage_dir: Path) -> StageRecord:
    path = Path(stage_dir) / STAGE_FILE
    return StageRecord.from_json(load_json(path), path)


def read_stage_if_complete(stage_dir: Path) -> StageRecord | None:
    """The stage's record when its training finished, else ``None`` (no folder, no record, or not complete)."""
    path = Path(stage_dir) / STAGE_FILE
    if not path.is_file():
        return None
    record = read_stage(stage_dir)
    return record if record.complete else None


def write_stage(stage_dir: Path, record: StageRecord) -> Path:
    return save_json(Path(stage_dir) / STAGE_FILE, record.to_json())


def read_results(run_dir: Path) -> RunRecord:
    """``results.json`` of ``run_dir``; one-line :class:`InputError` naming the file and key when it is bad."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise InputError(f"not a run directory: no {RESULTS_FILE}", run_dir)
    return RunRecord.from_json(load_json(path), path)


def write_results(run_dir: Path, record: RunRecord) -> Path:
    return save_json(Path(run_dir) / RESULTS_FILE, record.to_json())


def read_config(run_dir: Path):
    """The :class:`~compressor.config.RunConfig` of the run's ``config.json``."""
    from compressor.config import config_from_dict

    path = Path(run_dir) / CONFIG_FILE
    return config_from_dict(load_json(path), str(path))


def write_config(run_dir: Path, config: Any) -> Path:
    return save_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def save_mask(run_dir: Path, acceleration: float, values: np.ndarray, digest: str) -> MaskRecord:
    """Write an acceleration's mask as ``masks/mask_<R>x.npy`` (float32, uncentred) and return its record."""
    relative = mask_file(acceleration)
    array = np.ascontiguousarray(values, dtype=np.float32)

    def write(path: Path) -> None:
        with open(path, "wb") as stream:
            np.save(stream, array, allow_pickle=False)

    write_atomic(Path(run_dir) / relative, write)
    return MaskRecord(relative, digest)


def load_mask_values(run_dir: Path, relative: str) -> np.ndarray:
    """The float32 ``(H, W)`` values of a saved mask (never unpickles)."""
    path = Path(run_dir) / relative
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("mask file not found", path) from None
    except (OSError, ValueError) as error:
        raise InputError(f"not a readable .npy mask ({error})", path) from None
    if values.ndim != 2:
        raise InputError(f"expected a 2-D mask, got shape {values.shape}", path)
    return values.astype(np.float32)


# -- one run at a time ------------------------------------------------------------------------------------------------
_HELD: dict[Path, int] = {}


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``RUN/.compress.lock`` (``fcntl.flock``) while the block runs: one ``compress`` run per directory.

    Another process holding it makes this raise an :class:`InputError` naming the directory and the holder's PID,
    at once (no waiting). Re-entrant within a process. A directory this call created and the run left empty (a
    run refused before writing anything) is removed again.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        _HELD[run_dir] += 1
        try:
            yield run_dir
        finally:
            _HELD[run_dir] -= 1
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise InputError(f"cannot write the run directory ({error.strerror})", run_dir) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"another compress run (PID {holder}) is using this run directory; wait for it to "
                             "finish or choose another --out", run_dir) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        _HELD[run_dir] = 1
        try:
            yield run_dir
        finally:
            del _HELD[run_dir]
            os.ftruncate(handle, 0)
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                (run_dir / LOCK_FILE).unlink()
                run_dir.rmdir()
    finally:
        os.close(handle)


# -- several runs in one directory ------------------------------------------------------------------------------------
SELECTION_FIELDS = frozenset({"kd.method", "model.student", "sft.feature_ablation", "kd.random_init",
                              "data.acceleration", "train.device", "train.num_workers", "train.threads",
                              "train.teacher_cache_mib", "data.cache_dir", "preset"})
"""Config fields that choose what runs (or where), not what a model computes: earlier records of a directory are
kept when the earlier config differs from the new one only in these."""


def config_differences(earlier: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The ``section.key`` fields (or top-level keys) whose values differ."""
    out = []
    for name in sorted(set(earlier) | set(new)):
        a, b = earlier.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}.{key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        elif a != b:
            out.append(name)
    return out


def _world_size(record: RunRecord) -> int:
    return record.distributed.world_size if record.distributed is not None else 1


def merge_results(earlier: RunRecord | None, earlier_config: dict[str, Any] | None, new: RunRecord,
                  new_config: dict[str, Any]) -> tuple[RunRecord, str | None]:
    """``new`` with the earlier records it did not produce, when merging is honest; and a note when it is not.

    Honest: the earlier config (``results.json``'s own ``config``; for format 1 the ``config.json`` beside it)
    differs from the new config only in :data:`SELECTION_FIELDS` and names the same teacher and task. Earlier
    records whose ``(name, split, stage_dir)`` the new run also produced are replaced in place by the new ones;
    the others keep their place, and records only the new run has follow. Otherwise the earlier records are
    dropped (their stage folders stay cached) and the note (one line) says why.
    """
    if earlier is None or not earlier.models:
        return new, None
    differences = config_differences(earlier_config or {}, new_config)
    blocking = [name for name in differences if name not in SELECTION_FIELDS]
    if _world_size(earlier) != _world_size(new):
        blocking.append("the number of training processes")
    if earlier_config is None or blocking or (earlier.teacher, earlier.task) != (new.teacher, new.task):
        reason = f"its config differs in {', '.join(blocking[:3])}" if blocking else "it has no comparable config"
        return new, (f"results.json: the earlier run's records were replaced, not merged ({reason}); their stage "
                     "folders are still cached")
    produced = {model.merge_key: model for model in new.models}
    # Earlier order first, each record replaced in place by its new version, then what only the new run has: a
    # second method run into the directory reads as if both had been asked for at once (``--method at,fitnets``).
    merged = [produced.get(model.merge_key, model) for model in earlier.models]
    known = {model.merge_key for model in earlier.models}
    merged += [model for model in new.models if model.merge_key not in known]
    return replace(new, models=tuple(merged), masks={**earlier.masks, **new.masks}), None
