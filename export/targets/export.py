"""Export a trained DC-CNN, data-fidelity layers included, to validated files of an export target.

What is written is an export target's (:mod:`compressor.export.targets.registry`; the default, ``onnx-fp32``, one ONNX
file). :func:`export_model` drives every target the same way: trace (:mod:`compressor.export.graph.trace`), the target
writes under a temporary name, the shared validation (:mod:`compressor.export.graph.validate`) runs, and the files are
renamed only when every check passed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import compressor
from compressor.errors import InputError
from compressor.export.graph.scanner_graph import FORMULATIONS, ScannerGraph, exportable_formulations
from compressor.export.graph.trace import (
    OPSET,
    phantom_kspace,
    phantom_quality_slices,
    resolve_formulation,
    trace_graph,
)
from compressor.export.graph.validate import PrecisionCheck, QualitySlices, ValidationReport
from compressor.export.precision.quantize import CalibrationSlices, PrecisionOptions, precision_of
from compressor.export.run_models import (
    EXPORTS_FOLDER,
    RunModel,
    load_run_models,
    run_training_kspace,
    run_validation_images,
    run_validation_kspace,
    simulated_kspace,
)
from compressor.export.runtimes.runtime import (
    CPU,
    OPENVINO,
    ExportedModel,
    ExportMetadata,
    choose_provider,
    open_exported,
)
from compressor.export.targets.registry import DEFAULT_TARGET, EXPORT_TARGETS, ExportRequest
from compressor.io import save_json
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel


@dataclass
class ExportResult:
    """A validated export.

    Attributes:
        path: the ONNX file.
        max_abs_error: max |runtime - PyTorch| of the reconstruction over the validation slices (for a
            2-channel model, of its real or imaginary part, whichever is relatively worse).
        relative_error: that error divided by max |PyTorch reconstruction|.
        tolerance: the absolute tolerance it passed (``1e-4 x max |PyTorch reconstruction|``).
        reference_evaluator_error: max |onnx.reference - PyTorch| on one slice.
        provider: the runtime that ran the validation (:func:`~compressor.export.runtimes.runtime.choose_provider`'s
        name).
        formulation: the DF formulation in the graph.
        seconds: wall time of export plus validation.
        validation_slices: how many slices were compared.
        metadata: what the file records.
        target: the export target that wrote it (:data:`~compressor.export.targets.registry.EXPORT_TARGETS`).
        precision: the file's precision (``fp32``, ``int8``, ``fp16``).
        precision_check: for a non-fp32 file, its validation in image terms (ΔPSNR/ΔSSIM against the fp32 export,
            sampled-line deviation, ``onnx.reference`` parity); its comparisons above are against the fp32 export.
    """

    path: Path
    max_abs_error: float
    relative_error: float
    tolerance: float
    reference_evaluator_error: float
    provider: str
    formulation: str
    seconds: float
    validation_slices: int
    metadata: ExportMetadata
    target: str = DEFAULT_TARGET
    precision: str = "fp32"
    precision_check: PrecisionCheck | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the export."""
        return {"file": str(self.path), "architecture": self.metadata.architecture,
                "parameters": self.metadata.parameters, "image_channels": self.metadata.image_channels,
                "formulation": self.formulation, "provider": self.provider,
                "max_abs_error": self.max_abs_error, "relative_error": self.relative_error,
                "tolerance": _finite(self.tolerance),
                "reference_evaluator_error": _finite(self.reference_evaluator_error),
                "validation_slices": self.validation_slices, "seconds": self.seconds, "precision": self.precision,
                **({"precision_check": self.precision_check.to_json()} if self.precision_check else {})}


def _finite(value: float) -> float | None:
    """``value``, or ``None`` (JSON ``null``) where it is not finite: a precision file has no tolerance against
    PyTorch (it is held to its PSNR bound), nor an ``onnx.reference`` figure where that cannot run it."""
    return value if np.isfinite(value) else None


