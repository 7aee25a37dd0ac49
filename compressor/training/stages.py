"""Stage identity and the plan of a run: every stage a config trains, with its key, computed without training
or reading data.

A stage's directory is ``stages/<stage>[-<method>]-<arch>-<key>``; ``key`` hashes everything that determines its
result (architecture, model options, data, acceleration, mask digest, optimisation settings, per-stage epochs,
loss weights, KD method/mode/schedule, and the keys of the stages it starts from). Which config fields enter a key
is one rule, :func:`compressor.rundir.key_fields`. Re-running with another method or student reuses every stage
already complete; changing an option retrains only the stages that depend on it.

:func:`plan_run` is the graph of Algorithm 1 (see :mod:`compressor.training.pipeline`) as data: per acceleration
and :class:`Setup`, the teacher, then per student its student, SFT teacher (and, warm-started, the from-scratch
reference) and the KD stages of every method. The pipeline runs that plan; tests check committed keys against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from compressor import rundir
from compressor.config import RunConfig
from compressor.data.sources import data_source
from compressor.errors import InputError
from compressor.io import file_digest
from compressor.masks import SamplingMask
from compressor.rundir import Role, Setup

# Bump when a code change alters what a stage computes, so old caches are not reused silently.
# 2: a distillation's teacher features come from a per-slice cache (batch of one: other float rounding).
TRAINING_CODE_VERSION = 2

PAPER_METHODS = {"reconstruction": ["at", "fitnets", "sp", "fsp", "cc"],  # Table 1
                 "sr": ["at", "fitnets", "cc", "pkt", "ft", "nst"]}  # Table 9


def digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StageSpec:
    """One node of the stage graph: what it trains and everything its result depends on."""

    role: str
    arch: str
    acceleration: float
    method: str | None = None
    determinants: dict[str, Any] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in rundir.STAGE_ROLES:
            raise ValueError(f"unknown stage role {self.role!r}")

    @property
    def key(self) -> str:
        return digest({"role": self.role, "arch": self.arch, "acceleration": self.acceleration,
                       "method": self.method, "determinants": self.determinants, "parents": self.parents,
                       "code_version": TRAINING_CODE_VERSION})

    @property
    def name(self) -> str:
        """Display name, the ``name`` field of results.json: ``role[/method]/arch@Rx``."""
        method = f"/{self.method}" if self.method else ""
        return f"{self.role}{method}/{self.arch}@{self.acceleration:g}x"

    @property
    def folder(self) -> str:
        """The stage folder's name, ``<role>[-<method>]-<arch>-<key>``."""
        method = f"-{self.method}" if self.method else ""
        return f"{self.role}{method}-{self.arch}-{self.key}"

    def directory(self, run_dir: Path) -> Path:
        return Path(run_dir) / rundir.STAGES_FOLDER / self.folder


def resolve_methods(names: list[str], task: str = "reconstruction") -> list[str]:
    """KD method names, checked against the registry; ``all`` is the task's table of the paper."""
    from compressor.kd import KD_LOSSES

    if any(n.lower() == "all" for n in names):
        return list(PAPER_METHODS[task])
    for name in names:
        KD_LOSSES.get(name)
    return [n.lower() for n in names]


def kd_weight(config: RunConfig, method: str) -> float:
    """``kd.weight`` if set, else the method's entry in ``kd.method_weights`` for the configured mode, else its
    documented default for that mode. Stage keys hold this resolved weight, so a stage is the same however its weight
    was given."""
    from compressor.kd import KD_LOSSES

    kd = config.kd
    if kd.weight is not None:
        return kd.weight
    weights = kd.method_weights.get(kd.mode, {})  # names stored lower-case (KDConfig)
    if method.lower() in weights:
        return weights[method.lower()]
    return KD_LOSSES.get(method).default_weight_for(kd.mode)


