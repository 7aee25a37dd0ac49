"""The exported graph's convolutions named by the model's layers (:class:`ConvLayer`), which INT8 may take and why
not, and the activations quantized with them.

A block's first convolution (from the image channels) stays fp32, where INT8 is slower (:attr:`ConvLayer.fp32_reason`);
the others may be INT8 from the block's second convolution to its last, so that a block is one INT8 island. The Relus
between two quantized convolutions are quantized with them, which folds each into the first one's output range
(:func:`activations_between`: no requantization between them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from torch import nn

from compressor.export.graph.scanner_graph import is_channel_sum_candidate
from compressor.models.base import CascadeModel

FIRST_CONV_REASON = ("a block's first convolution (from the image channels): ONNX Runtime's QLinearConv over few "
                     "input channels runs ~3x slower than the fp32 Conv and its requantization (ConvLayer.fp32_reason)")
GROUPED_REASON = ("grouped half of a 2-output channel-sum convolution: two outputs per group is not ONNX Runtime's "
                  "depthwise INT8 kernel; not measured to pay (ConvLayer.fp32_reason)")
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
    """

    node: str
    cascade: int
    conv: int
    in_channels: int
    out_channels: int
    part: str = ""

    @property
    def fp32_reason(self) -> str:
        """Why INT8 may not take this convolution (``""``: it may). Measured on an AMD EPYC (Zen 4, AVX-512-VNNI),
        ONNX Runtime 1.31, in ``benchmarks/results/precision_vnni_120.md``:

        * A block's first convolution (its inputs are the image channels, 1 or 2): QLinearConv builds its im2col
          over ``9 x C_in`` values, ~300 µs at 130x130 against ~100 µs for the fp32 Conv, more than the
          QuantizeLinear and reorder its fp32 output needs (the INT8 file is slower with it, and loses more PSNR).
        * The grouped half of a channel-sum convolution with two outputs (complex images): two outputs per group is
          not ONNX Runtime's depthwise INT8 kernel, and was not measured to pay. With one output it is depthwise and
          INT8 may take it.

        The block's last convolution (the channel sum, or a plain last conv) may be INT8: its output is quantized
        too, so ONNX Runtime runs a QLinearConv and dequantizes the one-channel result for the residual sum and the
        DF (:func:`~compressor.export.precision.quantizer.keep_fp32_outside_convolutions`).
        """
        if self.conv == 1:
            return FIRST_CONV_REASON
        return GROUPED_REASON if self.part == "grouped" and self.out_channels > 1 else ""

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
    previous DF) named by ``model``'s layers; a count mismatch is an error (the graph is not this model's)."""
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    layers = model_convolutions(model)
    if len(convs) != len(layers):
        raise ValueError(f"the graph has {len(convs)} Conv nodes, the model's blocks {len(layers)}")
    return [ConvLayer(node.name, *layer) for node, layer in zip(convs, layers, strict=True)]


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
