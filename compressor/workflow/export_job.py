"""``compress export``: an :class:`ExportRequest` (the command's options, typed) is planned, then run.

:func:`plan_export` does every check and every read before the first file is exported: the sources (exactly one
of a run, a stage or bare weights), the outputs (``--out``, ``--triton-repo`` and each file the export will write:
the right kind, in a writable folder), a run another process is training in (refused), the targets and the options
that would do nothing, the models, masks and validation data, and the Triton entries. :func:`run_export` then
exports each model through each target (one validated file each), echoes one report per file, and writes the
Triton repository. A file that fails validation raises
:class:`~compressor.export.graph.validate.ExportValidationError` (exit code 1 in the command); everything else the
user can fix is an :class:`~compressor.errors.InputError` raised by the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compressor.errors import InputError
from compressor.export.exported_file import ModelOrigin, Precision
from compressor.export.precision.options import CalibrationSlices, PrecisionOptions
from compressor.export.run_models import RunModel, evenly_spaced_indices, load_run_models, load_stage
from compressor.export.scanner.input_formats import infer_source, read_input
from compressor.export.serving import (
    PlannedEntry,
    ServedExport,
    TritonOptions,
    check_planned_entries,
    write_triton_repository,
)
from compressor.export.targets.export import (
    ExportResult,
    export_model,
    export_run_model,
    output_name,
    phantom_kspace,
    precision_lines,
)
from compressor.export.targets.registry import DEFAULT_TARGET, EXPORT_TARGETS, precision_targets
from compressor.masks import SamplingMask, load_mask, make_mask
from compressor.models import CascadeModel, ModelOptions, build_model
from compressor.rundir import EXPORTS_FOLDER, RunLayout, refuse_if_training
from compressor.training.checkpoint import load_weights
from compressor.workflow.console import Console
from compressor.workflow.outputs import require_file, require_folder, require_writable

TRITON_OPTIONS = ("--triton-instance", "--triton-max-batch", "--triton-threads")
"""Options that only the Triton repository uses (refused without ``--triton-repo`` when given)."""
INT8_OPTIONS = ("--calibration-slices", "--calibration-method", "--qat-threshold", "--qat-steps")
"""Options that only INT8 files use (refused without an int8 target when given)."""


@dataclass(frozen=True)
class BareWeights:
    """``--weights``: a bare ``.safetensors`` state dict, the model it fits (``arch``, ``model``) and the mask it
    was trained with: ``mask_path`` (its centring stated by ``mask_centred``), else a generated ``mask_type`` mask
    of ``acceleration`` and ``mask_seed`` on ``image_size`` × ``image_size`` images."""

    path: Path
    arch: str | None
    model: ModelOptions
    acceleration: float = 4.0
    image_size: int = 240
    mask_path: Path | None = None
    mask_centred: bool | None = None
    mask_type: str = "random"
    mask_seed: int = 0


@dataclass(frozen=True)
class ExportRequest:
    """What ``compress export`` was asked to do.

    Attributes:
        run_dir, names: a run directory and the ``results.json`` names of its models to export (``None``: all).
        stage_dir: one stage directory of a run.
        weights: bare weights (exactly one of ``run_dir``, ``stage_dir``, ``weights``).
        validation, source: a data file whose slices validate the export and its source (``None``: inferred).
        formulation, provider: the DF formulation in the graph and the runtime that validates.
        target, precision: ``--target``, or the comma-separated ``--precision`` list (one target per precision).
        precision_options: INT8 calibration and QAT, the PSNR bound.
        out: the output file (stage, weights) or folder (run).
        triton_repo, triton: a Triton model repository to write as well, and how it serves.
        given: the options of :data:`TRITON_OPTIONS` and :data:`INT8_OPTIONS` given on the command line.
    """

    run_dir: Path | None = None
    names: list[str] | None = None
    stage_dir: Path | None = None
    weights: BareWeights | None = None
    validation: Path | None = None
    source: str | None = None
    formulation: str = "auto"
    provider: str = "auto"
    target: str = DEFAULT_TARGET
    precision: str | None = None
    precision_options: PrecisionOptions = field(default_factory=PrecisionOptions)
    out: Path | None = None
    triton_repo: Path | None = None
    triton: TritonOptions = field(default_factory=TritonOptions)
    given: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlannedModel:
    """One model to export: its name (``results.json`` name, stage folder or weights file stem), the file each
    target writes, and either the run's model (``run_model``) or bare weights' model with its mask, validation
    k-space and INT8 calibration slices."""

    name: str
    destinations: dict[str, Path]
    validation_kspace: np.ndarray | None
    run_model: RunModel | None = None
    model: CascadeModel | None = None
    mask: SamplingMask | None = None
    origin: ModelOrigin | None = None
    calibration: CalibrationSlices | None = None


@dataclass(frozen=True)
class ExportPlan:
    """A checked :class:`ExportRequest`: the targets, and every model with its destinations."""

    request: ExportRequest
    targets: tuple[str, ...]
    models: tuple[PlannedModel, ...]


def export_targets(target: str, precision: str | None) -> tuple[str, ...]:
    """The targets to write: ``--precision``'s ``onnx-<precision>`` targets, else ``--target``."""
    if precision is None:
        return (target,)
    if target != DEFAULT_TARGET:
        raise InputError("give --precision or --target, not both (--precision fp32,int8 means the targets "
                         "onnx-fp32,onnx-int8)")
    return tuple(precision_targets(precision))


