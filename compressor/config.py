"""Typed run configuration, read from the TOML presets in ``configs/`` and overridable from the CLI.

A config has five sections, each a dataclass; unknown sections or keys are rejected with a message naming the
file, the section and the key. ``configs/<preset>.toml`` files are complete descriptions; the CLI applies
overrides on top with :func:`apply_overrides`. A run directory records the exact config it ran
(``config.json``), and every stage's cache key is derived from the parts of it that determine that stage.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from compressor.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    """

    task: str = "reconstruction"
    sr_interpolation: str = "bicubic"
    source: str = "mni"
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    image_size: int = 240
    downsample: int = 1
    acceleration: list[float] = field(default_factory=lambda: [4.0])
    mask_type: str = "random"
    mask_seed: int = 0
    center_fraction: float | None = None
    mask_file: str | None = None
    mask_centred: bool = False
    max_train_slices: int | None = None
    max_eval_slices: int | None = None
    fastmri_target_key: str = "reconstruction_esc"
    cache_dir: str | None = None


@dataclass
class ModelConfig:
    """Teacher and student architectures and the options recorded with every model.

    ``init_teacher``: a weights file (``.safetensors``) or a stage directory of another run whose
    ``best.safetensors`` starts the teacher and the SFT teacher (Fig. 7: pre-trained on another dataset, fine-tuned
    here); the from-scratch SFT teacher is then trained too, as the reference curve.
    """

    teacher: str = "d5c5"
    student: list[str] = field(default_factory=lambda: ["d3c5"])
    block_form: str = "plain"
    block_padding: int = 5
    dc_lambda: float | None = None
    dc_learnable: bool = False
    init_teacher: str | None = None


@dataclass
class TrainConfig:
    """Optimisation, shared by every stage (per-stage epochs below)."""

    epochs_teacher: int = 150
    epochs_student: int = 150
    epochs_kd: int = 150
    epochs_sft: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    lr_step: int | None = 40
    lr_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    threads: int | None = None


@dataclass
class SFTConfig:
    """Student-friendly teacher loss ``w_T·L_rec^T + w_S·L_rec^S + w_I·L_imit`` (eqs. 3-5; paper: 1, 1, 1).

    ``imitation_per_pixel``: divide the imitation term by the pixel count, as the authors' code did.
    ``feature_ablation``: also run the feature-domain SFT of Park et al. 2021 (Tables 2 and 4) through the same
    stages: residual CNNs ``rcnnL`` (ResNet units) with the teacher's and student's conv counts (d5c5 → rcnn25,
    d3c5 → rcnn15), no intermediate DF or image outputs, every loss MSE.
    """

    teacher_weight: float = 1.0
    student_weight: float = 1.0
    imitation_weight: float = 1.0
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
    """

    method: list[str] = field(default_factory=lambda: ["at"])
    weight: float | None = None
    schedule: str = "joint"
    mode: str = "paper"
    feature_epochs: int | None = None
    random_init: bool = False


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
    """Check ``value`` against a field's type annotation, converting ints to floats and scalars to lists."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _coerce(value, next(o for o in options if o is not type(None)), where)
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation)
        return [_coerce(v, inner, where) for v in (value if isinstance(value, list) else [value])]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise InputError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def build_section(name: str, values: dict[str, Any], source: str) -> Any:
    """One config section from a dict; unknown keys and wrong types raise :class:`InputError`."""
    cls = SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
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
    """Load a preset name from ``configs/`` (``smoke``, ``quick``, ``paper``) or a TOML file path."""
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
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"not valid TOML ({error})", path) from None
    raw.setdefault("preset", path.stem)
    return config_from_dict(raw, str(path))


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
