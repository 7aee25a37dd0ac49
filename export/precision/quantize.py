"""INT8 and fp16 versions of the exported fp32 scanner graph, with what each costs in image quality.

**INT8, post-training** (:func:`quantize_int8`): ONNX Runtime's static quantization
(``onnxruntime.quantization.quantize_static``) of the fp32 graph after ``quant_pre_process``, calibrated on
:class:`CalibrationSlices` (a run's training-split slices). Pre-processing runs ONNX shape inference only: the
guide's optional graph optimisation helps quantization through fusions such as Conv+BatchNorm, which this graph does
not have (the exporter already folded its constants, so every conv weight is an initializer), and it would fuse DF
nodes (MatMul+Add into Gemm), so that the DF would no longer match the fp32 export node for node; ONNX Runtime
optimises the file when it loads it anyway. Only convolutions are quantized,
in QDQ form, weights per channel; the types and ``reduce_range`` follow the ONNX Runtime guide for the CPU at hand
(:func:`int8_settings`); the Relus between two quantized convolutions are quantized with them, which folds each into
the first one's output range (:func:`activations_between`: no requantization between them). A convolution only fp32
nodes read, or whose weights the graph computes, stays fp32 (:attr:`ConvLayer.fp32_reason`). Which of the others
are quantized is measured (:func:`choose_convolutions`) on the runtime that validates the file: each alone, its PSNR
cost on the quality slices; those cheap enough are quantized together, and the most costly dropped until the
combination is within the bound. The DF projection, the normalisation and the outputs always stay fp32: a
Q/DQ pair that ONNX Runtime places on a tensor the DF or the normalisation reads is bypassed for those readers
(:func:`keep_fp32_outside_convolutions`), so the DF sees the fp32 ``x_u`` and the fp32 CNN output and keeps the
measured lines exact.

**INT8, quantization-aware** (:func:`finetune_quantization_aware`): when post-training INT8 of every convolution
loses more than ``PrecisionOptions.qat_threshold``, a copy of the model is fine-tuned with the weights and inputs of
every convolution INT8 may take fake-quantized as ONNX Runtime quantizes them, distilled from the fp32 model's own
reconstruction; it is traced again, quantized whole the same way, and used if it is within the bound against the
original fp32 graph.

**fp16** (:func:`convert_fp16`): the convolutions (and the activations between them) in fp16, their weights fp16
initializers; everything else (normalisation, DF, outputs) fp32 with Casts at the borders; inputs and outputs fp32.
(ONNX Runtime's ``onnxruntime.transformers.float16`` converter, with a node block list, writes duplicate Cast names
for this graph, hence a direct conversion.) It is for GPU deployment: ONNX Runtime's CPU provider runs many fp16 ops
through casts to fp32, so a CPU validation checks the fp16 rounding only, not fp16 arithmetic or speed.

The quality measure everywhere is :func:`compressor.export.graph.validate.image_quality`: PSNR/SSIM of the fp32 export
and
of the candidate, both against the fully sampled images of the quality slices; the cost is the difference.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from compressor.errors import InputError, first_line
from compressor.export.graph.validate import (
    ImageQuality,
    QualitySlices,
    batched_outputs,
    image_quality,
    magnitudes,
    model_input,
    session_outputs,
)
from compressor.export.runtimes.cpu import CpuFeatures, cpu_features
from compressor.export.runtimes.runtime import (
    CPU,
    LOAD_ERRORS,
    OPENVINO,
    ORT_DEFAULT_SEVERITY,
    ORT_SILENT_SEVERITY,
    create_session,
    graph_feed,
    openvino_cpu_usable,
    runtime_label,
)
from compressor.models.base import CascadeModel

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
"""``--calibration-method`` choices: ONNX Runtime's ``CalibrationMethod`` MinMax, Percentile, Entropy."""
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_CALIBRATION_SLICES = 32
DEFAULT_MAX_PSNR_LOSS = {"int8": 0.1, "fp16": 0.05}
"""The default bound on a precision's PSNR loss against the fp32 export, dB. fp16 rounding (~5e-4 relative) costs
~0.01 dB; a loss of 0.05 dB means something other than rounding went wrong."""
QAT_THRESHOLD = 0.1
"""PSNR loss (dB) of post-training INT8 of every convolution above which a quantization-aware fine-tuning is tried."""
QAT_STEPS = 100
QAT_BATCH = 4
QAT_LEARNING_RATE = 3e-5
GROUPED_REASON = ("grouped half of a channel-sum convolution: weights computed in the graph, which ONNX Runtime's "
                  "QLinearConv runs ~10x slower than fp32 (ConvLayer.fp32_reason)")
