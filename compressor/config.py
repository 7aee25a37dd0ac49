"""Typed run configuration, read from the TOML presets in ``configs/`` and overridable from the CLI.

A config has five sections, each a dataclass; unknown sections or keys are rejected with a message naming the
file, the section and the key. Every value is checked when the config is loaded (TOML preset, ``--set``, CLI
options): its type, its range (:class:`AtLeast`, :class:`Above`, :class:`Between`) and, for a choice, that it is
one of the valid names (:class:`OneOf`): a closed vocabulary of this module (:class:`Task`, :class:`BlockForm`,
:class:`KDSchedule`, :class:`KDMode`) or the names of a registry (architectures, KD methods, mask types, data
sources), read from the registry itself when the config is checked. A bad value is one :class:`InputError` line
naming the key, the value and the valid ones. Values stay plain strings and numbers, so ``config.json`` and the
stage keys derived from it do not depend on how they were checked.

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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import tomllib

from compressor.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Task(StrEnum):
    """``data.task``: ``reconstruction`` (undersampled k-space → image) or ``sr`` (super-resolution)."""

    RECONSTRUCTION = "reconstruction"
    SR = "sr"


class BlockForm(StrEnum):
    """``model.block_form``: a block's output is the new image (``plain``) or image + CNN(image) (``residual``)."""

    PLAIN = "plain"
    RESIDUAL = "residual"


class Phase(StrEnum):
    """``data.phase``: the embedded magnitude data as they are (``none``) or multiplied by a smooth, seeded,
    slice-varying synthetic phase (``synthetic``, a simulation that lets the complex path run offline)."""

    NONE = "none"
    SYNTHETIC = "synthetic"


class KDSchedule(StrEnum):
    """``kd.schedule``: the paper's Algorithm 1 (``joint``) or the authors' scripts (``two-phase``)."""

    JOINT = "joint"
    TWO_PHASE = "two-phase"


class KDMode(StrEnum):
    """``kd.mode``: each KD method as its own paper defines it (``paper``) or the authors' variant (``authors``)."""

    PAPER = "paper"
    AUTHORS = "authors"


def values(enumeration: type[Enum]) -> tuple[str, ...]:
    """The string values of a choice enumeration, in declaration order (for ``click.Choice`` and messages)."""
    return tuple(member.value for member in enumeration)


@dataclass(frozen=True)
class OneOf:
    """Field metadata: the value must be one of ``names()``, a closed vocabulary or a registry's names.

    ``kind`` names what the value is in messages (``unknown KD schedule 'x'``). ``names`` is called when a config
    is checked, so registries (which import torch) load only then. ``extra`` are names valid besides those (``all``
    for the KD methods). Registry names ignore case.
    """

    kind: str
    names: Callable[[], Iterable[str]]
    extra: tuple[str, ...] = ()
    ignore_case: bool = False

    @classmethod
    def enum(cls, kind: str, enumeration: type[Enum]) -> OneOf:
        return cls(kind, lambda: values(enumeration))

    def check(self, value: str, where: str) -> str:
        valid = [*self.names(), *self.extra]
        if (value.lower() if self.ignore_case else value) not in valid:
            raise InputError(f"{where}: unknown {self.kind} {value!r}; valid: {', '.join(valid)}")
        return value


@dataclass(frozen=True)
class Between:
    """Field metadata: a number in a range; ``low``/``high`` of ``None`` are open ends, ``strict`` excludes ``low``."""

    low: float | None = None
    high: float | None = None
    strict: bool = False

    def check(self, value: float, where: str) -> float:
        below = self.low is not None and (value <= self.low if self.strict else value < self.low)
        if below or (self.high is not None and value > self.high):
            bounds = [f"{'>' if self.strict else '>='} {self.low:g}"] if self.low is not None else []
            bounds += [f"<= {self.high:g}"] if self.high is not None else []
            raise InputError(f"{where} must be {' and '.join(bounds)}, got {value!r}")
        return value


def AtLeast(low: float) -> Between:  # noqa: N802  (reads as a type in annotations)
    return Between(low)


def Above(low: float) -> Between:  # noqa: N802
    return Between(low, strict=True)


@dataclass(frozen=True)
class Valid:
    """Field metadata: ``check(value)`` raises :class:`InputError` for a bad value (e.g. an architecture name)."""

    check_value: Callable[[Any], None]

    def check(self, value: Any, where: str) -> Any:
        try:
            self.check_value(value)
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
        return value


def _data_sources() -> list[str]:
    from compressor.data import MNI_SOURCE, VOLUME_SOURCES

    return [MNI_SOURCE, *VOLUME_SOURCES.names()]


def _mask_types() -> list[str]:
    from compressor.masks import MASKS

    return MASKS.names()


def _interpolations() -> tuple[str, ...]:
    from compressor.physics.degradation import INTERPOLATIONS

    return INTERPOLATIONS


