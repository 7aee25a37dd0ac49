"""``compress export``: a run's models, one stage or bare weights to validated ONNX files of each precision (and a
Triton repository). Bad input exits with code 2 and one line; an export that fails validation exits with code 1 and
says by how much."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compressor.cli.choices import (
    CALIBRATION_METHODS,
    FORMULATIONS,
    PROVIDERS,
    SHOW_DEFAULTS,
    SOURCES,
    TARGETS,
    TRITON_INSTANCES,
    given_options,
)
from compressor.cli.common import (
    OneLineCommand,
    UserError,
    comma_separated,
    handles_input_errors,
    option_group,
    require_writable,
)
from compressor.rundir import EXPORTS_FOLDER, RunLayout, refuse_if_training

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.serving import TritonOptions
    from compressor.export.targets.export import ExportResult
    from compressor.masks import SamplingMask

def _precision_options(calibration_slices: int, calibration_method: str, max_psnr_loss: float | None,
                       qat_threshold: float, qat_steps: int) -> Any:
    """The :class:`~compressor.export.precision.options.PrecisionOptions` of the command's options."""
    from compressor.export.precision.options import PrecisionOptions

    return PrecisionOptions(calibration_slices, calibration_method, max_psnr_loss, qat_threshold, qat_steps)


def _export_targets(target: str, precision: str | None) -> list[str]:
    """The targets to write: ``--precision``'s ``onnx-<precision>`` targets, else ``--target``."""
    from compressor.export.targets.registry import DEFAULT_TARGET, precision_targets

    if precision is None:
        return [target]
    if target != DEFAULT_TARGET:
        raise UserError("give --precision or --target, not both (--precision fp32,int8 means the targets "
                        "onnx-fp32,onnx-int8)")
    return precision_targets(precision)


def _file_destination(out: Path | None, default: Path, target: str, count: int) -> Path:
    """The file ``target`` writes for ``--stage``/``--weights``: ``default``, or ``--out``; when several precisions
    are written, ``--out`` names the fp32 file and each other goes beside it under its target's name
    (``d3c5.onnx`` -> ``d3c5.int8.onnx``)."""
    from compressor.export.targets.export import output_name

    if out is None:
        return default
    return out if count == 1 else out.with_name(output_name(out.name.removesuffix(".onnx"), target))


def _image_size(size: int) -> int:
    """``--image-size`` of bare weights, refused below the smallest image size training takes."""
    from compressor.data.section import MIN_IMAGE_SIZE

    if size < MIN_IMAGE_SIZE:
        raise click.BadParameter(f"{size} is smaller than the smallest image size, {MIN_IMAGE_SIZE}",
                                 param_hint="'--image-size'")
    return size


def _run_destination(out: Path | None, run_dir: Path | None, stage_dir: Path | None, file_name: str, target: str,
                     count: int) -> Path:
    """Where a run model's ``target`` file goes: ``--out`` (a folder with ``--run``, the file with ``--stage``), else
    the run's exports folder."""
    if stage_dir is not None:
        return _file_destination(out, RunLayout.of_stage(stage_dir).exports / file_name, target, count)
    return (out or run_dir / EXPORTS_FOLDER) / file_name


def _refuse_a_run_in_training(run_dir: Path | None, stage_dir: Path | None) -> None:
    """Refuse, in one line, to export from a run another process is training in (its files still change)."""
    if run_dir is not None or stage_dir is not None:
        refuse_if_training(run_dir if run_dir is not None else RunLayout.of_stage(stage_dir).root)


def _check_outputs(out: Path | None, triton_repo: Path | None, folder: bool) -> None:
    """Refuse, before any work, an unwritable ``--out`` or ``--triton-repo``, or an existing ``--out`` of the other
    kind: a file where ``--run`` writes into a folder (``folder``), a folder where ``--stage``/``--weights`` write one
    file."""
    for path in (out, triton_repo):
        if path is not None:
            require_writable(path)
    if out is None:
        return
    if folder and out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; with --run, --out is the folder the exports are written to")
    if not folder and out.is_dir():
        raise UserError(f"{out}: is a folder; with --stage or --weights, --out is the .onnx file to write")


