"""Export a trained DC-CNN, data-fidelity layers included, to validated files of an export target.

What is written is an export target's (:mod:`compressor.export.targets.registry`; the default, ``onnx-fp32``, one ONNX
file). :func:`export_model` drives every target the same way: trace (:mod:`compressor.export.graph.trace`), the target
writes under a temporary name, the shared validation (:mod:`compressor.export.graph.validate`) runs, and the files are
renamed only when every check passed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import compressor
from compressor import rundir
from compressor.errors import InputError
from compressor.export.exported_file import ExporterRecord, ExportMetadata, ModelOrigin, Precision
from compressor.export.graph.scanner_graph import FORMULATIONS, ScannerGraph, exportable_formulations
from compressor.export.graph.trace import (
    OPSET,
    Formulation,
    phantom_kspace,
    phantom_quality_slices,
    resolve_formulation,
    trace_graph,
)
from compressor.export.graph.validate import PrecisionCheck, QualitySlices, ValidationReport
from compressor.export.precision.options import CalibrationSlices, PrecisionOptions
from compressor.export.run_models import (
    EXPORTS_FOLDER,
    RunModel,
    load_run_models,
    run_training_kspace,
    run_validation_images,
    run_validation_kspace,
    simulated_kspace,
)
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.registry import AUTO, choose_runtime
from compressor.export.runtimes.session import ExportedModel, open_exported
from compressor.export.targets.registry import DEFAULT_TARGET, EXPORT_TARGETS, ExportRequest
from compressor.masks import SamplingMask
from compressor.models.base import CascadeModel

__all__ = ["ExportResult", "describe_validation", "export_model", "export_run", "export_run_model", "output_name",
           "phantom_kspace", "precision_lines", "resolve_formulation", "simulated_kspace"]

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
        runtime: the runtime that ran the validation (results name it by its :attr:`~Runtime.name`).
        formulation: the DF formulation in the graph.
        seconds: wall time of export plus validation.
        validation_slices: how many slices were compared.
        metadata: what the file records.
        target: the export target that wrote it (:data:`~compressor.export.targets.registry.EXPORT_TARGETS`).
        precision: the file's precision.
        precision_check: for a non-fp32 file, its validation in image terms (ΔPSNR/ΔSSIM against the fp32 export,
            sampled-line deviation, ``onnx.reference`` parity); its comparisons above are against the fp32 export.
    """

    path: Path
    max_abs_error: float
    relative_error: float
    tolerance: float
    reference_evaluator_error: float
    runtime: Runtime
    formulation: str
    seconds: float
    validation_slices: int
    metadata: ExportMetadata
    target: str = DEFAULT_TARGET
    precision: Precision = Precision.FP32
    precision_check: PrecisionCheck | None = None

    def entry(self) -> rundir.ExportEntry:
        """What ``exports.json`` records of the export (:class:`compressor.rundir.ExportEntry`)."""
        return rundir.ExportEntry(
            file=str(self.path), architecture=self.metadata.architecture, parameters=self.metadata.parameters,
            image_channels=self.metadata.image_channels, formulation=self.formulation, provider=self.runtime.name,
            max_abs_error=self.max_abs_error, relative_error=self.relative_error, tolerance=_finite(self.tolerance),
            reference_evaluator_error=_finite(self.reference_evaluator_error),
            validation_slices=self.validation_slices, seconds=self.seconds, precision=self.precision.value,
            precision_check=self.precision_check.entry() if self.precision_check else None)


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
    origin: ModelOrigin | None = None,
    formulation: str = "auto",
    provider: str = AUTO,
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
        origin: the run model or weights file exported, to record.
        formulation: ``"auto"``, ``"lines"`` or ``"dft"`` (see :mod:`compressor.export.graph.scanner_graph`).
        provider: ``"auto"`` or a registered runtime's key (:func:`~compressor.export.runtimes.registry.
            choose_runtime`) for the validation session.
        relative_tolerance: validation tolerance relative to the reference's max (default: the target's).
        target: a name registered in :data:`~compressor.export.targets.registry.EXPORT_TARGETS`.
        quality_slices: slices with fully sampled images on which a precision (non-fp32) target's image quality is
            measured against the fp32 export (default: Shepp-Logan phantoms, :func:`phantom_quality_slices`).
        calibration: the slices that calibrate INT8 (default: ``validation_kspace``).
        precision_options: calibration method and slices, the PSNR-loss bound (default:
            :class:`~compressor.export.precision.options.PrecisionOptions`).

    Raises:
        export.validate.ExportValidationError: a check failed (the message lists every failure and by how much).
        InputError: bad arguments (target, formulation, validation data of the wrong shape).
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    exporter = EXPORT_TARGETS.get(target)()
    chosen = _exportable_formulation(formulation, mask)
    validation_kspace = _validation_kspace(validation_kspace, mask)
    cpu_model = _exportable_model(model)
    metadata = export_metadata(cpu_model, mask, chosen, exporter.precision, acceleration, config_key, origin)
    if exporter.precision is not Precision.FP32 and quality_slices is None:
        quality_slices = phantom_quality_slices(mask, cpu_model.image_channels)
    request = ExportRequest(cpu_model, mask, chosen.name, chosen.line_axis, metadata, validation_kspace,
                            quality_slices, calibration, precision_options or PrecisionOptions(),
                            choose_runtime(provider))
    proto = trace_graph(ScannerGraph(cpu_model, mask.shape, chosen.name, chosen.line_axis))
    traced = onnx.ModelProto.FromString(proto.SerializeToString())  # the fp32 reference, whatever write() changes
    tolerance = exporter.relative_tolerance if relative_tolerance is None else relative_tolerance
    with exporter.staging(out_path) as staged:
        onnx_file = exporter.write(proto, request, staged)
        exported = open_exported(onnx_file, request.runtime)
        report = exporter.validate(onnx_file, exported, traced, request, tolerance)
        report.raise_for_failures(out_path)
    return _result(out_path, report, exported, chosen.name, time.perf_counter() - started, len(validation_kspace),
                   target)


def _exportable_formulation(formulation: str, mask: SamplingMask) -> Formulation:
    """The DF formulation ``formulation`` resolves to for ``mask``; one for benchmarks only is an
    :class:`InputError`."""
    chosen = resolve_formulation(formulation, mask)
    if not FORMULATIONS.get(chosen.name).exportable:
        raise InputError(f"formulation {chosen.name!r} is for benchmarks only; export uses "
                         f"{' or '.join(exportable_formulations())}")
    return chosen


def _validation_kspace(kspace: np.ndarray, mask: SamplingMask) -> np.ndarray:
    """``kspace`` as an array, which must be ``(S, H, W)`` of the mask's ``(H, W)`` with ``S >= 1``."""
    kspace = np.asarray(kspace)
    if kspace.ndim != 3 or kspace.shape[1:] != mask.shape or not len(kspace):
        raise InputError(f"validation k-space must be (S, H, W) = (S, {mask.shape[0]}, {mask.shape[1]}) with S >= 1, "
                         f"got {kspace.shape}")
    return kspace


def _exportable_model(model: CascadeModel) -> CascadeModel:
    """A CPU copy of ``model`` in eval mode; a model without DF layers is an :class:`InputError`."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    if not cpu_model.has_data_fidelity:
        raise InputError(f"{getattr(cpu_model, 'arch', type(cpu_model).__name__)} has no data-fidelity layers: only "
                         "k-space reconstruction models (e.g. dNcM, dcunetM) are exported")
    return cpu_model


def export_metadata(model: CascadeModel, mask: SamplingMask, formulation: Formulation, precision: Precision,
                    acceleration: float | None = None, config_key: str | None = None,
                    origin: ModelOrigin | None = None) -> ExportMetadata:
    """What the export of ``model`` (CPU, eval mode) traced with ``formulation`` records before its target adds how
    a ``precision`` file was made; ``acceleration`` defaults to the mask's."""
    return ExportMetadata(
        architecture=getattr(model, "arch", type(model).__name__), parameters=model.num_parameters(),
        image_size=mask.shape, acceleration=acceleration if acceleration is not None else mask.acceleration,
        mask=mask.values, mask_digest=mask.digest(), formulation=formulation.name, line_axis=formulation.line_axis,
        model_options=model.options.to_dict() if hasattr(model, "options") else {},
        config_key=config_key, tool_version=compressor.__version__,
        exporter=ExporterRecord(f"torch.onnx.export(dynamo=True), torch {torch.__version__}", OPSET),
        origin=origin, precision=precision, image_channels=model.image_channels)


def _result(path: Path, report: ValidationReport, exported: ExportedModel, formulation: str, seconds: float,
            slices: int, target: str) -> ExportResult:
    """The result of a validated export; ``exported.metadata`` is what the file records."""
    metadata = exported.metadata
    image_outputs = metadata.outputs.image_names
    image = report.worst(exported.runtime.label, image_outputs)
    reference = [c for c in report.comparisons if c.runtime == "onnx.reference" and c.output in image_outputs]
    return ExportResult(path=path, max_abs_error=image.max_abs_error, relative_error=image.relative_error,
                        tolerance=image.tolerance,
                        reference_evaluator_error=max((c.max_abs_error for c in reference), default=float("nan")),
                        runtime=exported.runtime, formulation=formulation, seconds=seconds, validation_slices=slices,
                        metadata=metadata, target=target, precision=metadata.precision,
                        precision_check=report.precision)


def describe_validation(result: ExportResult) -> str:
    """What validated ``result``, in a few words: the fp32 error against PyTorch, or a precision's image terms (and,
    for INT8, whether it pays on this CPU)."""
    check = result.precision_check
    if check is None:
        return f"max abs error {result.max_abs_error:.1e} <= {result.tolerance:.1e}, {result.runtime.name}"
    return "; ".join(precision_lines(result))


def precision_lines(result: ExportResult) -> list[str]:
    """The lines a precision export prints: quality and DF check, INT8's layer choice and speed on this CPU."""
    check, metadata = result.precision_check, result.metadata
    lines = [f"{result.precision}: ΔPSNR {-check.quality.psnr_loss:+.3f} dB (bound -{check.bound:g}), ΔSSIM "
             f"{-check.quality.ssim_loss:+.4f} vs the fp32 export on {check.quality.slices} slices; sampled lines "
             f"off the measurement by {check.line_deviation:.1e} (fp32 export {check.line_deviation_fp32:.1e}); "
             + (f"onnx.reference parity {check.reference_parity:.1e}" if check.reference_parity is not None
                else check.reference_note)]
    if metadata.quantization is not None:
        lines += _int8_lines(metadata)
    if metadata.fp16 is not None:
        lines.append(f"fp16 {metadata.fp16.cpu_note}" if result.runtime.on_cpu else
                     f"fp16 validated on {result.runtime.name}")
    return lines


def _int8_lines(metadata: ExportMetadata) -> list[str]:
    """An INT8 file's lines: its layer choice, calibration, quantization-aware fine-tuning and speed on this CPU."""
    quantization, speed = metadata.quantization, metadata.int8_speed
    kept: dict[str, list[str]] = {}  # the structural reasons are shared by a layer of every cascade
    for layer in quantization.layers:
        if not layer.int8:
            kept.setdefault(layer.reason, []).append(layer.layer)
    calibration, qat = quantization.calibration, quantization.qat.run
    lines = [f"INT8 convolutions: {len(quantization.int8_nodes)}/{len(quantization.layers)}; kept fp32: "
             + ("; ".join(f"{', '.join(layers)} ({reason})" for reason, layers in kept.items()) or "none"),
             f"calibration: {calibration.method} on {calibration.slices} slices of {calibration.source}; "
             f"{quantization.settings.reason}"]
    if qat is not None:
        lines.append(f"quantization-aware fine-tuning ({qat.steps} steps; every allowed convolution INT8 lost "
                     f"{qat.ptq_psnr_loss:.3f} dB after PTQ, {qat.qat_psnr_loss:.3f} dB after it): "
                     + ("used, every allowed convolution INT8" if qat.used else "not used, the PTQ choice is kept"))
    verdict = speed.verdict or (f"INT8 {'pays' if speed.pays else 'does not pay'} on this CPU ({speed.cpu}): "
                                f"{speed.speedup:.2f}x the fp32 speed")
    lines.append(f"{verdict} (batch 1, {speed.int8_median_ms:.2f} vs {speed.fp32_median_ms:.2f} ms, median of "
                 f"{speed.runs})"
                 + ("" if speed.openvino_speedup is None else
                    f"; on OpenVINO (--provider openvino) it runs at {speed.openvino_speedup:.2f}x ONNX "
                    f"Runtime's fp32 speed ({speed.openvino_int8_median_ms:.2f} ms)"))
    return lines


def output_name(stem: str, target: str = DEFAULT_TARGET) -> str:
    """The name ``target`` writes a model called ``stem`` to: ``<stem>.onnx`` for ``onnx-fp32``."""
    return EXPORT_TARGETS.get(target)().output_name(stem)


def export_run_model(run_model: RunModel, out_path: str | Path, *, formulation: str = "auto",
                     provider: str = AUTO, validation_kspace: np.ndarray | None = None,
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
    if EXPORT_TARGETS.get(target).precision is Precision.INT8:
        options = precision_options or PrecisionOptions()
        training = run_training_kspace(run_model, options.calibration_slices)
        calibration = (CalibrationSlices(training, "the run's training split") if training is not None else
                       CalibrationSlices(validation_kspace, "the validation slices (the run's training data is not "
                                                            "readable here)"))
    stage = run_model.stage
    return export_model(run_model.model, out_path, mask=run_model.mask, validation_kspace=validation_kspace,
                        acceleration=stage.acceleration, config_key=stage.key,
                        origin=ModelOrigin(run_model.name, run_model.role, stage.method, stage.stage),
                        formulation=formulation, provider=provider, target=target, quality_slices=quality,
                        calibration=calibration, precision_options=precision_options)


def export_run(run_dir: str | Path, names: list[str] | None = None, *, formulation: str = "auto",
               provider: str = AUTO, log: Callable[[str], None] = print,
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
    rundir.write_exports(run_dir, rundir.ExportsRecord(tuple(result.entry() for result in results)))
    return results
