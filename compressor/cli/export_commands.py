"""``compress export``, ``compress reconstruct`` and ``compress benchmark``: thin commands over
:mod:`compressor.export`.

Each command imports torch/onnxruntime only when it runs, passes explicit arguments to one library function and
prints its result. Bad input exits with
code 2 and a one-line message; an export that fails validation exits with code 1 and says by how much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compressor.cli.common import OneLineCommand, UserError, handles_input_errors, require_writable
from compressor.rundir import BENCHMARK_FILE, EXPORTS_FOLDER, RunLayout, refuse_if_training

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.targets.export import ExportResult
    from compressor.export.triton.repository import TritonOptions
    from compressor.masks import SamplingMask

SHOW_DEFAULTS = {"show_default": True}


class RegistryChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read from a registry each time they are needed (help, parsing):
    a name registered in one line is a choice at once, and building the CLI imports neither torch nor ONNX Runtime.
    """

    def __init__(self, names: Callable[[], Sequence[str]]):
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _: Any) -> None:  # click.Choice.__init__ assigns it; the registry is the source
        pass


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


def _calibration_methods() -> list[str]:
    from compressor.export.precision.options import CALIBRATION_METHODS

    return list(CALIBRATION_METHODS)


def _providers() -> list[str]:
    from compressor.export.runtimes.registry import runtime_choices

    return runtime_choices()


def _formulations() -> list[str]:
    from compressor.export.graph.scanner_graph import exportable_formulations

    return ["auto", *exportable_formulations()]


def _targets() -> list[str]:
    from compressor.export.targets.registry import EXPORT_TARGETS

    return EXPORT_TARGETS.names()


def _triton_instances() -> list[str]:
    from compressor.export.triton.repository import INSTANCE_KINDS

    return list(INSTANCE_KINDS)


def _sources() -> list[str]:
    from compressor.export.scanner.input_formats import source_names

    return source_names(without_model=True)


def _reconstruct_sources() -> list[str]:
    from compressor.export.scanner.input_formats import source_names

    return source_names()  # raw scans and streams too: reconstruct only


SOURCES = RegistryChoice(_sources)
RECONSTRUCT_SOURCES = RegistryChoice(_reconstruct_sources)
CALIBRATION_METHODS = RegistryChoice(_calibration_methods)
PROVIDERS = RegistryChoice(_providers)
PROVIDER_HELP = "Runtime: an ONNX Runtime execution provider, or openvino (OpenVINO's CPU runtime)."
FORMULATIONS = RegistryChoice(_formulations)
TARGETS = RegistryChoice(_targets)
TRITON_INSTANCES = RegistryChoice(_triton_instances)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


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
    from compressor.export.triton.repository import TritonSource, write_triton_repository

    for entry in write_triton_repository([TritonSource(name, path) for name, path in exports], repository, options,
                                         provider):
        click.echo(f"{entry.folder}: Triton model {entry.name} ({entry.action}) from {entry.source.name}, mask "
                   f"folded in: max abs difference to the export {entry.max_abs_difference:.1e} <= "
                   f"{entry.tolerance:.1e}")


TRITON_OPTIONS = ("triton_instance", "triton_max_batch", "triton_threads")
INT8_OPTIONS = ("calibration_slices", "calibration_method", "qat_threshold", "qat_steps")


def _given(names: Sequence[str]) -> list[str]:
    """The options among ``names`` (parameter names) given on the command line or by environment, as ``--flags``."""
    from click.core import ParameterSource

    context = click.get_current_context()
    return [f"--{name.replace('_', '-')}" for name in names
            if context.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]


def _refuse_unused_options(triton_repo: Path | None, targets: Sequence[str]) -> None:
    """Refuse options that would do nothing: the Triton ones without ``--triton-repo``, the INT8 ones without an
    int8 file among the ``targets``."""
    from compressor.export.exported_file import Precision
    from compressor.export.targets.registry import EXPORT_TARGETS

    unused = _given(TRITON_OPTIONS) if triton_repo is None else []
    if unused:
        raise UserError(f"{', '.join(unused)}: only for the Triton repository; add --triton-repo DIR")
    unused = [] if any(EXPORT_TARGETS.get(t).precision is Precision.INT8 for t in targets) else _given(INT8_OPTIONS)
    if unused:
        raise UserError(f"{', '.join(unused)}: only for INT8 files; add int8 to --precision (e.g. fp32,int8)")