def conv_layers(model: nn.Module) -> int:
    """The number of 2-D convolutions in ``model`` (d5c5: 25, d3c5: 15)."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def feature_domain_setup(teacher: nn.Module, students: list[nn.Module]) -> Setup:
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
        path = path / rundir.BEST_WEIGHTS_FILE
    if not path.is_file():
        raise InputError("no such weights file (give a .safetensors file or a stage directory of another run)", path)
    return path


def model_options(config: RunConfig):
    """The :class:`~compressor.models.ModelOptions` every model of the run is built with."""
    from compressor.models import ModelOptions

    m = config.model
    return ModelOptions(block_form=m.block_form, block_padding=m.block_padding, dc_lambda=m.dc_lambda,
                        dc_learnable=m.dc_learnable, image_channels=m.image_channels)


@dataclass(frozen=True)
class PlannedStage:
    """A stage of the plan and how it is built.

    Attributes:
        spec: its identity (key, name, folder).
        setup: the setup it belongs to.
        kind: ``supervised`` (teacher, student), ``sft_teacher`` or ``distillation``.
        student_arch: the SFT teacher's student (whose branches it trains); ``None`` for other kinds.
        init: warm-start weights (``model.init_teacher``) of the teacher and SFT teacher, else ``None``.
        teacher: a distillation's teacher stage.
        init_from: the SFT teacher whose student blocks initialise an ``sft_kd`` student.
        record_role: the role ``results.json`` gives it when that differs from ``spec.role``
            (``sft_teacher_scratch``: the from-scratch reference of a warm-started run).
    """

    spec: StageSpec
    setup: Setup
    kind: str
    student_arch: str | None = None
    init: Path | None = None
    teacher: PlannedStage | None = None
    init_from: PlannedStage | None = None
    record_role: Role | None = None

    @property
    def role(self) -> Role:
        return self.record_role or Role(self.spec.role)

    @property
    def epochs(self) -> int:
        """The stage's epochs (part of its key)."""
        return int(self.spec.determinants["epochs"])


@dataclass
class RunPlan:
    """Every stage of a config, per acceleration, in the order they run (and ``results.json`` lists them)."""

    config: RunConfig
    methods: list[str]
    setups: list[Setup]
    masks: dict[float, SamplingMask]
    teacher_parameters: dict[str, int]
    warm_start: WarmStart | None
    stages: dict[float, list[PlannedStage]]

    def all_stages(self) -> list[PlannedStage]:
        return [stage for stages in self.stages.values() for stage in stages]


def plan_run(config: RunConfig, masks: dict[float, SamplingMask] | None = None, world_size: int = 1) -> RunPlan:
    """The stages ``config`` trains and their keys, without training or reading slices.

    ``world_size``: the processes that train them (``torchrun``); above 1 it enters every key, since the global
    batch is ``train.batch_size × world_size``.

    Builds each model once (which checks every architecture name) and each acceleration's mask with
    :func:`compressor.data.build_mask` (or takes ``masks``), on the grid of :func:`compressor.data.run_grid` (which
    reads file headers for 2-channel models only); the warm-start weights, when set, are checked to fit the teacher.
    """
    from compressor.data import build_mask, run_grid
    from compressor.models import build_model
    from compressor.training.checkpoint import load_weights

    options = model_options(config)
    methods = resolve_methods(config.kd.method, config.data.task)
    image = Setup("image", config.model.teacher, tuple(config.model.student))
    built = {arch: build_model(arch, options) for arch in (image.teacher, *image.students)}
    setups = [image]
    if config.sft.feature_ablation:
        feature = feature_domain_setup(built[image.teacher], [built[arch] for arch in image.students])
        built |= {arch: build_model(arch, options) for arch in (feature.teacher, *feature.students)}
        setups.append(feature)
    warm_start = None
    if config.model.init_teacher is not None:
        path = resolve_init_weights(config.model.init_teacher)
        load_weights(path, built[image.teacher])
        warm_start = WarmStart(path, file_digest(path))
    masks = dict(masks or {})
    for acceleration in config.data.acceleration:
        if acceleration not in masks:
            grid = run_grid(config.data, acceleration, config.model.image_channels)
            masks[acceleration] = build_mask(config.data, acceleration, grid)
    planner = _Planner(config, methods, options.to_dict(), warm_start, world_size)
    stages = {acceleration: [stage for setup in setups for stage in planner.graph(masks[acceleration], acceleration,
                                                                                  setup)]
              for acceleration in config.data.acceleration}
    return RunPlan(config, methods, setups, masks,
                   {setup.name: built[setup.teacher].num_parameters() for setup in setups}, warm_start, stages)


