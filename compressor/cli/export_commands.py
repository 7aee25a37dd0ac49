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
from compressor.rundir import BENCHMARK_FILE, EXPORTS_FOLDER

if TYPE_CHECKING:
    import numpy as np

    from compressor.export.onnx_export import ExportResult
    from compressor.masks import SamplingMask

SHOW_DEFAULTS = {"show_default": True}
SOURCES = click.Choice(["npy", "project", "fastmri", "nifti", "authors"])


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


def _providers() -> list[str]:
    from compressor.export.runtime import provider_choices

    return provider_choices()


def _formulations() -> list[str]:
    from compressor.export.graph import exportable_formulations

    return ["auto", *exportable_formulations()]


def _targets() -> list[str]:
    from compressor.export.targets import EXPORT_TARGETS

    return EXPORT_TARGETS.names()


PROVIDERS = RegistryChoice(_providers)
FORMULATIONS = RegistryChoice(_formulations)
TARGETS = RegistryChoice(_targets)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _validation_kspace(path: Path | None, source: str | None, mask: SamplingMask, acceleration: float | None,
                       image_channels: int, count: int = 8) -> np.ndarray | None:
    """Up to ``count`` evenly spaced slices of a data file as validation k-space (read as the model of
    ``image_channels`` reads it: with phase for 2), or ``None`` without a file."""
    if path is None:
        return None
    from compressor.export.reconstruct import infer_source, read_input
    from compressor.export.run_models import evenly_spaced_indices

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


