"""INT8 of the exported fp32 scanner graph: calibrate, choose the convolutions by their PSNR cost, fine-tune when
post-training quantization loses too much (:func:`quantize_int8`), and what the file records of it
(:func:`int8_record`).

Which convolutions INT8 takes is measured (:func:`~compressor.export.precision.sensitivity.choose_convolutions`) on
the runtime that validates the file (:class:`~compressor.export.precision.quality.QualityProbe`) a block at a time:
each block's INT8 convolutions alone, their PSNR cost on the quality slices; the blocks cheap enough are quantized
together, the most costly dropped until the combination is within the bound, and a block left out may keep its leading
convolutions. How a convolution is quantized: :mod:`compressor.export.precision.quantizer`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from compressor.export.exported_file import CalibrationRecord, Int8Record, Int8Settings, Precision, QatRecord
from compressor.export.graph.validate import ImageQuality, QualitySlices
from compressor.export.precision.options import CalibrationSlices, PrecisionOptions
from compressor.export.precision.qat import quantization_aware
from compressor.export.precision.quality import QualityProbe
from compressor.export.precision.quantizer import Quantizer, int8_settings
from compressor.export.precision.sensitivity import Int8Choice, LayerChoice, choose_convolutions
from compressor.export.runtimes.base import Runtime
from compressor.export.runtimes.cpu import CpuFeatures, cpu_features
from compressor.models.base import CascadeModel

INT8_METHOD = ("ONNX Runtime post-training static quantization (quantize_static after quant_pre_process), "
               "convolutions chosen by per-block sensitivity (a block INT8 from its second convolution to its last)")
"""An INT8 file's ``precision_method``."""


def quantize_int8(graph: onnx.ModelProto, model: CascadeModel, mask: np.ndarray, calibration: CalibrationSlices,
                  quality_slices: QualitySlices, options: PrecisionOptions,
                  retrace: Callable[[CascadeModel], onnx.ModelProto], *, runtime: Runtime,
                  cpu: CpuFeatures | None = None) -> tuple[Int8Choice, Int8Settings]:
    """INT8 of the fp32 scanner ``graph`` of ``model``: calibrate, measure every convolution's sensitivity, quantize
    the chosen set (:func:`choose_convolutions`). When INT8 of every convolution loses more than
    ``options.qat_threshold``, a quantization-aware fine-tuning of ``model`` on the calibration slices is traced again
    (``retrace``), quantized whole and kept if it is within the bound
    (:func:`~compressor.export.precision.qat.quantization_aware`; measured against the original fp32 ``graph``, like
    everything else). Every quality is measured on ``runtime``, the one that validates the file. Returns the choice
    (its ``graph`` is the QDQ model, without metadata) and the settings used (``cpu``'s; default: this CPU's)."""
    settings = int8_settings(cpu or cpu_features())
    bound = options.bound(Precision.INT8)
    probe = QualityProbe(graph, quality_slices, mask, model.image_channels, runtime)
    with tempfile.TemporaryDirectory(prefix="int8-") as folder:
        quantizer = Quantizer(graph, model, calibration, mask, options.calibration_method, settings, Path(folder))

        def loss_of(nodes: Sequence[str]) -> tuple[float, tuple[onnx.ModelProto, ImageQuality]]:
            candidate = quantizer.quantize(nodes)
            quality = probe.quality(candidate)
            return quality.psnr_loss, (candidate, quality)

        chosen, measured, trials = choose_convolutions(quantizer.eligible, loss_of, bound)
        if measured is None:  # nothing could be quantized: the file is the pre-processed fp32 graph
            measured = (quantizer.preprocessed, probe.quality(quantizer.preprocessed))
        whole = measured[1]  # the loss of INT8 everywhere it may go, which decides whether QAT is tried
        if not all(c.quantized for c in chosen):
            whole = loss_of([layer.node for layer in quantizer.eligible])[1][1]
            trials += 1
        by_node = {choice.layer.node: choice for choice in chosen}
        choices = [by_node.get(layer.node) or LayerChoice(layer, math.nan, False, layer.fp32_reason)
                   for layer in quantizer.layers]
    choice = Int8Choice(choices, *measured, bound, trials)
    if options.qat_steps and whole.psnr_loss > options.qat_threshold:
        choice = quantization_aware(choice, model, mask, calibration, options, settings, probe, retrace, whole)
    return choice, settings


def int8_record(choice: Int8Choice, settings: Int8Settings, calibration: CalibrationSlices,
                options: PrecisionOptions) -> Int8Record:
    """What the INT8 file records of how it was made (its ``quantization`` key)."""
    return Int8Record(settings, CalibrationRecord(options.calibration_method, len(calibration.kspace),
                                                  calibration.source),
                      choice.bound, tuple(layer.record() for layer in choice.layers), choice.trials,
                      QatRecord(options.qat_threshold, options.qat_steps, choice.qat))