def export_model(
    model: CascadeModel,
    out_path: str | Path,
    *,
    mask: SamplingMask,
    validation_kspace: np.ndarray,
    acceleration: float | None = None,
    config_key: str | None = None,
    extras: Mapping[str, Any] | None = None,
    formulation: str = "auto",
    provider: str = "auto",
    relative_tolerance: float | None = None,
    target: str = DEFAULT_TARGET,
    quality_slices: QualitySlices | None = None,
    calibration: CalibrationSlices | None = None,
    precision_options: PrecisionOptions | None = None,
) -> ExportResult:
    """Export ``model`` with its DF layers through ``target`` to ``out_path`` and validate it; nothing is left
    behind on failure (steps in :mod:`compressor.export.targets.registry`).

    Args:
        model: the trained model (any device; a CPU copy is exported, ``model`` is not modified).
        out_path: destination of the target's output, e.g. a ``.onnx`` file (its folder is created).
        mask: the training mask; its shape is the graph's fixed image size and it is recorded in the metadata.
        validation_kspace: ``(S, H, W)`` complex, uncentred k-space undersampled with ``mask`` (real slices; for a
            2-channel model preferably of complex images, which is what it is for).
        acceleration: nominal acceleration to record (default: the mask's).
        config_key: the run's stage key to record.
        extras: further metadata (role, run name, ...).
        formulation: ``"auto"``, ``"lines"`` or ``"dft"`` (see :mod:`compressor.export.graph.scanner_graph`).
        provider: ``"auto"`` or a registered provider
        (:data:`~compressor.export.runtimes.runtime.EXECUTION_PROVIDERS`) for
            the validation session.
        relative_tolerance: validation tolerance relative to the reference's max (default: the target's).
        target: a name registered in :data:`~compressor.export.targets.registry.EXPORT_TARGETS`.
        quality_slices: slices with fully sampled images on which a precision (non-fp32) target's image quality is
            measured against the fp32 export (default: Shepp-Logan phantoms, :func:`phantom_quality_slices`).
        calibration: the slices that calibrate INT8 (default: ``validation_kspace``).
        precision_options: calibration method and slices, the PSNR-loss bound (default:
            :class:`~compressor.export.precision.quantize.PrecisionOptions`).

    Raises:
        export.validate.ExportValidationError: a check failed (the message lists every failure and by how much).
        InputError: bad arguments (target, formulation, validation data of the wrong shape).
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    exporter = EXPORT_TARGETS.get(target)()
    chosen = resolve_formulation(formulation, mask)
    if not FORMULATIONS.get(chosen.name).exportable:
        raise InputError(f"formulation {chosen.name!r} is for benchmarks only; export uses "
                         f"{' or '.join(exportable_formulations())}")
    validation_kspace = np.asarray(validation_kspace)
    if validation_kspace.ndim != 3 or validation_kspace.shape[1:] != mask.shape or not len(validation_kspace):
        raise InputError(f"validation k-space must be (S, H, W) = (S, {mask.shape[0]}, {mask.shape[1]}) with S >= 1, "
                         f"got {validation_kspace.shape}")
    cpu_model = copy.deepcopy(model).cpu().eval()
    if not cpu_model.has_data_fidelity:
        raise InputError(f"{getattr(cpu_model, 'arch', type(cpu_model).__name__)} has no data-fidelity layers: only "
                         "k-space reconstruction models (e.g. dNcM, dcunetM) are exported")
    metadata = ExportMetadata(
        architecture=getattr(cpu_model, "arch", type(cpu_model).__name__), parameters=cpu_model.num_parameters(),
        image_size=mask.shape, acceleration=acceleration if acceleration is not None else mask.acceleration,
        mask=mask.values, mask_digest=mask.digest(), formulation=chosen.name, line_axis=chosen.line_axis,
        model_options=cpu_model.options.to_dict() if hasattr(cpu_model, "options") else {},
        config_key=config_key, tool_version=compressor.__version__,
        extras={"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": OPSET,
                "precision": exporter.precision, **(extras or {})},
        image_channels=cpu_model.image_channels,
    )
    if exporter.precision != "fp32" and quality_slices is None:
        quality_slices = phantom_quality_slices(mask, cpu_model.image_channels)
    runtime = choose_provider(provider)
    request = ExportRequest(cpu_model, mask, chosen.name, chosen.line_axis, metadata, validation_kspace,
                            quality_slices, calibration, precision_options or PrecisionOptions(), runtime)
    proto = trace_graph(ScannerGraph(cpu_model, mask.shape, chosen.name, chosen.line_axis))
    traced = onnx.ModelProto.FromString(proto.SerializeToString())  # the fp32 reference, whatever write() changes
    tolerance = exporter.relative_tolerance if relative_tolerance is None else relative_tolerance
    with exporter.staging(out_path) as staged:
        onnx_file = exporter.write(proto, request, staged)
        exported = open_exported(onnx_file, provider)
        report = exporter.validate(onnx_file, exported, traced, request, tolerance)
        report.raise_for_failures(out_path)
    return _result(out_path, report, exported, chosen.name, time.perf_counter() - started, len(validation_kspace),
                   target)


def _result(path: Path, report: ValidationReport, exported: ExportedModel, formulation: str, seconds: float,
            slices: int, target: str) -> ExportResult:
    """The result of a validated export; ``exported.metadata`` is what the file records."""
    metadata, provider = exported.metadata, exported.provider
    image_outputs = metadata.outputs.image_names
    image = report.worst(exported.runtime, image_outputs)
    reference = [c for c in report.comparisons if c.runtime == "onnx.reference" and c.output in image_outputs]
    return ExportResult(path=path, max_abs_error=image.max_abs_error, relative_error=image.relative_error,
                        tolerance=image.tolerance,
                        reference_evaluator_error=max((c.max_abs_error for c in reference), default=float("nan")),
                        provider=provider, formulation=formulation, seconds=seconds, validation_slices=slices,
                        metadata=metadata, target=target, precision=precision_of(metadata.extras),
                        precision_check=report.precision)


def describe_validation(result: ExportResult) -> str:
    """What validated ``result``, in a few words: the fp32 error against PyTorch, or a precision's image terms (and,
    for INT8, whether it pays on this CPU)."""
    check = result.precision_check
    if check is None:
        return f"max abs error {result.max_abs_error:.1e} <= {result.tolerance:.1e}, {result.provider}"
    return "; ".join(precision_lines(result))


def precision_lines(result: ExportResult) -> list[str]:
    """The lines a precision export prints: quality and DF check, INT8's layer choice and speed on this CPU."""
    check, extras = result.precision_check, result.metadata.extras
    lines = [f"{result.precision}: ΔPSNR {-check.quality.psnr_loss:+.3f} dB (bound -{check.bound:g}), ΔSSIM "
             f"{-check.quality.ssim_loss:+.4f} vs the fp32 export on {check.quality.slices} slices; sampled lines "
             f"off the measurement by {check.line_deviation:.1e} (fp32 export {check.line_deviation_fp32:.1e}); "
             + (f"onnx.reference parity {check.reference_parity:.1e}" if check.reference_parity is not None
                else check.reference_note)]
    quantization = extras.get("quantization")
    if quantization:
        kept: dict[str, list[str]] = {}  # the structural reasons are shared by a layer of every cascade
        for layer in quantization["layers"]:
            if not layer["int8"]:
                kept.setdefault(layer["kept_fp32_because"], []).append(layer["layer"])
        lines.append(f"INT8 convolutions: {len(quantization['int8_nodes'])}/{len(quantization['layers'])}; kept fp32: "
                     + ("; ".join(f"{', '.join(layers)} ({reason})" for reason, layers in kept.items()) or "none"))
        lines.append(f"calibration: {quantization['calibration']['method']} on {quantization['calibration']['slices']} "
                     f"slices of {quantization['calibration']['source']}; {quantization['reason']}")
        qat = quantization["qat"]
        if qat.get("steps"):
            lines.append(f"quantization-aware fine-tuning ({qat['steps']} steps; every allowed convolution INT8 lost "
                         f"{qat['ptq_all_convolutions_psnr_loss_db']:.3f} dB after PTQ, "
                         f"{qat['qat_all_convolutions_psnr_loss_db']:.3f} dB after it): "
                         + ("used, every allowed convolution INT8" if qat["used"] else
                            "not used, the PTQ choice is kept"))
        speed = extras["int8_speed"]
        verdict = "pays" if speed["pays"] else "does not pay"
        lines.append(f"INT8 {verdict} on this CPU ({speed['cpu']}): {speed['speedup']:.2f}x the fp32 speed at batch 1 "
                     f"({speed['int8_median_ms']:.2f} vs {speed['fp32_median_ms']:.2f} ms, median of {speed['runs']})"
                     + ("" if "openvino_speedup" not in speed else
                        f"; on OpenVINO (--provider openvino) it runs at {speed['openvino_speedup']:.2f}x ONNX "
                        f"Runtime's fp32 speed ({speed['openvino_int8_median_ms']:.2f} ms)"))
    if "fp16" in extras:
        lines.append(f"fp16 {extras['fp16']['cpu_note']}" if result.provider in (CPU, OPENVINO) else
                     f"fp16 validated on {result.provider}")
    return lines