FP32_OUTPUT_REASON = ("only fp32 nodes read its output (residual sum, DF): ONNX Runtime would run it as an fp32 Conv "
                      "on dequantized weights, no int8 arithmetic (ConvLayer.fp32_reason)")
BLOCK_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu"})
"""The activations between a block's convolutions."""
REMOVABLE_ACTIVATIONS = frozenset({"Relu"})
"""Activations ``quantize_static`` folds into the preceding convolution's output range, so that two INT8 convolutions
meet without a DequantizeLinear/QuantizeLinear requantization between them. It does so for asymmetric activations
only (the range then starts at 0), which :func:`int8_settings` uses; symmetric ones would bring the requantization
back."""
LAYER_SHARE = 0.5
"""A convolution is a candidate for INT8 when quantizing it alone costs at most this share of the bound."""
TIMING_RUNS = 24
"""Interleaved batch-1 runs of the INT8 and fp32 files that decide whether INT8 pays here (after 3 warm-up runs)."""
PAYS_SPEEDUP = 1.05
"""The INT8 file's speed-up over fp32 from which ``compress export`` says INT8 pays on this CPU."""


@dataclass(frozen=True)
class PrecisionOptions:
    """The user's choices for precision exports.

    Attributes:
        calibration_slices: training-split slices that calibrate INT8 activations.
        calibration_method: one of :data:`CALIBRATION_METHODS`.
        max_psnr_loss: the largest PSNR loss against the fp32 export (dB) a precision file may have; ``None``: the
            precision's default (:data:`DEFAULT_MAX_PSNR_LOSS`).
        qat_threshold: INT8 of every convolution losing more than this (dB) after post-training quantization starts
            a quantization-aware fine-tuning (:func:`finetune_quantization_aware`).
        qat_steps: its optimizer steps (0: never).
    """

    calibration_slices: int = DEFAULT_CALIBRATION_SLICES
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    max_psnr_loss: float | None = None
    qat_threshold: float = QAT_THRESHOLD
    qat_steps: int = QAT_STEPS

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"unknown calibration method {self.calibration_method!r}; valid: "
                             f"{', '.join(CALIBRATION_METHODS)}")
        if self.calibration_slices < 1:
            raise InputError(f"calibration slices must be >= 1, got {self.calibration_slices}")
        if self.qat_steps < 0:
            raise InputError(f"QAT steps must be >= 0, got {self.qat_steps}")

    def bound(self, precision: str) -> float:
        """The PSNR-loss bound (dB) of ``precision``."""
        return DEFAULT_MAX_PSNR_LOSS[precision] if self.max_psnr_loss is None else self.max_psnr_loss


@dataclass(frozen=True)
class CalibrationSlices:
    """Slices that calibrate INT8 activation ranges: ``kspace`` ``(S, H, W)`` complex, uncentred, undersampled with
    the export's mask (any units: the graph normalises), and where they come from (recorded in the metadata)."""

    kspace: np.ndarray
    source: str


def precision_of(extras: dict[str, Any]) -> str:
    """The precision an exported file records (:attr:`ExportMetadata.extras` ``"precision"``; older files: fp32)."""
    return str(extras.get("precision", "fp32"))


# --- INT8 settings by CPU ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Settings:
    """How ``quantize_static`` is called, and why (recorded in the metadata).

    Attributes:
        activation_type, weight_type: ONNX Runtime ``QuantType`` names.
        reduce_range: 7-bit weights.
        per_channel: per-output-channel weight scales.
        quant_format: ``"QDQ"``.
        reason: the ONNX Runtime guide's rule applied, in words.
    """

    activation_type: str
    weight_type: str
    reduce_range: bool
    per_channel: bool
    quant_format: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"activation_type": self.activation_type, "weight_type": self.weight_type,
                "reduce_range": self.reduce_range, "per_channel": self.per_channel, "format": self.quant_format,
                "reason": self.reason}


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