def _planned_triton_entries(name: str, model: Any, mask: SamplingMask, config_key: str | None,
                            targets: Sequence[str]) -> list[Any]:
    """The Triton entries ``targets`` of the model ``name`` will make (:class:`~compressor.export.triton.repository.
    PlannedEntry`), for :func:`~compressor.export.triton.repository.check_planned_entries` before anything is
    exported."""
    from compressor.export.targets.registry import EXPORT_TARGETS
    from compressor.export.triton.repository import PlannedEntry

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


@click.command("export", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory: export its trained models (all, or those named by --model).")
@click.option("--model", "names", help="Comma-separated results.json names, e.g. sft_kd/at/d3c5@4x (with --run).")
@click.option("--stage", "stage_dir", type=click.Path(path_type=Path, file_okay=False),
              help="One stage directory of a run (<run>/stages/<stage>).")
@click.option("--arch", help="Architecture of a bare weights file, e.g. d3c5 (with --weights).")
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False), help="A bare .safetensors state dict.")
@click.option("--acceleration", type=float, default=4.0, help="Acceleration of the bare weights' training mask.")
@click.option("--image-size", type=int, default=240, callback=lambda _, __, size: _image_size(size),
              help="Square image size of the bare weights' training data.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Training mask .npy of the bare weights (default: a generated --mask-type mask).")
@click.option("--mask-centred/--mask-uncentred", default=None, help="Whether --mask has DC at (H//2, W//2).")
@click.option("--mask-type", type=click.Choice(["random", "equispaced"]), default="random",
              help="Generated mask type for bare weights.")
@click.option("--mask-seed", type=click.IntRange(min=0), default=0,
              help="Seed of the generated mask for bare weights.")
@click.option("--block-form", type=click.Choice(["plain", "residual"]), default="plain",
              help="Block form of the bare weights' model.")
@click.option("--block-padding", type=int, default=5, help="Block padding of the bare weights' model.")
@click.option("--width", type=int, default=32, help="Hidden channels of the bare weights' model.")
@click.option("--channels", "image_channels", type=click.IntRange(1, 2), default=1,
              help="Image channels of the bare weights' model: 1, the paper's real image; 2, the complex image "
                   "(real, imag).")
@click.option("--validation", "validation_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Data file whose slices validate the export (default: the run's validation slices; for bare "
                   "weights, Shepp-Logan phantoms).")
@click.option("--source", type=SOURCES, help="Source of --validation (default: from its file name).")
@click.option("--formulation", type=FORMULATIONS, default="auto",
              help="DF formulation in the graph: lines (whole-line masks), dft (DFT matrices, any mask).")
@click.option("--provider", type=PROVIDERS, default="auto",
              help="Runtime that validates the files (and measures INT8's layer choice): an ONNX Runtime execution "
                   "provider, or openvino (OpenVINO's CPU runtime).")
@click.option("--target", type=TARGETS, default="onnx-fp32",
              help="What to write: onnx-fp32 is one validated fp32 ONNX file per model.")
@click.option("--precision",
              help="Comma-separated precisions, each its own validated ONNX file: fp32 (<model>.onnx), int8 "
                   "(<model>.int8.onnx: post-training static INT8 of the convolutions a per-layer sensitivity "
                   "analysis picks), fp16 (<model>.fp16.onnx: fp16 convolutions for GPUs); e.g. fp32,int8. "
                   "Default: --target (fp32).")
@click.option("--calibration-slices", type=click.IntRange(min=1), default=32,
              help="INT8: training-split slices that calibrate the activations (bare weights: the --validation "
                   "slices or phantoms).")
@click.option("--calibration-method", type=CALIBRATION_METHODS, default="minmax",
              help="INT8: ONNX Runtime's calibration method.")
