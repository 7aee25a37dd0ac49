"""ONNX Runtime's static INT8 quantization of chosen convolutions of the fp32 scanner graph (:class:`Quantizer`).

``onnxruntime.quantization.quantize_static`` of the graph after ``quant_pre_process``, calibrated once on
:class:`~compressor.export.precision.options.CalibrationSlices`. Pre-processing runs ONNX shape inference only: the
guide's optional graph optimisation helps quantization through fusions such as Conv+BatchNorm, which this graph does
not have (the exporter already folded its constants, so every conv weight is an initializer), and it would fuse DF
nodes (MatMul+Add into Gemm), so that the DF would no longer match the fp32 export node for node; ONNX Runtime
optimises the file when it loads it anyway. Only convolutions (and the Relus between two of them) are quantized, in
QDQ form, weights per channel; the types and ``reduce_range`` follow the ONNX Runtime guide for the CPU at hand
(:func:`int8_settings`). The DF projection, the normalisation and the outputs stay fp32: a Q/DQ pair that ONNX
Runtime places on a tensor the DF or the normalisation reads is bypassed for those readers
(:func:`keep_fp32_outside_convolutions`), so the DF sees the fp32 ``x_u``; the block's output is the dequantized
output of its last convolution when that is INT8, and the DF keeps the measured lines exact either way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from compressor.export.exported_file import Int8Settings
from compressor.export.precision.layers import (
    BLOCK_ACTIVATIONS,
    REMOVABLE_ACTIVATIONS,
    activations_between,
    conv_layers,
)
from compressor.export.precision.options import CalibrationSlices
from compressor.export.runtimes.cpu import CpuFeatures
from compressor.export.runtimes.onnxruntime_provider import silent_onnxruntime
from compressor.export.runtimes.session import graph_feed
from compressor.models.base import CascadeModel


def int8_settings(cpu: CpuFeatures) -> Int8Settings:
    """The ONNX Runtime guide's choice for ``cpu`` (``docs/performance/model-optimizations/quantization.md``):
    QDQ with S8 activations and S8 weights ("the default setting ... It should be the first choice"), weights per
    channel; ``reduce_range`` on x86-64 without an int8 dot product (AVX2/AVX-512 without VNNI), where ONNX Runtime
    computes U8S8 with ``VPMADDUBSW``, which can saturate, and per-channel weights "generally" need it (S8S8 files
    too: on x86 ONNX Runtime shifts the S8 activations to U8, :mod:`compressor.export.runtimes.cpu`); not with
    VNNI/AMX or on
    ARM ("not needed on machines supporting VNNI")."""
    reduce_range = cpu.x86 and not cpu.int8_dot_product
    reason = ("x86-64 without VNNI/AMX: reduce_range (7-bit weights) against VPMADDUBSW saturation"
              if reduce_range else "int8 dot product (VNNI/AMX) or not x86-64: full 8-bit range")
    return Int8Settings("QInt8", "QInt8", reduce_range, True, "QDQ", f"S8S8 QDQ, per-channel weights; {reason}")


class _SliceReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over k-space slices, one slice (batch 1) per call."""

    def __init__(self, kspace: np.ndarray, mask: np.ndarray):
        self._feeds: Iterator[dict[str, np.ndarray]] = (graph_feed(kspace[i:i + 1], mask) for i in range(len(kspace)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def keep_fp32_outside_convolutions(graph: onnx.ModelProto, quantized: Sequence[str]) -> onnx.ModelProto:
    """Bypass the Q/DQ pairs of fp32 tensors for readers that are not quantized convolutions (or the activations
    between them); keep those on a quantized convolution's output.

    ``quantize_static`` quantizes a tensor once and points *all* its readers at the DequantizeLinear output: the
    normalised zero-filled image is read by the first convolution and by every DF (``x_u``), so without this the DF
    would take a quantized ``x_u`` and lose the measured lines. Such readers get the fp32 tensor back; a Q/DQ pair
    left without readers is removed. The output of a quantized convolution keeps its pair for every reader: ONNX
    Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into one QLinearConv with int8 output, so a block's
    last convolution runs in int8 and only its one-channel result is dequantized for the residual sum and the DF
    (the DF then replaces the sampled lines of that dequantized image, which keeps them exact). Modifies and returns
    ``graph``."""
    nodes = graph.graph.node
    producer = {output: node for node in nodes for output in node.output}
    allowed = set(quantized)
    for node in nodes:
        if node.name in allowed or node.op_type in BLOCK_ACTIVATIONS or node.op_type == "QuantizeLinear":
            continue
        for index, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            if getattr(producer.get(quantize.input[0]), "name", None) not in allowed:
                node.input[index] = quantize.input[0]
    _remove_unread(graph)
    return graph


def _remove_unread(graph: onnx.ModelProto) -> None:
    """Drop Q/DQ nodes whose outputs nobody reads (nor the graph outputs), until none is left, then the scales and
    zero points only they read."""
    outputs = {value.name for value in graph.graph.output}
    while True:
        read = {name for node in graph.graph.node for name in node.input} | outputs
        unread = [node for node in graph.graph.node
                  if node.op_type in {"QuantizeLinear", "DequantizeLinear"} and not set(node.output) & read]
        if not unread:
            break
        for node in unread:
            graph.graph.node.remove(node)
    for initializer in [init for init in graph.graph.initializer if init.name not in read]:
        graph.graph.initializer.remove(initializer)


@contextlib.contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence ONNX Runtime's warnings (unused Q/DQ initializers it removes) and the quantization tool's log lines."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with silent_onnxruntime():
            yield
    finally:
        logger.setLevel(level)


class Quantizer:
    """Quantizes chosen convolutions of one pre-processed fp32 graph, the activation ranges calibrated once.

    Args:
        graph: the fp32 scanner graph (as traced).
        model: the model it was traced from (to name the convolutions).
        calibration: the calibration slices.
        mask: ``(H, W)`` 0/1 uncentred.
        method: one of :data:`CALIBRATION_METHODS`.
        settings: :func:`int8_settings` of the CPU.
        folder: a scratch folder that outlives the quantizer's use.
    """

    def __init__(self, graph: onnx.ModelProto, model: CascadeModel, calibration: CalibrationSlices,
                 mask: np.ndarray, method: str, settings: Int8Settings, folder: Path):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        raw, self._input = folder / "fp32.onnx", folder / "preprocessed.onnx"
        onnx.save_model(graph, str(raw))
        with quiet_quantization():
            quant_pre_process(str(raw), str(self._input), skip_optimization=True, skip_symbolic_shape=True)
        self.preprocessed = onnx.load(str(self._input))
        self.layers = conv_layers(self.preprocessed, model)
        self.eligible = [layer for layer in self.layers if layer.int8_eligible]
        self.settings, self.method = settings, method
        self._folder, self._cache = folder, folder / "calibration.json"
        self._calibration, self._mask = calibration, mask
        self.quantize([layer.node for layer in self.eligible])  # calibrates every convolution's tensors once

    def quantize(self, nodes: Sequence[str]) -> onnx.ModelProto:
        """The graph with exactly ``nodes`` (Conv node names) quantized, DF and normalisation fp32; the Relus
        between them are quantized with them (:func:`activations_between`), which folds them into the
        convolutions' output ranges."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        output = self._folder / "quantized.onnx"
        reader = None if self._cache.is_file() else _SliceReader(self._calibration.kspace, self._mask)
        with quiet_quantization():
            quantize_static(
                str(self._input), str(output), reader, quant_format=QuantFormat[self.settings.quant_format],
                op_types_to_quantize=["Conv", *REMOVABLE_ACTIVATIONS],
                nodes_to_quantize=[*nodes, *activations_between(self.preprocessed, nodes)],
                per_channel=self.settings.per_channel,
                reduce_range=self.settings.reduce_range, activation_type=QuantType[self.settings.activation_type],
                weight_type=QuantType[self.settings.weight_type], calibrate_method=methods[self.method],
                calibration_cache_path=str(self._cache))
        return keep_fp32_outside_convolutions(onnx.load(str(output)), nodes)