class _Planner:
    def __init__(self, config: RunConfig, methods: list[str], options: dict[str, Any], warm: WarmStart | None,
                 world_size: int = 1):
        from compressor.models import ModelOptions

        self.config, self.methods, self.options, self.warm = config, methods, options, warm
        self.world_size = world_size
        self.option_defaults = ModelOptions().to_dict()
        self.phase_formation = (data_source(config.data.source).phase_formation()
                                if config.model.image_channels == 2 else 1)

    def spec(self, mask: SamplingMask, acceleration: float, setup: Setup, role: str, arch: str, epochs: int,
             method: str | None = None, parents: dict[str, str] | None = None, **extra: Any) -> StageSpec:
        stage = {**extra, "loss": setup.loss, "sr_scale": acceleration, "world_size": self.world_size,
                 "phase_formation": self.phase_formation}
        determinants = rundir.stage_determinants(self.config.to_dict(), self.options, self.option_defaults,
                                                 mask.digest(), epochs, stage)
        return StageSpec(role, arch, acceleration, method, determinants, parents or {})

    def graph(self, mask: SamplingMask, acceleration: float, setup: Setup) -> list[PlannedStage]:
        """Stages 1-5 (and the Table 5 ablation) of ``setup`` for every student and method; shared stages are
        listed once. The image setup's teacher and SFT teacher are warm-started when ``model.init_teacher`` is
        set, and the SFT teacher is then also planned from scratch."""
        cfg, epochs = self.config, self.config.train
        warm = self.warm if setup.name == "image" else None
        init = warm.path if warm else None
        warm_key = {"init_teacher": warm.digest} if warm else {}

        def spec(*args: Any, **kwargs: Any) -> StageSpec:
            return self.spec(mask, acceleration, setup, *args, **kwargs)

        teacher = PlannedStage(spec("teacher", setup.teacher, epochs.epochs_teacher, **warm_key), setup,
                               "supervised", init=init)
        planned = [teacher]
        task = cfg.data.task
        sft_determinants = rundir.key_fields("sft", asdict(cfg.sft), task)
        for student_arch in setup.students:
            student = PlannedStage(spec("student", student_arch, epochs.epochs_student), setup, "supervised")
            sft_spec = partial(spec, "sft_teacher", setup.teacher, epochs.epochs_sft, student_arch=student_arch,
                               sft=sft_determinants)

            sft = PlannedStage(sft_spec(**warm_key), setup, "sft_teacher", student_arch=student_arch, init=init)
            planned += [student, sft]
            if init:
                planned.append(PlannedStage(sft_spec(), setup, "sft_teacher", student_arch=student_arch,
                                            record_role=Role.SFT_TEACHER_SCRATCH))
            variants = [("std_kd", teacher, None), ("sft_kd", sft, sft)]
            if cfg.kd.random_init:
                variants.append(("sft_kd_random", sft, None))
            for method in self.methods:
                # The resolved weight, not the option: a changed default must not reuse stages trained with the old.
                kd = rundir.key_fields("kd", {**asdict(cfg.kd), "method": method, "weight": kd_weight(cfg, method)},
                                       task)
                for role, source, init_from in variants:
                    planned.append(PlannedStage(
                        spec(role, student_arch, epochs.epochs_kd, method, {"teacher": source.spec.key}, kd=kd),
                        setup, "distillation", teacher=source, init_from=init_from))
        return planned