def _report_export(result: ExportResult) -> None:
    click.echo(f"{result.path}: {result.metadata.architecture}, {result.metadata.parameters} parameters, "
               f"DF formulation {result.formulation}; validated on {result.validation_slices} slices with "
               f"{result.provider}: max abs error {result.max_abs_error:.2e} (relative {result.relative_error:.2e}, "
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
@click.option("--image-size", type=int, default=240, help="Square image size of the bare weights' training data.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Training mask .npy of the bare weights (default: a generated --mask-type mask).")
@click.option("--mask-centred/--mask-uncentred", default=None, help="Whether --mask has DC at (H//2, W//2).")
@click.option("--mask-type", type=click.Choice(["random", "equispaced"]), default="random",
              help="Generated mask type for bare weights.")
@click.option("--mask-seed", type=int, default=0, help="Seed of the generated mask for bare weights.")
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
@click.option("--provider", type=PROVIDERS, default="auto", help="ONNX Runtime provider for validation.")
@click.option("--target", type=TARGETS, default="onnx-fp32",
              help="What to write: onnx-fp32 is one validated fp32 ONNX file per model.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output .onnx file (--stage, --weights) or folder (--run); default <run>/exports or beside "
                   "the weights.")
@handles_input_errors
def export_command(run_dir: Path | None, names: str | None, stage_dir: Path | None, arch: str | None,
                   weights: Path | None, acceleration: float, image_size: int, mask_path: Path | None,
                   mask_centred: bool | None, mask_type: str, mask_seed: int, block_form: str, block_padding: int,
                   width: int, image_channels: int, validation_path: Path | None, source: str | None,
                   formulation: str, provider: str, target: str, out: Path | None) -> None:
    """Export trained DC-CNNs with their data-fidelity layers to validated ONNX files.

    Inputs of the graph: k-space (real, imaginary; uncentred) and mask; outputs: the normalised image (of a
    2-channel model, its real and imaginary parts and magnitude) and its scale. Examples:
    compress export --run runs/default --model sft_kd/at/d3c5@4x;
    compress export --arch d3c5 --weights w.safetensors --acceleration 4 --image-size 240 --out d3c5.onnx
    """
    if sum(x is not None for x in (run_dir, stage_dir, weights)) != 1:
        raise UserError("give exactly one of --run, --stage or --weights (with --arch)")
    if names and run_dir is None:
        raise UserError("--model names models of a run; add --run DIR")
    if out is not None:
        require_writable(out)
    from compressor.export.onnx_export import export_model, export_run_model, output_name, phantom_kspace
    from compressor.export.run_models import load_run_models, load_stage
    from compressor.export.validate import ExportValidationError

    try:
        if weights is not None:
            if arch is None:
                raise UserError("--weights needs --arch (e.g. --arch d3c5)")
            from compressor.models import ModelOptions, build_model
            from compressor.training.checkpoint import load_weights

            options = ModelOptions(block_form=block_form, block_padding=block_padding, channels=width,
                                   image_channels=image_channels)
            model = load_weights(weights, build_model(arch, options)).eval()
            mask = _bare_mask(acceleration, image_size, mask_path, mask_centred, mask_type, mask_seed)
            kspace = _validation_kspace(validation_path, source, mask, acceleration, image_channels)
            if kspace is None:
                click.echo("no --validation data: validating on Shepp-Logan phantoms", err=True)
                kspace = phantom_kspace(mask, image_channels=image_channels)
            result = export_model(model, out or weights.with_name(output_name(weights.stem, target)), mask=mask,
                                  validation_kspace=kspace, acceleration=acceleration, extras={"weights": weights.name},
                                  formulation=formulation, provider=provider, target=target)
            _report_export(result)
            return
        run_models = [load_stage(stage_dir)] if stage_dir is not None else load_run_models(run_dir, _names(names))
        for run_model in run_models:
            file_name = output_name(Path(run_model.file_name).stem, target)
            if stage_dir is not None:
                destination = out or stage_dir.parent.parent / EXPORTS_FOLDER / file_name
            else:
                destination = (out or run_dir / EXPORTS_FOLDER) / file_name
            kspace = _validation_kspace(validation_path, source, run_model.mask, run_model.stage.acceleration,
                                        run_model.model.image_channels)
            _report_export(export_run_model(run_model, destination, formulation=formulation, provider=provider,
                                            validation_kspace=kspace, target=target))
    except ExportValidationError as error:
        raise click.ClickException(str(error)) from None


@click.command("reconstruct", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Output HDF5: dataset 'reconstruction' (S, H, W) in the input's units, float32 (1-channel model) "
                   "or complex64 (2-channel model, with 'magnitude' float32).")
@click.option("--source", type=SOURCES,
              help="Input kind (default from the file name: .npy k-space, .nii/.nii.gz NIfTI, .h5 project HDF5).")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Mask .npy (H, W) or line pattern (W,) (default: the model's training mask).")
@click.option("--mask-centred/--mask-uncentred", default=False, help="Whether --mask has DC at (H//2, W//2).")
@click.option("--centred/--uncentred", default=False, help="Whether .npy k-space has DC at (H//2, W//2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Slices per ONNX Runtime call.")
@click.option("--previews", type=click.Path(path_type=Path, file_okay=False), help="Folder for one PNG per slice.")
@click.option("--take-real-part", is_flag=True, default=False,
              help="1-channel models: reconstruct k-space of a complex-valued image anyway (its real part, as the "
                   "paper does). 2-channel models reconstruct the complex image.")
@click.option("--provider", type=PROVIDERS, default="auto", help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
@handles_input_errors
def reconstruct_command(model_path: Path, input_path: Path, out: Path, source: str | None, mask_path: Path | None,
                        mask_centred: bool, centred: bool, batch_size: int, previews: Path | None,
                        take_real_part: bool, provider: str, threads: int | None, progress: bool) -> None:
    """Reconstruct every slice of INPUT with an exported model (scanner side: ONNX Runtime only).

    INPUT: undersampled k-space (.npy, complex (S, H, W) or (H, W); multi-coil (S, coils, H, W) with a 2-channel
    model), or a project/fastMRI/authors HDF5 or NIfTI volume (stored k-space is masked, images have their
    measurement simulated with the mask). Example: compress reconstruct d3c5.onnx scan.npy --out scan.h5
    """
    from compressor.export.reconstruct import reconstruct_file

    for path in (out, previews):
        if path is not None:
            require_writable(path)
    result = reconstruct_file(model_path, input_path, out, source=source, mask_path=mask_path,
                              mask_centred=mask_centred, kspace_centred=centred, batch_size=batch_size,
                              previews=previews, take_real_part=take_real_part, provider=provider, threads=threads,
                              progress=progress)
    click.echo(f"{result.path}: {result.slices} slices reconstructed with {result.provider} in "
               f"{result.seconds:.1f} s" + (f"; {len(result.previews)} previews in {previews}" if previews else ""))


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
@click.option("--provider", type=PROVIDERS, default="auto", help="ONNX Runtime execution provider.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Output JSON (default <run>/benchmark.json, else ./benchmark.json); a CSV is written beside it.")
@handles_input_errors
def benchmark_command(run_dir: Path | None, archs: str | None, teacher: str, image_size: int, acceleration: float,
                      mask_type: str, threads: int | None, iterations: int, warmup: int, provider: str,
                      json_path: Path | None) -> None:
    """Latency of ONNX Runtime (with DF) vs PyTorch eager across model sizes: the paper's Table 8."""
    from compressor.export.benchmark import (
        DEFAULT_STUDENTS,
        benchmark_models,
        benchmark_run,
        format_table,
        write_benchmark,
    )

    log = lambda message: click.echo(message, err=True)  # noqa: E731
    if run_dir is not None:
        result = benchmark_run(run_dir, _names(archs), threads=threads, iterations=iterations, warmup=warmup,
                               provider=provider, log=log)
        written = [run_dir / BENCHMARK_FILE, (run_dir / BENCHMARK_FILE).with_suffix(".csv")]
        if json_path is not None:
            written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    else:
        from compressor.masks import make_mask

        mask = make_mask(mask_type, acceleration, (image_size, image_size))
        result = benchmark_models(_names(archs) or [teacher, *DEFAULT_STUDENTS], mask.shape, mask, threads,
                                  iterations, warmup, teacher=teacher, provider=provider, log=log)
        json_path = json_path or Path(BENCHMARK_FILE)
        written = write_benchmark(result, json_path, json_path.with_suffix(".csv"))
    click.echo(format_table(result))
    click.echo(f"\nwritten: {', '.join(str(p) for p in written)}")


COMMANDS = [export_command, reconstruct_command, benchmark_command]