def plan_export(request: ExportRequest, console: Console) -> ExportPlan:
    """Check ``request`` and read what the export needs, writing nothing (module docstring); log to ``console``
    when bare weights are validated on phantoms.

    Raises:
        InputError: any refusal, in one line naming the option or file and the problem.
    """
    if sum(x is not None for x in (request.run_dir, request.stage_dir, request.weights)) != 1:
        raise InputError("give exactly one of --run, --stage or --weights (with --arch)")
    if request.names and request.run_dir is None:
        raise InputError("--model names models of a run; add --run DIR")
    _check_outputs(request)
    if request.run_dir is not None or request.stage_dir is not None:  # a run still training changes its files
        refuse_if_training(request.run_dir or RunLayout.of_stage(request.stage_dir).root)
    targets = export_targets(request.target, request.precision)
    _refuse_unused_options(request, targets)
    if request.weights is not None:
        models = (_plan_weights(request, request.weights, targets, console),)
    else:
        models = _plan_run_models(request, targets)
    return ExportPlan(request, targets, models)


def run_export(plan: ExportPlan, console: Console) -> list[ExportResult]:
    """Export every planned model through every target, echo each file's report, then write the Triton
    repository (when asked) from every file; the results in that order.

    Raises:
        ExportValidationError: a file failed validation (nothing of it is left behind).
    """
    request, results = plan.request, []
    for planned in plan.models:
        for target in plan.targets:
            result = _export(planned, target, request)
            for line in export_report(result):
                console.echo(line)
            results.append((planned.name, result))  # Triton serves every precision, one entry each
    if request.triton_repo is not None:
        sources = [ServedExport(name, result.path) for name, result in results]
        for entry in write_triton_repository(sources, request.triton_repo, request.triton, request.provider):
            console.echo(f"{entry.folder}: Triton model {entry.name} ({entry.action}) from {entry.source.name}, "
                         f"mask folded in: max abs difference to the export {entry.max_abs_difference:.1e} <= "
                         f"{entry.tolerance:.1e}")
    return [result for _, result in results]


def export_report(result: ExportResult) -> list[str]:
    """The lines ``compress export`` prints for one validated file."""
    if result.precision_check is not None:
        return [f"{result.path}: {result.metadata.architecture} {result.precision}, DF formulation "
                f"{result.formulation}; validated with {result.runtime.name} in {result.seconds:.1f} s",
                *(f"  {line}" for line in precision_lines(result))]
    return [f"{result.path}: {result.metadata.architecture}, {result.metadata.parameters} parameters, "
            f"DF formulation {result.formulation}; validated on {result.validation_slices} slices with "
            f"{result.runtime.name}: max abs error {result.max_abs_error:.2e} (relative "
            f"{result.relative_error:.2e}, tolerance {result.tolerance:.2e}); onnx.reference max abs error "
            f"{result.reference_evaluator_error:.2e}; {result.seconds:.1f} s"]


