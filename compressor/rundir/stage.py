"""A stage folder's records: ``stage.json`` (:class:`StageRecord`) and the resume state ``checkpoint.pt``
(:class:`TrainingCheckpoint`).

:class:`StageRecord` keys: ``stage`` (folder), ``name``, ``role``, ``arch``, ``method``, ``acceleration``, ``key``,
``parents`` ({role: key}), ``config`` (the determinants hashed into ``key``), ``model_options``, ``mask_digest``,
``mask_file`` (format 2), ``image_size``, ``parameters``, ``phases``, ``setup``, ``loss``, ``student_arch``,
``init_teacher``, ``tool_version``, ``complete`` and, once complete, ``best_epoch``, ``best_val_loss``,
``train_seconds``, ``slices_per_second``; ``format`` (absent: 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from compressor.errors import InputError
from compressor.io import load_json, save_json
from compressor.json_record import choice, integer, json_object, number, text
from compressor.rundir.layout import STAGE_FILE
from compressor.rundir.roles import SETUPS, STAGE_ROLES, Role
from compressor.rundir.version import FORMAT_VERSION, check_format


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
        raw = json_object(raw, path)
        for required in ("role", "arch", "acceleration"):
            if required not in raw:
                raise InputError(f"missing key {required!r}", path)
        version = check_format(raw.get("format", 1), path, "format")
        size = raw.get("image_size")
        return cls(
            stage=str(raw.get("stage", path.parent.name)), name=str(raw.get("name", path.parent.name)),
            role=Role(choice(raw["role"], STAGE_ROLES, path, "role")),
            arch=text(raw["arch"], path, "arch", optional=False),
            acceleration=number(raw["acceleration"], path, "acceleration", optional=False),
            key=str(raw.get("key", "")), method=text(raw.get("method"), path, "method"),
            parents=dict(json_object(raw.get("parents", {}), path, "parents")),
            config=dict(json_object(raw.get("config", {}), path, "config")),
            model_options=dict(json_object(raw.get("model_options", {}), path, "model_options")),
            mask_digest=text(raw.get("mask_digest"), path, "mask_digest"),
            mask_file=text(raw.get("mask_file"), path, "mask_file"),
            image_size=tuple(int(v) for v in size) if isinstance(size, list) else None,
            parameters=integer(raw.get("parameters"), path, "parameters"),
            phases=tuple(raw.get("phases") or ()),
            setup=choice(raw.get("setup", "image"), SETUPS, path, "setup"),
            loss=str(raw.get("loss", "l1")),
            student_arch=text(raw.get("student_arch"), path, "student_arch"),
            init_teacher=text(raw.get("init_teacher"), path, "init_teacher"),
            tool_version=text(raw.get("tool_version"), path, "tool_version"),
            complete=raw.get("complete") is True,
            best_epoch=integer(raw.get("best_epoch"), path, "best_epoch"),
            best_val_loss=number(raw.get("best_val_loss"), path, "best_val_loss"),
            train_seconds=number(raw.get("train_seconds"), path, "train_seconds"),
            slices_per_second=number(raw.get("slices_per_second"), path, "slices_per_second"),
            format=version,
        )



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


@dataclass(frozen=True)
class TrainingCheckpoint:
    """``checkpoint.pt``: where a stage's training stands after its last finished epoch (the epoch's commit point).

    The file holds :meth:`to_state`, plain containers of tensors and numbers (``torch.save``; read back with
    ``weights_only=True``, :mod:`compressor.training.checkpoint`).

    Attributes:
        phase: the index of the training phase of that epoch.
        history: every finished epoch's entry of ``history.json``.
        best_val: the smallest validation L1 so far (``inf`` before the first epoch).
        best_epoch: its epoch, counting from 1 (``-1`` before the first).
        models: ``{part: state dict}``: the output model (``"model"``) and the stage's other saved parts.
        optimizer: the phase's optimizer state dict.
        scheduler: the phase's learning-rate scheduler state dict.
    """

    phase: int
    history: list[dict[str, Any]]
    best_val: float
    best_epoch: int
    models: dict[str, dict[str, Any]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    def to_state(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}

    @classmethod
    def from_state(cls, raw: Any, path: Path) -> TrainingCheckpoint:
        """The checkpoint of ``raw`` (what ``torch.load`` returned); a missing or mistyped key is one line."""
        raw = json_object(raw, path, what="a resume state (an object)")
        for key, kind in (("history", list), ("models", dict), ("optimizer", dict), ("scheduler", dict)):
            if not isinstance(raw.get(key), kind):
                raise InputError(f"not a resume state of this tool: expected {kind.__name__} {key!r}; delete it to "
                                 "retrain the stage from its start", path, key)
        return cls(phase=int(number(raw.get("phase"), path, "phase", optional=False)), history=list(raw["history"]),
                   best_val=number(raw.get("best_val"), path, "best_val", optional=False),
                   best_epoch=int(number(raw.get("best_epoch"), path, "best_epoch", optional=False)),
                   models=dict(raw["models"]), optimizer=raw["optimizer"], scheduler=raw["scheduler"])
