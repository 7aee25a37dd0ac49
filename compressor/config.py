"""Typed run configuration, read from the TOML presets in ``configs/`` and overridable from the CLI.

A config has five sections, each a dataclass: ``[data]`` (:class:`~compressor.data.section.DataConfig`, defined with
the data it describes), ``[model]``, ``[train]``, ``[sft]`` and ``[kd]`` (here). Unknown sections or keys are
rejected with a message naming the file, the section and the key. Every value is checked when the config is loaded
(TOML preset, ``config.json``, ``--set``, CLI options) against its field's annotation (:mod:`compressor.field_checks`):
its type, its range and, for a choice, that it is one of the valid names: a closed vocabulary
(:mod:`compressor.vocabulary`) or the names of a registry (architectures, KD methods, mask types, data sources). A
bad value is one :class:`InputError` line naming the file (when there is one), the key, the value and the valid ones.
Values stay plain strings and numbers, so ``config.json`` and the stage keys derived from it do not depend on how
they were checked.

``configs/<preset>.toml`` files are complete descriptions; the CLI applies overrides on top with
:func:`apply_overrides`. A run directory records the exact config it ran (``config.json``), and every stage's cache
key is derived from the parts of it that determine that stage.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import tomllib

from compressor.data.section import DataConfig
from compressor.errors import InputError
from compressor.field_checks import AtLeast, Between, Count, NonNegative, OneOf, Positive, Valid
from compressor.kd import KD_LOSSES
from compressor.models import parse_architecture
from compressor.vocabulary import BlockForm, KDMode, KDSchedule

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def _device(name: str) -> None:
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise InputError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")


Architecture = Annotated[str, Valid(parse_architecture)]
KDMethod = Annotated[str, OneOf("KD method", KD_LOSSES.names, extra=("all",), ignore_case=True)]
RegisteredKDMethod = Annotated[str, OneOf("KD method", KD_LOSSES.names, ignore_case=True)]
KDModeName = Annotated[str, OneOf.enum("KD mode", KDMode)]


@dataclass
class ModelConfig:
    """Teacher and student architectures and the options recorded with every model.

    ``init_teacher``: a weights file (``.safetensors``) or a stage directory of another run whose
    ``best.safetensors`` starts the teacher and the SFT teacher (Fig. 7: pre-trained on another dataset, fine-tuned
    here); the from-scratch SFT teacher is then trained too, as the reference curve.

    ``image_channels``: 1, the paper's real image (the real part of every inverse transform is kept); 2, the complex
    image as real and imaginary channels (DC-CNNs only), for data with phase: measured k-space, or ``data.phase``.
    """

    teacher: Architecture = "d5c5"
    student: list[Architecture] = field(default_factory=lambda: ["d3c5"])
    block_form: Annotated[str, OneOf.enum("block form", BlockForm)] = "plain"
    block_padding: Annotated[int, AtLeast(0)] = 5
    dc_lambda: NonNegative | None = None
    dc_learnable: bool = False
    init_teacher: str | None = None
    image_channels: Annotated[int, Between(1, 2)] = 1


@dataclass
class TrainConfig:
    """Optimisation, shared by every stage (per-stage epochs below).

    ``tensorboard``: every stage writes TensorBoard events while it trains (:mod:`compressor.training.watch`); off,
    nothing is logged and nothing else changes (no stage key, result or weight depends on it).
    """

    epochs_teacher: Count = 150
    epochs_student: Count = 150
    epochs_kd: Count = 150
    epochs_sft: Count = 150
    batch_size: Count = 4
    lr: NonNegative = 1e-3  # 0 keeps the starting weights (a warm-start check)
    lr_step: Count | None = 40
    lr_gamma: Positive = 0.1
    seed: int = 0
    device: Annotated[str, Valid(_device)] = "auto"
    amp: bool = False
    num_workers: Annotated[int, AtLeast(0)] = 0
    threads: Count | None = None
    teacher_cache_mib: Annotated[int, AtLeast(0)] = 2048  # a distillation's frozen-teacher features (0: off)
    tensorboard: bool = True


@dataclass
class SFTConfig:
    """Student-friendly teacher loss ``w_T·L_rec^T + w_S·L_rec^S + w_I·L_imit`` (eqs. 3-5; paper: 1, 1, 1).

    ``imitation_per_pixel``: divide the imitation term by the pixel count, as the authors' code did.
    ``feature_ablation``: also run the feature-domain SFT of Park et al. 2021 (Tables 2 and 4) through the same
    stages: residual CNNs ``rcnnL`` (ResNet units) with the teacher's and student's conv counts (d5c5 → rcnn25,
    d3c5 → rcnn15), no intermediate DF or image outputs, every loss MSE.
    """

    teacher_weight: NonNegative = 1.0
    student_weight: NonNegative = 1.0
    imitation_weight: NonNegative = 1.0
    imitation_per_pixel: bool = False
    feature_ablation: bool = False


@dataclass
class KDConfig:
    """Distillation: method(s), weight, schedule.

    ``method``: a registered KD loss name or ``all``. ``weight``: ``None`` uses each method's documented default.
    ``schedule``: ``joint`` (the paper's Algorithm 1: L1 + weighted KD loss together) or ``two-phase`` (the
    authors' scripts: feature phase on the KD loss alone for ``feature_epochs``, then L1 fine-tuning).
    ``mode``: ``paper`` (each method as its own paper defines it) or ``authors`` (the authors' variants).
    ``random_init``: also run SFT-KD with a randomly initialised student (Table 5 ablation).
    ``method_weights``: weights per KD mode and method (a TOML table, ``{ paper = { sp = 30.0, cc = 200.0 } }``) for
    a preset whose data and budget put some methods' defaults out of balance; a method it does not name, or a run in
    another mode, keeps the documented default; ``weight``, when set, overrides it for every method. Method names
    ignore case (stored lower-case). An override (``--set kd.method_weights=...``) replaces the whole table.
    """

    method: list[KDMethod] = field(default_factory=lambda: ["at"])
    weight: NonNegative | None = None
    method_weights: dict[KDModeName, dict[RegisteredKDMethod, NonNegative]] = field(default_factory=dict)
    schedule: Annotated[str, OneOf.enum("KD schedule", KDSchedule)] = "joint"
    mode: Annotated[str, OneOf.enum("KD mode", KDMode)] = "paper"
    feature_epochs: Count | None = None
    random_init: bool = False

    def __post_init__(self) -> None:
        canonical: dict[str, dict[str, float]] = {}
        for mode, weights in self.method_weights.items():
            canonical[mode] = {}
            for name, weight in weights.items():
                if name.lower() in canonical[mode]:
                    raise InputError(f"[kd] method_weights.{mode} names {name.lower()!r} twice")
                canonical[mode][name.lower()] = weight
        self.method_weights = canonical


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTION_TYPES: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sft": SFTConfig,
                                  "kd": KDConfig}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field's type annotation, converting ints to floats and scalars to lists, then
    against the annotation's metadata (:class:`OneOf`, :class:`Between`, :class:`Valid`)."""
    if typing.get_origin(annotation) is Annotated:
        base, *checks = typing.get_args(annotation)
        value = _coerce(value, base, where)
        for check in checks:
            value = check.check(value, where)
        return value
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _coerce(value, next(o for o in options if o is not type(None)), where)
    if typing.get_origin(annotation) is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise InputError(f"{where} must be a table such as {{ name = value }}, got {value!r}")
        return {_coerce(k, key_type, f"{where} key"): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation)
        items = value if isinstance(value, list) else [value]
        if not items:
            raise InputError(f"{where} must name at least one value, got []")
        return [_coerce(v, inner, where) for v in items]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise InputError(f"{where} must be {annotation.__name__}, got {value!r}")
    if annotation is float and not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {value!r}")
    return value


def build_section(name: str, values: dict[str, Any], source: str) -> Any:
    """One config section from a dict; unknown keys and wrong types raise :class:`InputError`."""
    cls = SECTION_TYPES[name]
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"[{name}] got unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}", source)
    kwargs = {k: _coerce(v, hints[k], f"[{name}] {k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, rejecting unknown sections and keys and sections that are not
    tables."""
    unknown = sorted(set(raw) - set(SECTION_TYPES) - {"preset"})
    if unknown:
        raise InputError(f"unknown section {unknown[0]!r}; known sections: {', '.join(SECTION_TYPES)}", source)
    for name in SECTION_TYPES:
        if not isinstance(raw.get(name, {}), dict):
            raise InputError(f"[{name}] must be a table of keys (a [{name}] section), got {raw[name]!r}", source)
    sections = {name: build_section(name, raw.get(name, {}), source) for name in SECTION_TYPES}
    return RunConfig(**sections, preset=str(raw.get("preset", "custom")))


def config_from_file(raw: dict[str, Any], path: Path) -> RunConfig:
    """:func:`config_from_dict` of a file's contents; every error names the file."""
    try:
        return config_from_dict(raw, str(path))
    except InputError as error:
        if error.path is not None:
            raise
        raise InputError(str(error), path) from None


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(preset_or_path: str) -> RunConfig:
    """Load a preset name from ``configs/`` (``smoke``, ``quick``, ``paper``) or a TOML file path.

    A file may start from another preset with a top-level ``extends = "NAME"`` (a preset name or a path); its
    sections' keys then override the base's key by key (``quick-complex`` is ``quick`` with two keys changed).
    """
    raw, path = _read_config(preset_or_path, seen=())
    raw.setdefault("preset", path.stem)
    return config_from_file(raw, path)


def _config_path(preset_or_path: str) -> Path:
    path = Path(preset_or_path)
    if not path.suffix and not CONFIG_DIR.is_dir():
        raise InputError(f"preset {preset_or_path!r}: the presets folder {CONFIG_DIR} is missing (presets ship "
                         "with the source checkout: install it with `pip install -e .`, or pass a TOML file path)")
    if not path.suffix:
        path = CONFIG_DIR / f"{preset_or_path}.toml"
        if not path.is_file():
            raise InputError(f"unknown preset {preset_or_path!r}; valid presets: {', '.join(list_presets())}")
    if not path.is_file():
        raise InputError("config file not found", path)
    return path


def _read_config(preset_or_path: str, seen: tuple[Path, ...]) -> tuple[dict[str, Any], Path]:
    """The raw sections of a config file with its ``extends`` chain merged in, and the file's path."""
    path = _config_path(preset_or_path)
    if path.resolve() in seen:
        raise InputError(f"'extends' loops back to {path.name}", path)
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"not valid TOML ({error})", path) from None
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw, path
    if not isinstance(base_name, str):
        raise InputError(f"'extends' must name a preset or a file, got {base_name!r}", path)
    base, _ = _read_config(base_name, (*seen, path.resolve()))
    merged = {name: dict(values) if isinstance(values, dict) else values for name, values in base.items()}
    for name, values in raw.items():
        merged[name] = {**merged.get(name, {}), **values} if isinstance(values, dict) else values
    return merged, path


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy with ``{"section.key": value}`` overrides applied (``None`` values are skipped)."""
    raw = config.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTION_TYPES or key not in {f.name for f in fields(SECTION_TYPES[section])}:
            raise InputError(f"unknown config key {dotted!r}")
        raw[section][key] = value
    return config_from_dict(raw, "command line")