@click.option("--max-psnr-loss", type=click.FloatRange(min=0), default=None,
              help="Largest PSNR loss (dB) of an int8/fp16 file against the fp32 export; more fails the export "
                   "(inf: no bound, every convolution INT8). [default: 0.1 for int8, 0.05 for fp16]")
@click.option("--qat-threshold", type=float, default=0.1,
              help="INT8: when post-training INT8 of every convolution loses more PSNR (dB) than this, a short "
                   "quantization-aware fine-tuning (self-distilled, fake-quantized) is tried.")
@click.option("--qat-steps", type=click.IntRange(min=0), default=100,
              help="INT8: steps of that fine-tuning (0: never).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output .onnx file (--stage, --weights; other precisions beside it as <name>.<precision>.onnx) "
                   "or folder (--run); default <run>/exports or beside the weights.")
@click.option("--triton-repo", type=click.Path(path_type=Path, file_okay=False),
              help="Also write a Triton Inference Server model repository: <model>/config.pbtxt and "
                   "<model>/1/model.onnx per export, its training mask folded in.")
@click.option("--triton-instance", type=TRITON_INSTANCES, default="cpu",
              help="instance_group of the Triton models: cpu (KIND_CPU) or gpu (KIND_GPU).")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=8,
              help="max_batch_size of the Triton models (dynamic batching).")