def _refuse_unwritable(destinations: dict[Any, Path]) -> dict[Any, Path]:
    """``destinations`` (the files an export will write), each checked before any work: not an existing folder,
    and its folder writable (:func:`~compressor.cli.common.require_writable`)."""
    for destination in destinations.values():
        if destination.is_dir():
            raise UserError(f"{destination}: is a folder, where the export would write its file")
        require_writable(destination)
    return destinations


def _bare_calibration(path: Path | None, source: str | None, mask: SamplingMask, acceleration: float | None,
                      image_channels: int, count: int) -> Any:
    """INT8 calibration slices of bare weights: ``count`` slices of the ``--validation`` file, else phantoms."""
    from compressor.export.precision.options import CalibrationSlices
    from compressor.export.targets.export import phantom_kspace

    kspace = _validation_kspace(path, source, mask, acceleration, image_channels, count)
    if kspace is None:
        return CalibrationSlices(phantom_kspace(mask, count, image_channels), "Shepp-Logan phantoms (bare weights, "
                                                                               "no --validation file)")
    return CalibrationSlices(kspace, f"the --validation file {path.name}")


def _validation_kspace(path: Path | None, source: str | None, mask: SamplingMask, acceleration: float | None,
                       image_channels: int, count: int = 8) -> np.ndarray | None:
    """Up to ``count`` evenly spaced slices of a data file as validation k-space (read as the model of
    ``image_channels`` reads it: with phase for 2), or ``None`` without a file."""
    if path is None:
        return None
    from compressor.export.run_models import evenly_spaced_indices
    from compressor.export.scanner.input_formats import infer_source, read_input

    kspace = read_input(path, source or infer_source(path), mask.shape, mask.values, acceleration,
                        image_channels=image_channels).kspace
    return kspace[evenly_spaced_indices(len(kspace), count)]


def _bare_mask(acceleration: float, image_size: int, mask_path: Path | None, mask_centred: bool | None,
               mask_type: str, mask_seed: int) -> SamplingMask:
    """The training mask of bare weights: ``mask_path`` (its centring must be stated) or a generated mask."""
    from compressor.masks import load_mask, make_mask

    shape = (image_size, image_size)
    if mask_path is None:
        return make_mask(mask_type, acceleration, shape, seed=mask_seed)
    if mask_centred is None:
        raise UserError("--mask needs --mask-centred or --mask-uncentred (where DC sits in the file)")
    return load_mask(mask_path, shape, centred=mask_centred)


def _write_triton(repository: Path | None, exports: list[tuple[str, Path]], options: TritonOptions,
                  provider: str) -> None:
    """Serve the validated ``(name, ONNX file)`` exports from the Triton model repository ``--triton-repo``."""
    if repository is None:
        return
    from compressor.export.serving import ServedExport, write_triton_repository

    for entry in write_triton_repository([ServedExport(name, path) for name, path in exports], repository, options,
                                         provider):
        click.echo(f"{entry.folder}: Triton model {entry.name} ({entry.action}) from {entry.source.name}, mask "
                   f"folded in: max abs difference to the export {entry.max_abs_difference:.1e} <= "
                   f"{entry.tolerance:.1e}")


EXPORT_GROUPS = ("What to export", "Bare weights (--weights)", "Validation", "Precision", "Output", "Triton")
"""The ``--help`` sections of ``compress export``'s options, in order."""
source_option, weights_option, validation_option, precision_option, output_option, triton_option = map(
    option_group, EXPORT_GROUPS)
TRITON_OPTIONS = ("triton_instance", "triton_max_batch", "triton_threads")
INT8_OPTIONS = ("calibration_slices", "calibration_method", "qat_threshold", "qat_steps")