# --- the graph's convolutions, named by the model's layers --------------------------------------------------------

@dataclass(frozen=True)
class ConvLayer:
    """A ``Conv`` node of the exported graph and the model layer it computes.

    Attributes:
        node: the ONNX node name (from the trace, e.g. ``"node_conv2d_3"``).
        cascade: 1-based cascade index.
        conv: 1-based index of the ``Conv2d`` in the cascade's block.
        in_channels, out_channels: the layer's.
        part: ``""``, or for a block's last convolution exported as grouped conv + channel sum
            (:class:`~compressor.export.graph.scanner_graph.ChannelSumConv`), ``"grouped"`` or ``"channel sum"``.
        output_fp32_only: no reader of its output is a convolution or a block activation (the block's last
            convolution, read by the residual sum and the DF).
    """

    node: str
    cascade: int
    conv: int
    in_channels: int
    out_channels: int
    part: str = ""
    output_fp32_only: bool = False

    @property
    def fp32_reason(self) -> str:
        """Why INT8 may not take this convolution (``""``: it may).

        * The grouped half of a channel-sum convolution: the graph computes its weights (a reshape of the trained
          weight) instead of holding them as an initializer, so ONNX Runtime runs it as a QLinearConv on unpacked
          weights: measured 29 ms per node against 2.5 ms for a whole fp32 32->32 block convolution (2-channel d3c5,
          120x120, AVX2), for a negligible share of the FLOPs.
        * A convolution whose output only fp32 nodes read: ONNX Runtime fuses DequantizeLinear -> Conv ->
          QuantizeLinear into a QLinearConv, and with no QuantizeLinear after it (the DF must read fp32) it runs an
          fp32 Conv on dequantized input and weights, so INT8 costs time and quality and gains nothing.
        """
        if self.part == "grouped":
            return GROUPED_REASON
        return FP32_OUTPUT_REASON if self.output_fp32_only else ""

    @property
    def int8_eligible(self) -> bool:
        return not self.fp32_reason

    @property
    def label(self) -> str:
        """E.g. ``"cascade 1 conv 3 (32->32)"``, ``"cascade 2 conv 5 (32->1, channel sum)"``."""
        part = f", {self.part}" if self.part else ""
        return f"cascade {self.cascade} conv {self.conv} ({self.in_channels}->{self.out_channels}{part})"


def block_convolutions(model: CascadeModel) -> list[list[nn.Conv2d]]:
    """Each cascade's block's ``Conv2d`` modules, in order (cascade ``c``, conv ``k`` is ``[c - 1][k - 1]``)."""
    return [[module for module in cascade.block.modules() if isinstance(module, nn.Conv2d)]
            for cascade in model.cascades]


def model_convolutions(model: CascadeModel) -> list[tuple[int, int, int, int, str]]:
    """The ONNX ``Conv`` nodes ``model``'s scanner graph has, in graph order: ``(cascade, conv, in, out, part)``
    (1-based); a :func:`~compressor.export.graph.scanner_graph.is_channel_sum_candidate` conv is two nodes."""
    from compressor.export.graph.scanner_graph import is_channel_sum_candidate

    layers = []
    for cascade_index, convs in enumerate(block_convolutions(model), start=1):
        for conv_index, conv in enumerate(convs, start=1):
            shape = (cascade_index, conv_index, conv.in_channels, conv.out_channels)
            if is_channel_sum_candidate(conv):
                layers += [(*shape, "grouped"), (*shape, "channel sum")]
            else:
                layers.append((*shape, ""))
    return layers


def conv_layers(graph: onnx.ModelProto, model: CascadeModel) -> list[ConvLayer]:
    """The graph's ``Conv`` nodes (graph order, which is the cascades' order: each cascade's block runs after the
    previous DF) named by ``model``'s layers, each with whether only fp32 nodes read its output; a count mismatch is
    an error (the graph is not this model's)."""
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    layers = model_convolutions(model)
    if len(convs) != len(layers):
        raise ValueError(f"the graph has {len(convs)} Conv nodes, the model's blocks {len(layers)}")
    readers = tensor_readers(graph)
    quantizable = BLOCK_ACTIVATIONS | {"Conv"}
    return [ConvLayer(node.name, *layer, output_fp32_only=not any(reader.op_type in quantizable
                                                                  for reader in readers.get(node.output[0], [])))
            for node, layer in zip(convs, layers, strict=True)]