def output_name(stem: str, target: str = DEFAULT_TARGET) -> str:
    """The name ``target`` writes a model called ``stem`` to: ``<stem>.onnx`` for ``onnx-fp32``."""
    return EXPORT_TARGETS.get(target)().output_name(stem)


def export_run_model(run_model: RunModel, out_path: str | Path, *, formulation: str = "auto",
                     provider: str = "auto", validation_kspace: np.ndarray | None = None,
                     target: str = DEFAULT_TARGET, precision_options: PrecisionOptions | None = None) -> ExportResult:
    """Export one trained model of a run, validated against PyTorch on evenly spaced slices of the run's validation
    split (else phantoms); a precision target measures its quality on the whole validation split (its selection of
    INT8 layers included) and INT8 calibrates on the run's training split (else on the validation data, and its
    metadata says so)."""
    images = run_validation_images(run_model, count=None)
    quality = None
    if images is not None:
        quality = QualitySlices(simulated_kspace(images, run_model.mask.values), images,
                                f"the run's {len(images)} validation slices")
    if validation_kspace is None:
        validation_kspace = run_validation_kspace(run_model) if images is not None else phantom_kspace(
            run_model.mask, image_channels=run_model.model.image_channels)
    calibration = None
    if EXPORT_TARGETS.get(target).precision == "int8":
        options = precision_options or PrecisionOptions()
        training = run_training_kspace(run_model, options.calibration_slices)
        calibration = (CalibrationSlices(training, "the run's training split") if training is not None else
                       CalibrationSlices(validation_kspace, "the validation slices (the run's training data is not "
                                                            "readable here)"))
    stage = run_model.stage
    return export_model(run_model.model, out_path, mask=run_model.mask, validation_kspace=validation_kspace,
                        acceleration=stage.acceleration, config_key=stage.key,
                        extras={"name": run_model.name, "role": run_model.role, "method": stage.method,
                                "stage": stage.stage},
                        formulation=formulation, provider=provider, target=target, quality_slices=quality,
                        calibration=calibration, precision_options=precision_options)