def _fastmri_target_keys() -> tuple[str, ...]:
    from compressor.data.readers import FastMRIReader

    return FastMRIReader.RECONSTRUCTION_KEYS


def _kd_methods() -> list[str]:
    from compressor.kd import KD_LOSSES

    return KD_LOSSES.names()


def _architecture(name: str) -> None:
    from compressor.models import parse_architecture

    parse_architecture(name)


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def _device(name: str) -> None:
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise InputError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")


MIN_IMAGE_SIZE = 8
"""The smallest square image a run accepts: a generated mask needs lines outside its fully sampled centre band."""

Count = Annotated[int, AtLeast(1)]
NonNegative = Annotated[float, AtLeast(0)]
Positive = Annotated[float, Above(0)]
Architecture = Annotated[str, Valid(_architecture)]
KDMethod = Annotated[str, OneOf("KD method", _kd_methods, extra=("all",), ignore_case=True)]
RegisteredKDMethod = Annotated[str, OneOf("KD method", _kd_methods, ignore_case=True)]
KDModeName = Annotated[str, OneOf.enum("KD mode", KDMode)]


@dataclass
class DataConfig:
    """Where slices come from and how they are undersampled.

    ``source``: ``mni`` (embedded MNI ICBM152 T1 template), ``project`` (this tool's HDF5 layout), ``fastmri``
    (single-coil HDF5), ``nifti`` (MRBrainS/ACDC volumes), ``authors`` (the SFT-KD-Recon repository's HDF5
    layout). For file sources, ``train``/``validation``/``test`` name a file or a folder of files.

    ``task``: ``reconstruction`` (undersampled k-space → image, the paper's main task) or ``sr`` (super-resolution,
    Appendix B: the input is the image degraded by k-space truncation for scale ``s`` and interpolated back with
    ``sr_interpolation``, see :mod:`compressor.physics.degradation`); for ``sr`` each ``acceleration`` is the
    integer scale ``s`` (Table 9's "4x") and no mask is used.

    ``image_size``: the side of the square images that are scored (losses and metrics). Images-only sources are
    centre-cropped/padded to it; sources with measured k-space keep the grid their phase-encode lines were measured on
    (k-space cannot be cropped along them), and losses and metrics take its ``image_size`` centre crop.

    ``phase``: ``synthetic`` multiplies the embedded MNI magnitude images by a smooth, seeded synthetic phase
    (:mod:`compressor.data.phase`); file sources carry their own phase (or none) and refuse it.
    """

    task: Annotated[str, OneOf.enum("task", Task)] = "reconstruction"
    sr_interpolation: Annotated[str, OneOf("SR interpolation", _interpolations)] = "bicubic"
    source: Annotated[str, OneOf("data source", _data_sources, ignore_case=True)] = "mni"
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    image_size: Annotated[int, AtLeast(MIN_IMAGE_SIZE)] = 240
    downsample: Count = 1
    # Reconstruction: the undersampling factor R (1 leaves nothing to reconstruct); sr: the integer scale s.
    acceleration: list[Annotated[float, Above(1)]] = field(default_factory=lambda: [4.0])
    mask_type: Annotated[str, OneOf("mask type", _mask_types, ignore_case=True)] = "random"
    mask_seed: int = 0
    center_fraction: Annotated[float, Between(0, 1, strict=True)] | None = None
    mask_file: str | None = None
    mask_centred: bool = False
    max_train_slices: Count | None = None
    max_eval_slices: Count | None = None
    fastmri_target_key: Annotated[str, OneOf("fastMRI target key", _fastmri_target_keys)] = "reconstruction_esc"
    cache_dir: str | None = None
    phase: Annotated[str, OneOf.enum("phase", Phase)] = "none"


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
    """Optimisation, shared by every stage (per-stage epochs below)."""

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
    """Build a :class:`RunConfig` from nested dicts, rejecting unknown sections and keys."""
    unknown = sorted(set(raw) - set(SECTION_TYPES) - {"preset"})
    if unknown:
        raise InputError(f"unknown section {unknown[0]!r}; known sections: {', '.join(SECTION_TYPES)}", source)
    sections = {name: build_section(name, raw.get(name, {}), source) for name in SECTION_TYPES}
    return RunConfig(**sections, preset=str(raw.get("preset", "custom")))


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(preset_or_path: str) -> RunConfig:
    """Load a preset name from ``configs/`` (``smoke``, ``quick``, ``paper``) or a TOML file path.

    A file may start from another preset with a top-level ``extends = "NAME"`` (a preset name or a path); its
    sections' keys then override the base's key by key (``quick-complex`` is ``quick`` with two keys changed).
    """
    raw, path = _read_config(preset_or_path, seen=())
    raw.setdefault("preset", path.stem)
    return config_from_dict(raw, str(path))


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