def tensor_readers(graph: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """``{tensor name: the nodes that read it}``."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def activations_between(graph: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """The :data:`REMOVABLE_ACTIVATIONS` nodes between two of the convolutions ``nodes`` (a chosen convolution
    writes their input and only chosen convolutions read their output): quantized with them, each is folded into the
    first convolution's output range. One with an fp32 reader stays: that reader gets the fp32 tensor back
    (:func:`keep_fp32_outside_convolutions`), which without the activation would be the convolution's raw output."""
    chosen = set(nodes)
    graph_outputs = {value.name for value in graph.graph.output}  # would be the raw convolution output once folded
    producer = {output: node for node in graph.graph.node for output in node.output}
    readers = tensor_readers(graph)
    return [node.name for node in graph.graph.node
            if node.op_type in REMOVABLE_ACTIVATIONS
            and node.output[0] not in graph_outputs
            and getattr(producer.get(node.input[0]), "name", None) in chosen
            and readers.get(node.output[0]) and all(reader.name in chosen for reader in readers[node.output[0]])]


# --- quantization -------------------------------------------------------------------------------------------------

class _SliceReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over k-space slices, one slice (batch 1) per call."""

    def __init__(self, kspace: np.ndarray, mask: np.ndarray):
        self._feeds: Iterator[dict[str, np.ndarray]] = (graph_feed(kspace[i:i + 1], mask) for i in range(len(kspace)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def keep_fp32_outside_convolutions(graph: onnx.ModelProto, quantized: Sequence[str]) -> onnx.ModelProto:
    """Bypass every Q/DQ pair for readers that are not quantized convolutions (or the activations between them).

    ``quantize_static`` quantizes a tensor once and points *all* its readers at the DequantizeLinear output: the
    normalised zero-filled image is read by the first convolution and by every DF (``x_u``), so without this the DF
    would take a quantized ``x_u`` and lose the measured lines. Such readers get the fp32 tensor back; a Q/DQ pair
    left without readers is removed. Modifies and returns ``graph``."""
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
            if quantize is not None and quantize.op_type == "QuantizeLinear":
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
    import onnxruntime as ort

    logger = logging.getLogger()
    level = logger.level
    ort.set_default_logger_severity(ORT_SILENT_SEVERITY)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
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


class QualityProbe:
    """The image quality of candidate graphs relative to the fp32 graph on :class:`QualitySlices`, run on
    ``runtime`` (a name :func:`~compressor.export.runtimes.runtime.choose_provider` returns): the runtime that will
    validate
    and run the file, whose int8 kernels round as the file will be run."""

    def __init__(self, fp32_graph: onnx.ModelProto, slices: QualitySlices, mask: np.ndarray, image_channels: int,
                 runtime: str = CPU):
        self.slices, self._mask, self._channels, self._runtime = slices, mask, image_channels, runtime
        self._fp32 = self._magnitudes(fp32_graph)

    def _magnitudes(self, graph: onnx.ModelProto) -> np.ndarray:
        try:
            session = create_session(graph.SerializeToString(), self._runtime)
        except (RuntimeError, *LOAD_ERRORS) as error:
            raise InputError(f"{runtime_label(self._runtime)} cannot run a candidate graph ({first_line(error)}); "
                             "export with --provider cpu") from None
        run = session_outputs(session, self._channels)
        return magnitudes(batched_outputs(run, self.slices.kspace, self._mask), self._channels)

    def quality(self, graph: onnx.ModelProto) -> ImageQuality:
        return image_quality(self._magnitudes(graph), self._fp32, self.slices.images)


@dataclass(frozen=True)
class LayerChoice:
    """A convolution, its PSNR cost quantized alone (dB), and whether it is INT8 in the file (else why not)."""

    layer: ConvLayer
    psnr_loss: float
    quantized: bool
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"node": self.layer.node, "layer": self.layer.label, "psnr_loss_alone_db": self.psnr_loss,
                "int8": self.quantized, **({"kept_fp32_because": self.reason} if self.reason else {})}


@dataclass
class Int8Choice:
    """The outcome of the sensitivity analysis: every convolution's choice, the combined graph and its quality."""

    layers: list[LayerChoice]
    graph: onnx.ModelProto
    quality: ImageQuality
    bound: float
    trials: int = 0
    qat: QatRecord | None = None

    @property
    def quantized(self) -> list[LayerChoice]:
        return [choice for choice in self.layers if choice.quantized]


def choose_convolutions(layers: Sequence[ConvLayer], loss_of: Callable[[Sequence[str]], tuple[float, Any]],
                        bound: float, layer_share: float = LAYER_SHARE) -> tuple[list[LayerChoice], Any, int]:
    """The per-layer sensitivity analysis.

    1. Each convolution quantized alone: its PSNR cost ``loss_of([node])``.
    2. Candidates: those whose cost is at most ``layer_share x bound``.
    3. Quantize the candidates together; while the combined cost exceeds ``bound``, drop the candidate of largest
       individual cost and re-measure.

    An infinite ``bound`` (``--max-psnr-loss inf``) quantizes every convolution without measuring them one by one
    (their costs alone are NaN): the fastest INT8 file, which is what timing random weights needs.

    Args:
        layers: the graph's convolutions.
        loss_of: ``nodes -> (PSNR loss in dB, what was measured)`` of the graph with exactly ``nodes`` quantized.
        bound: the largest combined PSNR loss (dB).

    Returns:
        every layer's :class:`LayerChoice`, what ``loss_of`` returned for the chosen set (``None`` when the set is
        empty) and how many graphs were measured.
    """
    if math.isinf(bound):
        _, measured = loss_of([layer.node for layer in layers])
        return [LayerChoice(layer, math.nan, True) for layer in layers], measured, 1
    alone = {layer.node: loss_of([layer.node])[0] for layer in layers}
    threshold = layer_share * bound
    candidates = sorted((layer for layer in layers if alone[layer.node] <= threshold), key=lambda c: alone[c.node])
    dropped: dict[str, str] = {layer.node: f"alone it costs {alone[layer.node]:.3f} dB > {threshold:.3g} dB "
                               f"({layer_share:g} x the bound)" for layer in layers if layer not in candidates}
    trials, measured = len(layers), None
    while candidates:
        loss, measured = loss_of([layer.node for layer in candidates])
        trials += 1
        if loss <= bound:
            break
        worst = candidates.pop()
        dropped[worst.node] = (f"with {len(candidates) + 1} convolutions INT8 the loss was {loss:.3f} dB > {bound:g} "
                               f"dB; this one costs most alone ({alone[worst.node]:.3f} dB)")
        measured = None
    chosen = {layer.node for layer in candidates}
    choices = [LayerChoice(layer, alone[layer.node], layer.node in chosen, dropped.get(layer.node, ""))
               for layer in layers]
    return choices, measured, trials


def quantize_int8(graph: onnx.ModelProto, model: CascadeModel, mask: np.ndarray, calibration: CalibrationSlices,
                  quality_slices: QualitySlices, options: PrecisionOptions,
                  retrace: Callable[[CascadeModel], onnx.ModelProto], cpu: CpuFeatures | None = None,
                  runtime: str = CPU) -> tuple[Int8Choice, Int8Settings]:
    """INT8 of the fp32 scanner ``graph`` of ``model``: calibrate, measure every convolution's sensitivity, quantize
    the chosen set (:func:`choose_convolutions`). When INT8 of every convolution loses more than
    ``options.qat_threshold``, a quantization-aware fine-tuning (:func:`finetune_quantization_aware`) of ``model`` on
    the calibration slices is traced again (``retrace``), quantized whole and kept if it is within the bound (it is
    measured against the original fp32 ``graph``, like everything else). Every quality is measured on ``runtime``,
    the one that validates the file (:class:`QualityProbe`). Returns the choice (its ``graph`` is the QDQ model,
    without metadata) and the settings used."""
    settings = int8_settings(cpu or cpu_features())
    bound = options.bound("int8")
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
        choice = _quantization_aware(choice, model, mask, calibration, options, settings, probe, retrace, whole)
    return choice, settings


@dataclass(frozen=True)
class QatRecord:
    """A quantization-aware fine-tuning and what it gave (recorded in the metadata).

    Attributes:
        steps, learning_rate, batch: Adam on the L1 distance to the fp32 model's own reconstruction.
        l1_first, l1_last: that distance over the first and the last ten steps.
        ptq_psnr_loss: the PSNR loss of post-training INT8 of every convolution INT8 may take, which started it
            (dB; recorded as ``ptq_all_convolutions_psnr_loss_db``).
        qat_psnr_loss: the PSNR loss of the fine-tuned model with every such convolution INT8 (dB).
        used: whether the file is the fine-tuned one (within the bound, more convolutions INT8 than PTQ's choice).
    """

    steps: int
    learning_rate: float
    batch: int
    l1_first: float
    l1_last: float
    ptq_psnr_loss: float
    qat_psnr_loss: float
    used: bool

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "learning_rate": self.learning_rate, "batch": self.batch,
                "l1_to_fp32_first": self.l1_first, "l1_to_fp32_last": self.l1_last,
                "ptq_all_convolutions_psnr_loss_db": self.ptq_psnr_loss,
                "qat_all_convolutions_psnr_loss_db": self.qat_psnr_loss, "used": self.used,
                "objective": "L1 to the fp32 model's own reconstruction (self-distillation), fake-quantized "
                             "convolution weights (per channel) and inputs (per tensor)"}