@click.option("--triton-threads", type=click.IntRange(min=0), default=0,
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
    from compressor.export.targets.export import export_model, export_run_model, output_name, phantom_kspace
    from compressor.export.triton.repository import TritonOptions, check_planned_entries

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
        run_models = [load_stage(stage_dir)] if stage_dir is not None else load_run_models(run_dir, _names(names))
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


@click.command("reconstruct", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Output HDF5: dataset 'reconstruction' (S, H, W) in the input's units, float32 (1-channel model) "
                   "or complex64 (2-channel model, with 'magnitude' float32). Required, except with --source mrd: "
                   "the output MRD v2 stream, standard output without --out.")
@click.option("--source", type=RECONSTRUCT_SOURCES,
              help="Input kind (default from the file name: .npy k-space, .nii/.nii.gz NIfTI, .h5 project HDF5, "
                   "or ismrmrd if it holds /dataset/xml and /dataset/data; ismrmrd: an ISMRMRD raw scan, Cartesian "
                   "2-D; mrd: an MRD v2 binary stream, INPUT '-' for "
                   "standard input, images out as an MRD v2 stream).")
@click.option("--ismrmrd-out", type=click.Path(path_type=Path, dir_okay=False),
              help="With --source ismrmrd: also write ISMRMRD magnitude images (float32, images_0) whose headers "
                   "carry the acquisitions' slice, position, orientation, field of view and measurement_uid.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Mask .npy (H, W) or line pattern (W,) (default: the model's training mask).")
@click.option("--mask-centred/--mask-uncentred", default=False, help="Whether --mask has DC at (H//2, W//2).")
@click.option("--centred/--uncentred", default=False, help="Whether .npy k-space has DC at (H//2, W//2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Slices per ONNX Runtime call.")
@click.option("--previews", type=click.Path(path_type=Path, file_okay=False), help="Folder for one PNG per slice.")
@click.option("--take-real-part", is_flag=True, default=False,
              help="1-channel models: reconstruct k-space of a complex-valued image anyway (its real part, as the "
                   "paper does). 2-channel models reconstruct the complex image.")
@click.option("--provider", type=PROVIDERS, default="auto", help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads (default: all cores).")
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
@handles_input_errors
def reconstruct_command(model_path: Path, input_path: Path, out: Path, source: str | None, ismrmrd_out: Path | None,
                        mask_path: Path | None, mask_centred: bool, centred: bool, batch_size: int,
                        previews: Path | None, take_real_part: bool, provider: str, threads: int | None,
                        progress: bool) -> None:
    """Reconstruct every slice of INPUT with an exported model (scanner side: ONNX Runtime only).

    INPUT: undersampled k-space (.npy, complex (S, H, W) or (H, W); multi-coil (S, coils, H, W) with a 2-channel
    model), or a project/fastMRI/authors HDF5 or NIfTI volume (stored k-space is masked, images have their
    measurement simulated with the mask), or an ISMRMRD raw scan (--source ismrmrd), or an MRD v2 stream
    (--source mrd: a stdin-to-stdout filter with INPUT '-' and no --out). Example: compress reconstruct
    d3c5.onnx scan.npy --out scan.h5
    """
    from compressor.export.scanner.input_formats import input_format

    if source is not None and input_format(source).streamed:
        not_for_streams = [option for option, value in {"--ismrmrd-out": ismrmrd_out, "--mask": mask_path,
                                                        "--previews": previews}.items() if value is not None]
        # options with defaults: refused only when given explicitly
        not_for_streams += _given(("centred", "mask_centred", "batch_size", "progress"))
        _reconstruct_mrd_stream(model_path, input_path, out, take_real_part, provider, threads, not_for_streams)
        return
    if out is None:
        raise UserError("--out is required (only --source mrd writes its images to standard output without it)")
    if str(input_path) == "-":
        raise UserError("INPUT '-' (standard input) is for MRD v2 streams only: add --source mrd")
    from compressor.export.scanner.reconstruct import reconstruct_file

    for path in (out, previews, ismrmrd_out):
        if path is not None:
            require_writable(path)
    result = reconstruct_file(model_path, input_path, out, source=source, mask_path=mask_path,
                              mask_centred=mask_centred, kspace_centred=centred, batch_size=batch_size,
                              previews=previews, take_real_part=take_real_part, provider=provider, threads=threads,
                              progress=progress, ismrmrd_out=ismrmrd_out)
    click.echo(f"{result.path}: {result.slices} slices reconstructed with {result.provider} in "
               f"{result.seconds:.1f} s" + (f"; {len(result.previews)} previews in {previews}" if previews else "")
               + (f"; ISMRMRD images in {result.ismrmrd_images}" if result.ismrmrd_images else ""))
    for note in result.notes:
        click.echo(f"note: {note}")


def _reconstruct_mrd_stream(model_path: Path, input_path: Path, out: Path | None, take_real_part: bool, provider: str,
                            threads: int | None, not_for_streams: Sequence[str]) -> None:
    """``reconstruct --source mrd``: an MRD v2 stream (a file, or standard input for ``-``) to an MRD v2 stream of
    images (``--out``, or standard output); the summary goes to standard error, which a filter's output is not.
    ``not_for_streams``: the options given that a stream does not use (refused)."""
    if not_for_streams:
        raise UserError(f"{', '.join(not_for_streams)} cannot be used with --source mrd (the stream is reconstructed "
                        "slice by slice as it arrives, into MRD v2 images on the model's training mask)")
    if out is not None:
        require_writable(out)
    import sys

    from compressor.export.scanner.mrd_stream import reconstruct_mrd

    result = reconstruct_mrd(model_path, input_path, out, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                             take_real_part=take_real_part, provider=provider, threads=threads)
    click.echo(f"{out or 'standard output'}: {result.images} MRD v2 images in {result.seconds:.1f} s"
               + (f"; not image data: {result.set_aside}" if result.set_aside else ""), err=True)


@click.command("benchmark", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run directory: include its trained models (with PSNR/SSIM) and use its mask.")
@click.option("--archs", help="Architectures to time (default: the teacher and d2c5,d3c5,d4c5).")
@click.option("--teacher", default="d5c5", help="Teacher architecture (compression reference) without --run.")
@click.option("--image-size", type=int, default=240, help="Square image size without --run.")
@click.option("--acceleration", type=float, default=4.0, help="Acceleration of the generated mask without --run.")
@click.option("--mask-type", type=click.Choice(["random", "equispaced"]), default="random",
              help="Generated mask type without --run.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for ONNX Runtime and PyTorch alike "
              "(default: PyTorch's count).")
@click.option("--iterations", type=click.IntRange(min=30), default=30, help="Timed iterations after warm-up.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, help="Warm-up iterations (not timed).")
@click.option("--provider", type=PROVIDERS, default="auto",
              help="ONNX Runtime execution provider (OpenVINO: python -m benchmarks.precision --openvino).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Output JSON (default <run>/benchmark.json, else ./benchmark.json); a CSV is written beside it.")
@click.option("--precision", "precisions", default="fp32",
              help="Comma-separated precisions to time, one row each (fp32, int8, fp16): with --run the run's "
                   "exports (compress export --precision), else files made from the random weights for timing.")
@handles_input_errors
def benchmark_command(run_dir: Path | None, archs: str | None, teacher: str, image_size: int, acceleration: float,
                      mask_type: str, threads: int | None, iterations: int, warmup: int, provider: str,
                      json_path: Path | None, precisions: str) -> None:
    """Latency of ONNX Runtime (with DF) vs PyTorch eager across model sizes and precisions: the paper's Table 8."""
    from compressor.export.benchmark.run import (
        DEFAULT_STUDENTS,
        benchmark_models,
        benchmark_run,
        format_table,
        parse_precisions,
        write_benchmark,
    )

    chosen = parse_precisions(precisions)
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    if run_dir is not None:
        result = benchmark_run(run_dir, _names(archs), threads=threads, iterations=iterations, warmup=warmup,
                               provider=provider, log=log, precisions=chosen)
        written = [run_dir / BENCHMARK_FILE, (run_dir / BENCHMARK_FILE).with_suffix(".csv")]
        if json_path is not None:
            written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    else:
        from compressor.masks import make_mask

        mask = make_mask(mask_type, acceleration, (image_size, image_size))
        result = benchmark_models(_names(archs) or [teacher, *DEFAULT_STUDENTS], mask.shape, mask, threads,
                                  iterations, warmup, teacher=teacher, provider=provider, log=log,
                                  precisions=chosen)
        json_path = json_path or Path(BENCHMARK_FILE)
        written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    click.echo(format_table(result))
    click.echo(f"\nwritten: {', '.join(str(p) for p in written)}")



@click.command("serve", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=9002,
              help="TCP port (9002 as python-ismrmrd-server's; 0 picks a free one, named in the log).")
@click.option("--provider", type=PROVIDERS, default="auto", help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1),
              help="Inference threads per slice (default: all cores, slices take turns; 1: one slice per "
                   "core at once, for many concurrent scans).")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              help="Seconds a connection may stay silent before it is closed.")
@click.option("--max-connections", type=click.IntRange(min=1), default=16, help="Scans served at once.")
@click.option("--take-real-part", is_flag=True, default=False,
              help="1-channel models: reconstruct the real part of complex-valued images instead of refusing them.")
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Log file, appended to (default: standard error). The server writes nothing else.")
@click.option("--verbose", is_flag=True, default=False, help="Also log every slice's latency.")
@handles_input_errors
def serve_command(model_path: Path, host: str, port: int, provider: str, threads: int | None, idle_timeout: float,
                  max_connections: int, take_real_part: bool, log_path: Path | None, verbose: bool) -> None:
    """Serve an exported model over the MRD streaming protocol (Siemens FIRE / OpenRecon, python-ismrmrd-server's
    clients): per connection config, XML header, acquisitions, close in; one ISMRMRD image per slice out, sent as
    soon as the slice's lines have arrived, then close. Ctrl-C stops it. Example: compress serve d3c5.onnx --port 9002
    --log serve.log
    """
    import signal

    from compressor.export.scanner.mrd_server import ReconstructionServer, server_logger

    if log_path is not None:
        require_writable(log_path)
    server = ReconstructionServer(model_path, host, port, provider=provider, threads=threads,
                                  idle_timeout=idle_timeout, max_connections=max_connections,
                                  take_real_part=take_real_part)
    server_logger(log_path, verbose)  # the server's logger, set up once the model has opened and the port is bound
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop is a Ctrl-C too
    server.serve_forever()


COMMANDS = [export_command, reconstruct_command, benchmark_command, serve_command]
