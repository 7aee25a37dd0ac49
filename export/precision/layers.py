"""The exported graph's convolutions named by the model's layers (:class:`ConvLayer`), which INT8 may take and why
not, and the activations quantized with them.

A convolution only fp32 nodes read, or whose weights the graph computes, stays fp32 (:attr:`ConvLayer.fp32_reason`);
the Relus between two quantized convolutions are quantized with them, which folds each into the first one's output
range (:func:`activations_between`: no requantization between them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from torch import nn

from compressor.export.graph.scanner_graph import is_channel_sum_candidate
from compressor.models.base import CascadeModel

GROUPED_REASON = ("grouped half of a channel-sum convolution: weights computed in the graph, which ONNX Runtime's "
                  "QLinearConv runs ~10x slower than fp32 (ConvLayer.fp32_reason)")
FP32_OUTPUT_REASON = ("only fp32 nodes read its output (residual sum, DF): ONNX Runtime would run it as an fp32 Conv "
                      "on dequantized weights, no int8 arithmetic (ConvLayer.fp32_reason)")
BLOCK_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu"})
"""The activations between a block's convolutions."""
REMOVABLE_ACTIVATIONS = frozenset({"Relu"})
"""Activations ``quantize_static`` folds into the preceding convolution's output range, so that two INT8 convolutions
meet without a DequantizeLinear/QuantizeLinear requantization between them. It does so for asymmetric activations
only (the range then starts at 0), which :func:`~compressor.export.precision.quantizer.int8_settings` uses;
symmetric ones would bring the requantization back."""


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
          weights, far slower than the fp32 convolution for a negligible share of the FLOPs (measured in
          ``benchmarks/results/precision.md``).
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
    (:func:`~compressor.export.precision.quantizer.keep_fp32_outside_convolutions`), which without the activation
    would be the convolution's raw output."""
    chosen = set(nodes)
    graph_outputs = {value.name for value in graph.graph.output}  # would be the raw convolution output once folded
    producer = {output: node for node in graph.graph.node for output in node.output}
    readers = tensor_readers(graph)
    return [node.name for node in graph.graph.node
            if node.op_type in REMOVABLE_ACTIVATIONS
            and node.output[0] not in graph_outputs
            and getattr(producer.get(node.input[0]), "name", None) in chosen
            and readers.get(node.output[0]) and all(reader.name in chosen for reader in readers[node.output[0]])]