def _quantization_aware(choice: Int8Choice, model: CascadeModel, mask: np.ndarray, calibration: CalibrationSlices,
                        options: PrecisionOptions, settings: Int8Settings, probe: QualityProbe,
                        retrace: Callable[[CascadeModel], onnx.ModelProto], whole: ImageQuality) -> Int8Choice:
    """Fine-tune ``model`` with every convolution INT8 may take fake-quantized, quantize the result whole, and keep
    it instead of ``choice`` when it is within the bound and quantizes more convolutions."""
    int8_convolutions = {(c.layer.cascade, c.layer.conv) for c in choice.layers if c.layer.int8_eligible}
    tuned, first, last = finetune_quantization_aware(model, settings, calibration.kspace, mask, options.qat_steps,
                                                     int8_convolutions)
    with tempfile.TemporaryDirectory(prefix="qat-") as folder:
        quantizer = Quantizer(retrace(tuned), tuned, calibration, mask, options.calibration_method, settings,
                              Path(folder))
        candidate = quantizer.quantize([layer.node for layer in quantizer.eligible])
    quality = probe.quality(candidate)
    eligible = sum(c.layer.int8_eligible for c in choice.layers)
    used = quality.psnr_loss <= choice.bound and eligible > sum(c.quantized for c in choice.layers)
    record = QatRecord(options.qat_steps, QAT_LEARNING_RATE, QAT_BATCH, first, last, whole.psnr_loss,
                       quality.psnr_loss, used)
    if not used:
        return Int8Choice(choice.layers, choice.graph, choice.quality, choice.bound, choice.trials + 1, record)
    layers = [LayerChoice(c.layer, c.psnr_loss, True) if c.layer.int8_eligible else c for c in choice.layers]
    return Int8Choice(layers, candidate, quality, choice.bound, choice.trials + 1, record)


