"""``results.json``, the run record: :class:`RunRecord` and the records it holds, and reading and writing it.

* :class:`RunRecord`: ``schema`` (the format version), ``tool_version``, ``split`` (the one that picked the best
  weights), ``teacher``, ``task``, ``sr_interpolation`` (``sr`` runs), ``config`` (the RunConfig of the latest run
  that wrote it, format 2), ``masks`` (acceleration label → :class:`MaskRecord`, format 2), ``distributed`` (only
  when several processes trained, ``torchrun``: :class:`ProcessesRecord`), ``coil_compression`` (only for
  multi-coil data, :class:`CoilCompressionRecord`) and ``models``, a list of :class:`ModelResult`.
* :class:`ModelResult`: ``name`` (``role[/method]/arch[+student]@Rx``), ``role`` (a :class:`Role`), ``arch``,
  ``method``, ``acceleration``, ``split``, ``parameters``, ``compression`` (1 − parameters / teacher parameters),
  one ``{"mean", "std"}`` per metric (``psnr``, ``ssim``, ...), ``stage_dir``, ``metrics_file``,
  ``reconstructions_file`` (relative to RUN; ``null`` for ``zero_filled`` except its metrics file),
  ``student_arch`` (SFT teachers), ``setup`` (``image``/``feature``), ``init_teacher`` (warm-start weights or
  ``null``), ``best_epoch``, ``train_seconds``. Missing optional keys take these defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from compressor.errors import InputError
from compressor.io import load_json, save_json
from compressor.json_record import choice, integer, json_object, number, text
from compressor.rundir.layout import RunLayout
from compressor.rundir.roles import ROLES, SETUPS, TASKS, Role, sr_interpolations
from compressor.rundir.version import FORMAT_VERSION, check_format


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
        entry = json_object(entry, path, key)
        for required in ("name", "role", "acceleration"):
            if required not in entry:
                raise InputError(f"missing key {required!r}", path, key)
        role = Role(choice(entry["role"], ROLES, path, f"{key}.role"))
        names = {spec.name for spec in fields(cls)}
        metrics = {}
        for name, stated in entry.items():  # every other object is a metric summary; psnr and ssim must be
            if name in names or stated is None or (not isinstance(stated, dict) and name not in ("psnr", "ssim")):
                continue
            if not isinstance(stated, dict) or "mean" not in stated:
                raise InputError('expected {"mean": ..., "std": ...}', path, f"{key}.{name}")
            metrics[name] = MetricSummary(number(stated["mean"], path, f"{key}.{name}.mean"),
                                          number(stated.get("std"), path, f"{key}.{name}.std"))
        return cls(
            name=str(entry["name"]), role=role,
            acceleration=number(entry["acceleration"], path, f"{key}.acceleration", optional=False),
            split=str(entry.get("split", default_split)),
            arch=text(entry.get("arch"), path, f"{key}.arch"),
            method=text(entry.get("method"), path, f"{key}.method"),
            parameters=integer(entry.get("parameters"), path, f"{key}.parameters"),
            compression=number(entry.get("compression"), path, f"{key}.compression"),
            metrics=metrics,
            stage_dir=text(entry.get("stage_dir"), path, f"{key}.stage_dir"),
            metrics_file=text(entry.get("metrics_file"), path, f"{key}.metrics_file"),
            reconstructions_file=text(entry.get("reconstructions_file"), path, f"{key}.reconstructions_file"),
            student_arch=text(entry.get("student_arch"), path, f"{key}.student_arch"),
            setup=choice(entry.get("setup", "image"), SETUPS, path, f"{key}.setup"),
            init_teacher=text(entry.get("init_teacher"), path, f"{key}.init_teacher", what="a weights file path"),
            best_epoch=integer(entry.get("best_epoch"), path, f"{key}.best_epoch"),
            train_seconds=number(entry.get("train_seconds"), path, f"{key}.train_seconds"),
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
        raw = json_object(raw, path, "distributed")
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
        raw = json_object(raw, path, "coil_compression")
        metrics = {}
        for name, stated in raw.items():
            if name in ("split", "slices"):
                continue
            stated = json_object(stated, path, f"coil_compression.{name}")
            metrics[name] = MetricSummary(number(stated.get("mean"), path, f"coil_compression.{name}.mean"),
                                          number(stated.get("std"), path, f"coil_compression.{name}.std"))
        return cls(split=text(raw.get("split"), path, "coil_compression.split", optional=False),
                   slices=int(number(raw.get("slices"), path, "coil_compression.slices")), metrics=metrics)


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
        raw = json_object(raw, path, what="an object with a 'models' list")
        if not isinstance(raw.get("models"), list):
            raise InputError("expected an object with a 'models' list", path)
        schema = check_format(raw.get("schema"), path, "schema")
        split = str(raw.get("split", "validation"))
        task = choice(raw.get("task", "reconstruction"), TASKS, path, "task")
        interpolation = raw.get("sr_interpolation")
        if interpolation is not None:
            choice(interpolation, sr_interpolations(), path, "sr_interpolation")
        masks = {}
        for label, mask in json_object(raw.get("masks", {}), path, "masks").items():
            mask = json_object(mask, path, f"masks.{label}")
            masks[label] = MaskRecord(text(mask.get("file"), path, f"masks.{label}.file", optional=False),
                                      text(mask.get("digest"), path, f"masks.{label}.digest", optional=False))
        models = tuple(ModelResult.from_json(entry, path, f"models[{index}]", split)
                       for index, entry in enumerate(raw["models"]))
        return cls(teacher=text(raw.get("teacher"), path, "teacher"), task=task, split=split,
                   sr_interpolation=interpolation, models=models, masks=masks, schema=schema,
                   tool_version=text(raw.get("tool_version"), path, "tool_version"),
                   config=json_object(raw["config"], path, "config") if raw.get("config") is not None else None,
                   distributed=ProcessesRecord.from_json(raw["distributed"], path)
                   if raw.get("distributed") is not None else None,
                   coil_compression=CoilCompressionRecord.from_json(raw["coil_compression"], path)
                   if raw.get("coil_compression") is not None else None)



def read_results(run_dir: Path) -> RunRecord:
    """``results.json`` of ``run_dir``; one-line :class:`InputError` naming the file and key when it is bad."""
    layout = RunLayout(Path(run_dir))
    if not layout.results.is_file():
        raise InputError(f"not a run directory: no {layout.results.name}", layout.root)
    return RunRecord.from_json(load_json(layout.results), layout.results)


def write_results(run_dir: Path, record: RunRecord) -> Path:
    return save_json(RunLayout(Path(run_dir)).results, record.to_json())