def _refuse_unused_options(triton_repo: Path | None, targets: Sequence[str]) -> None:
    """Refuse options that would do nothing: the Triton ones without ``--triton-repo``, the INT8 ones without an
    int8 file among the ``targets``."""
    from compressor.export.exported_file import Precision
    from compressor.export.targets.registry import EXPORT_TARGETS

    unused = given_options(TRITON_OPTIONS) if triton_repo is None else []
    if unused:
        raise UserError(f"{', '.join(unused)}: only for the Triton repository; add --triton-repo DIR")
    int8 = any(EXPORT_TARGETS.get(t).precision is Precision.INT8 for t in targets)
    unused = [] if int8 else given_options(INT8_OPTIONS)
    if unused:
        raise UserError(f"{', '.join(unused)}: only for INT8 files; add int8 to --precision (e.g. fp32,int8)")


def _planned_triton_entries(name: str, model: Any, mask: SamplingMask, config_key: str | None,
                            targets: Sequence[str]) -> list[Any]:
    """The Triton entries ``targets`` of the model ``name`` will make (:class:`~compressor.export.serving.
    PlannedEntry`), for :func:`~compressor.export.serving.check_planned_entries` before anything is
    exported."""
    from compressor.export.serving import PlannedEntry
    from compressor.export.targets.registry import EXPORT_TARGETS

    return [PlannedEntry(name, EXPORT_TARGETS.get(t).precision, model.arch, mask.digest(), config_key,
                         model.image_channels) for t in targets]


def _report_export(result: ExportResult) -> None:
    if result.precision_check is not None:
        from compressor.export.targets.export import precision_lines

        click.echo(f"{result.path}: {result.metadata.architecture} {result.precision}, DF formulation "
                   f"{result.formulation}; validated with {result.runtime.name} in {result.seconds:.1f} s")
        for line in precision_lines(result):
            click.echo(f"  {line}")
        return
    click.echo(f"{result.path}: {result.metadata.architecture}, {result.metadata.parameters} parameters, "
               f"DF formulation {result.formulation}; validated on {result.validation_slices} slices with "
               f"{result.runtime.name}: max abs error {result.max_abs_error:.2e} (relative "
               f"{result.relative_error:.2e}, "
               f"tolerance {result.tolerance:.2e}); onnx.reference max abs error "
               f"{result.reference_evaluator_error:.2e}; {result.seconds:.1f} s")


@click.command("export", cls=OneLineCommand, context_settings=SHOW_DEFAULTS, option_groups=EXPORT_GROUPS)
@source_option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory: export its trained models (all, or those named by --model).")
@source_option("--model", "names", help="Comma-separated results.json names, e.g. sft_kd/at/d3c5@4x (with --run).")
@source_option("--stage", "stage_dir", type=click.Path(path_type=Path, file_okay=False),
              help="One stage directory of a run (<run>/stages/<stage>).")
@source_option("--arch", help="Architecture of a bare weights file, e.g. d3c5 (with --weights).")
@source_option("--weights", type=click.Path(path_type=Path, dir_okay=False), help="A bare .safetensors state dict.")
@weights_option("--acceleration", type=float, default=4.0, help="Acceleration of the bare weights' training mask.")
@weights_option("--image-size", type=int, default=240, callback=lambda _, __, size: _image_size(size),
              help="Square image size of the bare weights' training data.")
@weights_option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Training mask .npy of the bare weights (default: a generated --mask-type mask).")
@weights_option("--mask-centred/--mask-uncentred", default=None, help="Whether --mask has DC at (H//2, W//2).")
@weights_option("--mask-type", type=click.Choice(["random", "equispaced"]), default="random",
              help="Generated mask type for bare weights.")
@weights_option("--mask-seed", type=click.IntRange(min=0), default=0,
              help="Seed of the generated mask for bare weights.")
@weights_option("--block-form", type=click.Choice(["plain", "residual"]), default="plain",
              help="Block form of the bare weights' model.")
@weights_option("--block-padding", type=int, default=5, help="Block padding of the bare weights' model.")
@weights_option("--width", type=int, default=32, help="Hidden channels of the bare weights' model.")
@weights_option("--channels", "image_channels", type=click.IntRange(1, 2), default=1,
              help="Image channels of the bare weights' model: 1, the paper's real image; 2, the complex image "
                   "(real, imag).")
@validation_option("--validation", "validation_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Data file whose slices validate the export (default: the run's validation slices; for bare "
                   "weights, Shepp-Logan phantoms).")
