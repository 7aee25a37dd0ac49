"""The INT8 and fp16 ONNX files (targets ``onnx-int8``, ``onnx-fp16``): ``<stem>.<precision>.onnx``, validated in
image terms against the fp32 export, recording how each was made (:mod:`compressor.export.precision`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx

from compressor.export.exported_file import Precision, write_exported
from compressor.export.graph.scanner_graph import ScannerGraph
from compressor.export.graph.trace import trace_graph
from compressor.export.graph.validate import ValidationReport, validate_precision
from compressor.export.precision.fp16 import FP16_METHOD, convert_fp16, fp16_record
from compressor.export.precision.int8 import INT8_METHOD, int8_record, quantize_int8
from compressor.export.precision.options import CalibrationSlices
from compressor.export.precision.quality import QualityProbe
from compressor.export.precision.speed import int8_speed
from compressor.export.runtimes.cpu import cpu_features
from compressor.export.runtimes.session import ExportedModel
from compressor.export.targets.registry import EXPORT_TARGETS, ExportRequest, ExportTarget
from compressor.models.base import CascadeModel


class PrecisionTarget(ExportTarget):
    """Base of the non-fp32 ONNX files: ``<stem>.<precision>.onnx``, validated in image terms against the fp32
    export (:func:`~compressor.export.graph.validate.validate_precision`) with the user's PSNR-loss bound."""

    def validate(self, onnx_file: Path, exported: ExportedModel, graph: onnx.ModelProto, request: ExportRequest,
                 relative_tolerance: float) -> ValidationReport:
        if request.quality_slices is None:
            raise ValueError("a precision target needs quality slices (the driver provides them)")
        return validate_precision(onnx_file, exported, graph, request.validation_kspace, request.mask.values,
                                  request.quality_slices, request.precision_options.bound(self.precision),
                                  relative_tolerance)


@EXPORT_TARGETS.register(Precision.INT8.target)
class OnnxInt8(PrecisionTarget):
    """INT8 (QDQ, per-channel weights) of the convolutions the sensitivity analysis picks, or of all of them after a
    quantization-aware fine-tuning when that is within the bound; DF, normalisation and outputs fp32
    (:func:`compressor.export.precision.int8.quantize_int8`). Its metadata records the settings, the calibration,
    every convolution's choice and cost, the fine-tuning, the quality and whether INT8 pays on this CPU."""

    precision = Precision.INT8
    # onnx.reference computes float convolutions on dequantized values, ONNX Runtime integer ones: a requantized
    # activation that lands on the other side of a rounding boundary differs by one step, and that propagates
    # through the cascades (1.3e-2 measured on the quick-complex d3c5).
    relative_tolerance = 5e-2

    @staticmethod
    def retrace(model: CascadeModel, request: ExportRequest) -> onnx.ModelProto:
        """The fp32 scanner graph of ``model`` (a fine-tuned copy of the request's), traced like the request's."""
        return trace_graph(ScannerGraph(model, request.mask.shape, request.formulation, request.line_axis))

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        fp32 = onnx.ModelProto.FromString(graph.SerializeToString())
        calibration = request.calibration or CalibrationSlices(request.validation_kspace, "the validation slices")
        options = request.precision_options
        calibration = CalibrationSlices(calibration.kspace[:options.calibration_slices], calibration.source)
        choice, settings = quantize_int8(fp32, request.model, request.mask.values, calibration,
                                         request.quality_slices, options, lambda model: self.retrace(model, request),
                                         runtime=request.runtime)
        speed = int8_speed(choice.graph, fp32, request.validation_kspace, request.mask.values)
        write_exported(choice.graph, staged, replace(
            request.metadata, precision_method=INT8_METHOD, quantization=int8_record(choice, settings, calibration,
                                                                                     options),
            quality=choice.quality.record(request.runtime.label, request.quality_slices.source),
            cpu=cpu_features().record(), int8_speed=speed.record(request.metadata.architecture)))
        return staged


@EXPORT_TARGETS.register(Precision.FP16.target)
class OnnxFp16(PrecisionTarget):
    """fp16 convolutions for GPU deployment, DF/normalisation/inputs/outputs fp32
    (:func:`compressor.export.precision.fp16.convert_fp16`); validated on the chosen runtime (on a CPU: rounding
    only)."""

    precision = Precision.FP16
    relative_tolerance = 5e-3  # onnx.reference's fp16 arithmetic vs ONNX Runtime's (casts to fp32 on CPU)

    def write(self, graph: onnx.ModelProto, request: ExportRequest, staged: Path) -> Path:
        conversion = convert_fp16(graph)
        probe = QualityProbe(graph, request.quality_slices, request.mask.values, request.model.image_channels,
                             request.runtime)
        write_exported(conversion.graph, staged, replace(
            request.metadata, precision_method=FP16_METHOD,
            fp16=fp16_record(conversion, request.precision_options.bound(self.precision)),
            quality=probe.quality(conversion.graph).record(request.runtime.label, request.quality_slices.source)))
        return staged