def _export(planned: PlannedModel, target: str, request: ExportRequest) -> ExportResult:
    destination = planned.destinations[target]
    if planned.run_model is not None:
        return export_run_model(planned.run_model, destination, formulation=request.formulation,
                                provider=request.provider, validation_kspace=planned.validation_kspace,
                                target=target, precision_options=request.precision_options)
    return export_model(planned.model, destination, mask=planned.mask, validation_kspace=planned.validation_kspace,
                        acceleration=request.weights.acceleration, origin=planned.origin,
                        formulation=request.formulation, provider=request.provider, target=target,
                        calibration=planned.calibration, precision_options=request.precision_options)


# -- the plan's checks and reads ---------------------------------------------------------------------------------
def _check_outputs(request: ExportRequest) -> None:
    """Refuse an unwritable ``--out`` or ``--triton-repo``, or an existing ``--out`` of the other kind: a file
    where ``--run`` writes into a folder, a folder where ``--stage``/``--weights`` write one file."""
    if request.triton_repo is not None:
        require_writable(request.triton_repo)
    if request.out is None:
        return
    if request.run_dir is not None:
        require_folder(request.out, "with --run, --out is the folder the exports are written to")
    else:
        require_file(request.out, "with --stage or --weights, --out is the .onnx file to write")


def _refuse_unused_options(request: ExportRequest, targets: tuple[str, ...]) -> None:
    """Refuse options that would do nothing: the Triton ones without ``--triton-repo``, the INT8 ones without an
    int8 file among the ``targets``."""
    unused = [name for name in TRITON_OPTIONS if name in request.given] if request.triton_repo is None else []
    if unused:
        raise InputError(f"{', '.join(unused)}: only for the Triton repository; add --triton-repo DIR")
    int8 = any(EXPORT_TARGETS.get(t).precision is Precision.INT8 for t in targets)
    unused = [] if int8 else [name for name in INT8_OPTIONS if name in request.given]
    if unused:
        raise InputError(f"{', '.join(unused)}: only for INT8 files; add int8 to --precision (e.g. fp32,int8)")


def _refuse_unwritable(destinations: dict[str, Path]) -> dict[str, Path]:
    """``destinations`` (the files an export will write), each checked: not an existing folder, and its folder
    writable."""
    for destination in destinations.values():
        if destination.is_dir():
            raise InputError(f"{destination}: is a folder, where the export would write its file")
        require_writable(destination)
    return destinations


def _file_destination(out: Path | None, default: Path, target: str, count: int) -> Path:
    """The file ``target`` writes for ``--stage``/``--weights``: ``default``, or ``--out``; when several precisions
    are written, ``--out`` names the fp32 file and each other goes beside it under its target's name
    (``d3c5.onnx`` -> ``d3c5.int8.onnx``)."""
    if out is None:
        return default
    return out if count == 1 else out.with_name(output_name(out.name.removesuffix(".onnx"), target))


def _run_destination(request: ExportRequest, run_model: RunModel, target: str, count: int) -> Path:
    """Where a run model's ``target`` file goes: ``--out`` (a folder with ``--run``, the file with ``--stage``),
    else the run's exports folder."""
    file_name = output_name(Path(run_model.file_name).stem, target)
    if request.stage_dir is not None:
        default = RunLayout.of_stage(request.stage_dir).exports / file_name
        return _file_destination(request.out, default, target, count)
    return (request.out or request.run_dir / EXPORTS_FOLDER) / file_name


def _triton_entries(name: str, model: CascadeModel, mask: SamplingMask, config_key: str | None,
                    targets: tuple[str, ...]) -> list[PlannedEntry]:
    """The Triton entries ``targets`` of the model ``name`` will make, for
    :func:`~compressor.export.serving.check_planned_entries` before anything is exported."""
    return [PlannedEntry(name, EXPORT_TARGETS.get(t).precision, model.arch, mask.digest(), config_key,
                         model.image_channels) for t in targets]