@validation_option("--source", type=SOURCES, help="Source of --validation (default: from its file name).")
@validation_option("--formulation", type=FORMULATIONS, default="auto",
              help="DF formulation in the graph: lines (whole-line masks), dft (DFT matrices, any mask).")
@validation_option("--provider", type=PROVIDERS, default="auto",
              help="Runtime that validates the files (and measures INT8's layer choice): an ONNX Runtime execution "
                   "provider, or openvino (OpenVINO's CPU runtime).")
@precision_option("--target", type=TARGETS, default="onnx-fp32",
              help="What to write: onnx-fp32 is one validated fp32 ONNX file per model.")
@precision_option("--precision",
              help="Comma-separated precisions, each its own validated ONNX file: fp32 (<model>.onnx), int8 "
                   "(<model>.int8.onnx: post-training static INT8 of the convolutions a per-layer sensitivity "
                   "analysis picks), fp16 (<model>.fp16.onnx: fp16 convolutions for GPUs); e.g. fp32,int8. "
                   "Default: --target (fp32).")
@precision_option("--calibration-slices", type=click.IntRange(min=1), default=32,
              help="INT8: training-split slices that calibrate the activations (bare weights: the --validation "
                   "slices or phantoms).")
@precision_option("--calibration-method", type=CALIBRATION_METHODS, default="minmax",
              help="INT8: ONNX Runtime's calibration method.")
@precision_option("--max-psnr-loss", type=click.FloatRange(min=0), default=None,
              help="Largest PSNR loss (dB) of an int8/fp16 file against the fp32 export; more fails the export "
                   "(inf: no bound, every convolution INT8). [default: 0.1 for int8, 0.05 for fp16]")
@precision_option("--qat-threshold", type=float, default=0.1,
              help="INT8: when post-training INT8 of every convolution loses more PSNR (dB) than this, a short "
                   "quantization-aware fine-tuning (self-distilled, fake-quantized) is tried.")
@precision_option("--qat-steps", type=click.IntRange(min=0), default=100,
              help="INT8: steps of that fine-tuning (0: never).")
@output_option("--out", type=click.Path(path_type=Path),
              help="Output .onnx file (--stage, --weights; other precisions beside it as <name>.<precision>.onnx) "
                   "or folder (--run); default <run>/exports or beside the weights.")
@triton_option("--triton-repo", type=click.Path(path_type=Path, file_okay=False),
              help="Also write a Triton Inference Server model repository: <model>/config.pbtxt and "
                   "<model>/1/model.onnx per export, its training mask folded in.")
@triton_option("--triton-instance", type=TRITON_INSTANCES, default="cpu",
              help="instance_group of the Triton models: cpu (KIND_CPU) or gpu (KIND_GPU).")
@triton_option("--triton-max-batch", type=click.IntRange(min=1), default=8,
              help="max_batch_size of the Triton models (dynamic batching).")
@triton_option("--triton-threads", type=click.IntRange(min=0), default=0,
              help="ONNX Runtime intra-op threads per Triton model instance (0: one per core).")