def export_run(run_dir: str | Path, names: list[str] | None = None, *, formulation: str = "auto",
               provider: str = "auto", log: Callable[[str], None] = print,
               targets: Sequence[str] = (DEFAULT_TARGET,),
               precision_options: PrecisionOptions | None = None) -> list[ExportResult]:
    """Export every trained model of ``run_dir`` (or those named) through each of ``targets`` to
    ``<run>/exports/`` (``<name>.onnx`` for ``onnx-fp32``) and write ``<run>/exports/exports.json`` with each file's
    validation figures. Called at the end of ``compress``. Without ``names``, models without DF layers (the
    feature-domain ablation's) are skipped with a log line."""

    run_dir = Path(run_dir)
    results = []
    run_models = load_run_models(run_dir, names)
    image_to_image = [m.name for m in run_models if names is None and not m.model.has_data_fidelity]
    if image_to_image:
        log(f"not exported (no data-fidelity layers; the scanner graph takes k-space): {', '.join(image_to_image)}")
    for target in targets:
        EXPORT_TARGETS.get(target)  # an unknown target fails before the first export
    for run_model in run_models:
        if run_model.name in image_to_image:
            continue
        for target in targets:
            destination = run_dir / EXPORTS_FOLDER / output_name(Path(run_model.file_name).stem, target)
            result = export_run_model(run_model, destination, formulation=formulation, provider=provider,
                                      target=target, precision_options=precision_options)
            log(f"exported {run_model.name} -> {result.path} ({result.formulation}, {describe_validation(result)})")
            results.append(result)
    save_json(run_dir / EXPORTS_FOLDER / "exports.json", [r.summary() for r in results])
    return results