def _plan_run_models(request: ExportRequest, targets: tuple[str, ...]) -> tuple[PlannedModel, ...]:
    """The run's (or stage's) models, their Triton entries and destinations checked, with their validation
    k-space (``--validation``, else ``None``: the run's own validation slices)."""
    run_models = ([load_stage(request.stage_dir)] if request.stage_dir is not None
                  else load_run_models(request.run_dir, request.names))
    if request.triton_repo is not None:
        check_planned_entries([entry for m in run_models for entry in _triton_entries(
            m.name, m.model, m.mask, m.stage.key, targets)], request.triton_repo)
    destinations = {m.name: _refuse_unwritable({t: _run_destination(request, m, t, len(targets)) for t in targets})
                    for m in run_models}
    return tuple(PlannedModel(m.name, destinations[m.name], _validation_kspace(
        request, m.mask, m.stage.acceleration, m.model.image_channels), run_model=m) for m in run_models)


def _plan_weights(request: ExportRequest, weights: BareWeights, targets: tuple[str, ...],
                  console: Console) -> PlannedModel:
    """Bare weights' model, mask, destinations, validation k-space (``--validation``, else phantoms) and INT8
    calibration slices, their Triton entries checked."""
    if weights.arch is None:
        raise InputError("--weights needs --arch (e.g. --arch d3c5)")
    path = weights.path
    destinations = _refuse_unwritable({t: _file_destination(
        request.out, path.with_name(output_name(path.stem, t)), t, len(targets)) for t in targets})
    model = load_weights(path, build_model(weights.arch, weights.model)).eval()
    mask = _bare_mask(weights)
    channels = weights.model.image_channels
    kspace = _validation_kspace(request, mask, weights.acceleration, channels)
    if kspace is None:
        console.log("no --validation data: validating on Shepp-Logan phantoms")
        kspace = phantom_kspace(mask, image_channels=channels)
    if request.triton_repo is not None:
        check_planned_entries(_triton_entries(path.stem, model, mask, None, targets), request.triton_repo)
    return PlannedModel(path.stem, destinations, kspace, model=model, mask=mask, origin=ModelOrigin(weights=path.name),
                        calibration=_bare_calibration(request, mask, channels))


def _bare_calibration(request: ExportRequest, mask: SamplingMask, image_channels: int) -> CalibrationSlices:
    """INT8 calibration slices of bare weights: ``calibration_slices`` slices of the ``--validation`` file, else
    phantoms."""
    count = request.precision_options.calibration_slices
    kspace = _validation_kspace(request, mask, request.weights.acceleration, image_channels, count)
    if kspace is None:
        return CalibrationSlices(phantom_kspace(mask, count, image_channels),
                                 "Shepp-Logan phantoms (bare weights, no --validation file)")
    return CalibrationSlices(kspace, f"the --validation file {request.validation.name}")


def _bare_mask(weights: BareWeights) -> SamplingMask:
    """The training mask of bare weights: ``mask_path`` (its centring must be stated) or a generated mask."""
    shape = (weights.image_size, weights.image_size)
    if weights.mask_path is None:
        return make_mask(weights.mask_type, weights.acceleration, shape, seed=weights.mask_seed)
    if weights.mask_centred is None:
        raise InputError("--mask needs --mask-centred or --mask-uncentred (where DC sits in the file)")
    return load_mask(weights.mask_path, shape, centred=weights.mask_centred)


def _validation_kspace(request: ExportRequest, mask: SamplingMask, acceleration: float | None, image_channels: int,
                       count: int = 8) -> np.ndarray | None:
    """Up to ``count`` evenly spaced slices of ``--validation`` as validation k-space (read as the model of
    ``image_channels`` reads it: with phase for 2), or ``None`` without a file."""
    path = request.validation
    if path is None:
        return None
    kspace = read_input(path, request.source or infer_source(path), mask.shape, mask.values, acceleration,
                        image_channels=image_channels).kspace
    return kspace[evenly_spaced_indices(len(kspace), count)]
