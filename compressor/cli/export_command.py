"""``compress export``: a run's models, one stage or bare weights to validated ONNX files of each precision (and a
Triton repository). Bad input exits with code 2 and one line; an export that fails validation exits with code 1 and
says by how much. The work is :mod:`compressor.workflow.export_job`'s: the options become an ``ExportRequest``."""

from __future__ import annotations

from pathlib import Path

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
from compressor.cli.common import CONSOLE, OneLineCommand, comma_separated, handles_input_errors, option_group

EXPORT_GROUPS = ("What to export", "Bare weights (--weights)", "Validation", "Precision", "Output", "Triton")
"""The ``--help`` sections of ``compress export``'s options, in order."""
source_option, weights_option, validation_option, precision_option, output_option, triton_option = map(
    option_group, EXPORT_GROUPS)


def _image_size(size: int) -> int:
    """``--image-size`` of bare weights, refused below the smallest image size training takes."""
    from compressor.data.section import MIN_IMAGE_SIZE

    if size < MIN_IMAGE_SIZE:
        raise click.BadParameter(f"{size} is smaller than the smallest image size, {MIN_IMAGE_SIZE}",
                                 param_hint="'--image-size'")
    return size


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
                   help="Runtime that validates the files (and measures INT8's layer choice): an ONNX Runtime "
                        "execution provider, or openvino (OpenVINO's CPU runtime).")
@precision_option("--target", type=TARGETS, default="onnx-fp32",
                  help="What to write: onnx-fp32 is one validated fp32 ONNX file per model.")
@precision_option("--precision",
                  help="Comma-separated precisions, each its own validated ONNX file: fp32 (<model>.onnx), int8 "
                       "(<model>.int8.onnx: post-training static INT8 of the convolutions a per-block sensitivity "
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
    from compressor.export.graph.validate import ExportValidationError
    from compressor.export.precision.options import PrecisionOptions
    from compressor.export.serving import TritonOptions
    from compressor.models import ModelOptions
    from compressor.workflow.export_job import (
        INT8_OPTIONS,
        TRITON_OPTIONS,
        BareWeights,
        ExportRequest,
        plan_export,
        run_export,
    )

    model = ModelOptions(block_form=block_form, block_padding=block_padding, width=width, image_channels=image_channels)
    bare = None if weights is None else BareWeights(weights, arch, model, acceleration, image_size, mask_path,
                                                    mask_centred, mask_type, mask_seed)
    request = ExportRequest(
        run_dir=run_dir, names=comma_separated(names), stage_dir=stage_dir, weights=bare, validation=validation_path,
        source=source, formulation=formulation, provider=provider, target=target, precision=precision,
        precision_options=PrecisionOptions(calibration_slices, calibration_method, max_psnr_loss, qat_threshold,
                                           qat_steps),
        out=out, triton_repo=triton_repo, triton=TritonOptions(max_batch_size=triton_max_batch,
                                                               instance_kind=triton_instance,
                                                               intra_op_threads=triton_threads),
        given=frozenset(given_options([flag[2:].replace("-", "_") for flag in TRITON_OPTIONS + INT8_OPTIONS])))
    plan = plan_export(request, CONSOLE)  # every check and read; nothing is written before it passes
    try:
        run_export(plan, CONSOLE)
    except ExportValidationError as error:
        raise click.ClickException(str(error)) from None