class _FakeQuantizedWeight(nn.Module):
    """Parametrization of a conv weight ``(C_out, C_in, k, k)``: symmetric per-output-channel fake quantization to
    ``[-levels, levels]``, as ONNX Runtime quantizes it (scale ``max |w| / levels`` per channel); gradients pass
    straight through."""

    def __init__(self, levels: int):
        super().__init__()
        self.levels = levels

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = (weight.detach().abs().amax(dim=tuple(range(1, weight.ndim))).clamp_min(1e-12) / self.levels).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -self.levels, self.levels)


class _FakeQuantizedInput:
    """Forward pre-hook of a conv: asymmetric 8-bit per-tensor fake quantization of its input over the range
    ``[min, max]`` (0 included) of every input it has seen in training mode, the global running min/max over the
    fine-tuning batches, as ONNX Runtime's MinMax calibration (``moving_average=False``, its default) takes it over
    the calibration slices; in eval mode the range stays fixed."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        image = args[0]
        low, high = image.detach().min().clamp_max(0), image.detach().max().clamp_min(0)
        if self.low is None:
            self.low, self.high = low, high
        elif module.training:
            self.low, self.high = torch.minimum(self.low, low), torch.maximum(self.high, high)
        scale = ((self.high - self.low).clamp_min(1e-8) / 255).float().reshape(1)
        zero = torch.clamp(torch.round(-128 - self.low / scale), -128, 127).to(torch.int32).reshape(1)
        return (torch.fake_quantize_per_tensor_affine(image, scale, zero, -128, 127), *args[1:])


def finetune_quantization_aware(model: CascadeModel, settings: Int8Settings, kspace: np.ndarray, mask: np.ndarray,
                                steps: int, convolutions: Collection[tuple[int, int]] | None = None,
                                learning_rate: float = QAT_LEARNING_RATE, batch: int = QAT_BATCH,
                                ) -> tuple[CascadeModel, float, float]:
    """A short quantization-aware fine-tuning of a copy of ``model``: the weights and input of every block
    convolution that INT8 may take (``convolutions``, 1-based ``(cascade, conv)``; ``None``: all) fake-quantized
    (:class:`_FakeQuantizedWeight`, :class:`_FakeQuantizedInput`; 7-bit weights with ``settings.reduce_range``),
    distilled from the fp32 ``model`` itself with the training objective's L1 loss
    (:func:`compressor.training.objectives.reconstruction_loss`) on random batches of ``kspace`` ``(S, H, W)``
    (complex, uncentred, undersampled with ``mask``; seeded). Returns the fine-tuned fp32 copy (eval mode, fake
    quantization removed: the exporter quantizes its weights the same way) and the mean L1 of the first and the
    last ten steps."""
    from torch.nn.utils import parametrize

    from compressor.training.objectives import reconstruction_loss

    teacher = model.eval()
    student = copy.deepcopy(model).cpu().train()
    levels = 64 if settings.reduce_range else 127
    convs = [conv for cascade_index, cascade in enumerate(block_convolutions(student), start=1)
             for conv_index, conv in enumerate(cascade, start=1)
             if convolutions is None or (cascade_index, conv_index) in convolutions]
    hooks = []
    for conv in convs:
        parametrize.register_parametrization(conv, "weight", _FakeQuantizedWeight(levels))
        hooks.append(conv.register_forward_pre_hook(_FakeQuantizedInput()))
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    loss_of = reconstruction_loss("l1")
    generator = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        chosen = generator.choice(len(kspace), size=min(batch, len(kspace)), replace=False)
        normalised, mask_tensor = model_input(kspace[np.sort(chosen)], mask, model.image_channels)
        with torch.no_grad():
            target = teacher(normalised.zero_filled, normalised.kspace, mask_tensor)
        loss = loss_of(student(normalised.zero_filled, normalised.kspace, mask_tensor), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for hook in hooks:
        hook.remove()
    for conv in convs:
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    return student.eval(), float(np.mean(losses[:10])), float(np.mean(losses[-10:]))


@dataclass(frozen=True)
class SpeedCheck:
    """Interleaved batch-1 latency on this CPU (median ms) of the INT8 and fp32 files on ONNX Runtime and, where
    OpenVINO is installed, of the INT8 file on OpenVINO's CPU runtime; whether INT8 pays on each."""

    int8_ms: float
    fp32_ms: float
    runs: int
    cpu: str
    openvino_int8_ms: float | None = None

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def pays(self) -> bool:
        """At least :data:`PAYS_SPEEDUP` times faster: a median of a few dozen runs on a shared machine moves by a
        few percent, so a smaller gain is not one this check can tell from noise."""
        return self.speedup >= PAYS_SPEEDUP

    @property
    def openvino_speedup(self) -> float | None:
        """ONNX Runtime's fp32 time over OpenVINO's INT8 time (``None`` without OpenVINO)."""
        return None if self.openvino_int8_ms is None else self.fp32_ms / self.openvino_int8_ms

    def to_json(self) -> dict[str, Any]:
        openvino = {} if self.openvino_int8_ms is None else {
            "openvino_int8_median_ms": self.openvino_int8_ms, "openvino_speedup": self.openvino_speedup,
            "openvino_pays": self.openvino_speedup >= PAYS_SPEEDUP}
        return {"int8_median_ms": self.int8_ms, "fp32_median_ms": self.fp32_ms, "speedup": self.speedup,
                "runs": self.runs, "batch": 1, "pays": self.pays, "cpu": self.cpu, **openvino}