@handles_input_errors
def export_command(run_dir: Path | None, names: str | None, stage_dir: Path | None, arch: str | None,
                   weights: Path | None, acceleration: float, image_size: int, mask_path: Path | None,
                   mask_centred: bool | None, mask_type: str, mask_seed: int, block_form: str, block_padding: int,
                   width: int, image_channels: int, validation_path: Path | None, source: str | None,
                   formulation: str, provider: str, target: str, precision: str | None, calibration_slices: int,
                   calibration_method: str, max_psnr_loss: float | None, qat_threshold: float, qat_steps: int,
                   out: Path | None, triton_repo: Path | None,
                   triton_instance: str, triton_max_batch: int, triton_threads: int) -> None:
    """Export trained DC-CNNs with their data-fidelity layers to validated ONNX files.

    Inputs of the graph: k-space (real, imaginary; uncentred) and mask; outputs: the normalised image (of a
    2-channel model, its real and imaginary parts and magnitude) and its scale. Examples:
    compress export --run runs/default --model sft_kd/at/d3c5@4x;
    compress export --arch d3c5 --weights w.safetensors --acceleration 4 --image-size 240 --out d3c5.onnx;
    compress export --run runs/default --precision fp32,int8,fp16 (one validated file per precision);
    compress export --run runs/default --triton-repo triton (a Triton model repository beside the files)
    """
    if sum(x is not None for x in (run_dir, stage_dir, weights)) != 1:
        raise UserError("give exactly one of --run, --stage or --weights (with --arch)")
    if names and run_dir is None:
        raise UserError("--model names models of a run; add --run DIR")
    _check_outputs(out, triton_repo, folder=run_dir is not None)
    _refuse_a_run_in_training(run_dir, stage_dir)
    targets = _export_targets(target, precision)
    _refuse_unused_options(triton_repo, targets)
    precision_options = _precision_options(calibration_slices, calibration_method, max_psnr_loss, qat_threshold,
                                           qat_steps)
    from compressor.export.exported_file import ModelOrigin
    from compressor.export.graph.validate import ExportValidationError
    from compressor.export.run_models import load_run_models, load_stage
    from compressor.export.serving import TritonOptions, check_planned_entries
    from compressor.export.targets.export import export_model, export_run_model, output_name, phantom_kspace

    triton = TritonOptions(max_batch_size=triton_max_batch, instance_kind=triton_instance,
                           intra_op_threads=triton_threads)
    try:
        if weights is not None:
            if arch is None:
                raise UserError("--weights needs --arch (e.g. --arch d3c5)")
            destinations = _refuse_unwritable({t: _file_destination(
                out, weights.with_name(output_name(weights.stem, t)), t, len(targets)) for t in targets})
            from compressor.models import ModelOptions, build_model
            from compressor.training.checkpoint import load_weights

            options = ModelOptions(block_form=block_form, block_padding=block_padding, width=width,
                                   image_channels=image_channels)
            model = load_weights(weights, build_model(arch, options)).eval()
            mask = _bare_mask(acceleration, image_size, mask_path, mask_centred, mask_type, mask_seed)
            kspace = _validation_kspace(validation_path, source, mask, acceleration, image_channels)
            if kspace is None:
                click.echo("no --validation data: validating on Shepp-Logan phantoms", err=True)
                kspace = phantom_kspace(mask, image_channels=image_channels)
            if triton_repo is not None:
                check_planned_entries(_planned_triton_entries(weights.stem, model, mask, None, targets), triton_repo)
            calibration = _bare_calibration(validation_path, source, mask, acceleration, image_channels,
                                            calibration_slices)
            results = [export_model(model, destinations[t], mask=mask, validation_kspace=kspace,
                                    acceleration=acceleration, origin=ModelOrigin(weights=weights.name),
                                    formulation=formulation, provider=provider, target=t, calibration=calibration,
                                    precision_options=precision_options)
                       for t in targets]
            for result in results:
                _report_export(result)
            _write_triton(triton_repo, [(weights.stem, result.path) for result in results], triton, provider)
            return
        chosen = comma_separated(names)
        run_models = [load_stage(stage_dir)] if stage_dir is not None else load_run_models(run_dir, chosen)
        if triton_repo is not None:
            check_planned_entries([entry for m in run_models for entry in _planned_triton_entries(
                m.name, m.model, m.mask, m.stage.key, targets)], triton_repo)
        destinations = _refuse_unwritable({(run_model.name, export_target): _run_destination(
            out, run_dir, stage_dir, output_name(Path(run_model.file_name).stem, export_target), export_target,
            len(targets)) for run_model in run_models for export_target in targets})
        exports = []
        for run_model in run_models:
            kspace = _validation_kspace(validation_path, source, run_model.mask, run_model.stage.acceleration,
                                        run_model.model.image_channels)
            for export_target in targets:
                destination = destinations[run_model.name, export_target]
                result = export_run_model(run_model, destination, formulation=formulation, provider=provider,
                                          validation_kspace=kspace, target=export_target,
                                          precision_options=precision_options)
                _report_export(result)
                exports.append((run_model.name, result.path))  # Triton serves every precision, one entry each
        _write_triton(triton_repo, exports, triton, provider)
    except ExportValidationError as error:
        raise click.ClickException(str(error)) from None