def int8_speed(int8_graph: onnx.ModelProto, fp32_graph: onnx.ModelProto, kspace: np.ndarray, mask: np.ndarray,
               runs: int = TIMING_RUNS) -> SpeedCheck:
    """A quick interleaved timing (``runs`` runs each after 3 warm-up runs, batch 1, CPU, the runtimes' default
    threads) of both graphs on ONNX Runtime and, where OpenVINO is installed, of the INT8 graph on OpenVINO, on the
    first slice of ``kspace``: enough to say whether INT8 pays here, not a benchmark."""
    from compressor.export.benchmark.run import interleaved_timings

    feed = graph_feed(kspace[:1], mask)
    sessions = {name: create_session(graph.SerializeToString(), CPU)
                for name, graph in (("int8", int8_graph), ("fp32", fp32_graph))}
    if openvino_cpu_usable():
        with contextlib.suppress(RuntimeError):  # an OpenVINO that cannot compile the file only loses its figure
            sessions["openvino int8"] = create_session(int8_graph.SerializeToString(), OPENVINO)
    timings = interleaved_timings({name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()},
                                  runs, 3)
    openvino = timings.get("openvino int8")
    return SpeedCheck(timings["int8"].median, timings["fp32"].median, runs, cpu_features().describe(),
                      openvino.median if openvino else None)


# --- fp16 ---------------------------------------------------------------------------------------------------------

FP16_OPS = frozenset({"Conv", "Relu", "LeakyRelu", "PRelu"})
"""The ops computed in fp16: the CNN blocks' convolutions and the activations between them; every other node
(normalisation, DF, slicing, outputs) stays fp32."""
FP16_CPU_NOTE = ("validated on CPU: ONNX Runtime's CPU provider (and OpenVINO at f32 inference precision) computes "
                 "many fp16 ops through casts to fp32, so this checks fp16 rounding only, not fp16 arithmetic or "
                 "speed (measure those on a GPU)")


@dataclass
class Fp16Conversion:
    """The fp16 graph and which nodes are fp16."""

    graph: onnx.ModelProto
    fp16_nodes: list[str] = field(default_factory=list)


def convert_fp16(graph: onnx.ModelProto) -> Fp16Conversion:
    """``graph`` with its :data:`FP16_OPS` nodes in fp16 and everything else fp32, inputs and outputs fp32.

    The weights read only by fp16 nodes become fp16 initializers; a Cast to fp16 is placed where an fp16 node reads
    an fp32 tensor, and a Cast back to fp32 (under the tensor's own name) where an fp32 node or a graph output reads
    an fp16 node's output. (ONNX Runtime's ``onnxruntime.transformers.float16`` converter with a node block list
    writes duplicate Cast names for this graph, hence this direct conversion.)
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(graph.SerializeToString())
    nodes = list(model.graph.node)
    fp16 = {node.name for node in nodes if node.op_type in FP16_OPS}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in model.graph.output}
    for initializer in model.graph.initializer:
        if (initializer.data_type == TensorProto.FLOAT and initializer.name in readers
                and all(reader.name in fp16 for reader in readers[initializer.name])):
            initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16),
                                                         initializer.name))
    half = {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT16}
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        if node.name not in fp16:
            rebuilt.append(node)
            continue
        for index, name in enumerate(node.input):
            if name and name not in half:
                cast_name = f"{name}_to_fp16"
                if cast_name not in half:
                    rebuilt.append(helper.make_node("Cast", [name], [cast_name], f"{cast_name}_cast",
                                                    to=TensorProto.FLOAT16))
                    half.add(cast_name)
                node.input[index] = cast_name
        rebuilt.append(node)
        for index, name in enumerate(node.output):
            half_name = f"{name}_fp16"
            node.output[index] = half_name
            half.add(half_name)
            for reader in readers.get(name, []):
                if reader.name in fp16:
                    reader.input[:] = [half_name if value == name else value for value in reader.input]
            if name in graph_outputs or any(reader.name not in fp16 for reader in readers.get(name, [])):
                rebuilt.append(helper.make_node("Cast", [half_name], [name], f"{name}_to_fp32_cast",
                                                to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    del model.graph.value_info[:]  # fp32 shapes of tensors that are fp16 now; ONNX Runtime infers them again
    return Fp16Conversion(model, sorted(fp16))
