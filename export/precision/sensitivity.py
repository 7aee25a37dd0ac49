"""The per-block sensitivity analysis that picks the convolutions INT8 takes (:func:`choose_convolutions`), and its
outcome (:class:`Int8Choice`): every convolution's choice with the reason for it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from compressor.export.exported_file import LayerRecord, QatRun
from compressor.export.graph.validate import ImageQuality
from compressor.export.precision.layers import ConvLayer

LAYER_SHARE = 0.5
"""A block is a candidate for INT8 when quantizing its convolutions alone costs at most this share of the bound."""
NO_BOUND_REASON = "no PSNR-loss bound (--max-psnr-loss inf): every convolution INT8 may take, not measured alone"


@dataclass(frozen=True)
class LayerChoice:
    """A convolution, the PSNR cost of its block's INT8 convolutions quantized alone (dB; NaN where not measured),
    whether it is INT8 in the file, and why (or why not)."""

    layer: ConvLayer
    psnr_loss: float
    quantized: bool
    reason: str

    def record(self) -> LayerRecord:
        """What the file's metadata records of this choice."""
        return LayerRecord(self.layer.node, self.layer.label, self.psnr_loss, self.quantized, self.reason)


@dataclass
class Int8Choice:
    """The outcome of the sensitivity analysis: every convolution's choice, the combined graph and its quality, the
    bound, how many graphs were measured and the quantization-aware fine-tuning, if one ran."""

    layers: list[LayerChoice]
    graph: onnx.ModelProto
    quality: ImageQuality
    bound: float
    trials: int = 0
    qat: QatRun | None = None

    @property
    def quantized(self) -> list[LayerChoice]:
        return [choice for choice in self.layers if choice.quantized]


def blocks_of(layers: Sequence[ConvLayer]) -> list[list[ConvLayer]]:
    """``layers`` grouped by cascade, in order: the units INT8 takes or leaves whole, so that a block's quantized
    convolutions are one INT8 island (one QuantizeLinear in, one DequantizeLinear out) instead of several."""
    blocks: dict[int, list[ConvLayer]] = {}
    for layer in layers:
        blocks.setdefault(layer.cascade, []).append(layer)
    return list(blocks.values())


def choose_convolutions(layers: Sequence[ConvLayer], loss_of: Callable[[Sequence[str]], tuple[float, Any]],
                        bound: float, layer_share: float = LAYER_SHARE) -> tuple[list[LayerChoice], Any, int]:
    """The per-block sensitivity analysis: a cascade's convolutions among ``layers`` are taken together
    (:func:`blocks_of`), each block one INT8 island, which is what makes INT8 pay (measured in
    ``benchmarks/results/precision_vnni_120.md``: a block's convolutions INT8 one by one leave int8/fp32 conversions
    between them).

    1. Each block quantized alone: its PSNR cost ``loss_of(its nodes)``.
    2. Candidates: the blocks whose cost is at most ``layer_share x bound``.
    3. Quantize the candidates together; while the combined cost exceeds ``bound``, drop the candidate of largest
       individual cost and re-measure.
    4. Each block left out, cheapest alone first: its longest leading part (its first convolutions, still one
       island) that keeps the combined cost within ``bound`` joins (:func:`_leading_parts`).

    An infinite ``bound`` (``--max-psnr-loss inf``) quantizes every convolution without measuring blocks one by one
    (their costs alone are NaN): the fastest INT8 file, which is what timing random weights needs.

    Args:
        layers: the convolutions INT8 may take.
        loss_of: ``nodes -> (PSNR loss in dB, what was measured)`` of the graph with exactly ``nodes`` quantized.
        bound: the largest combined PSNR loss (dB).

    Returns:
        every layer's :class:`LayerChoice` (its block's cost alone, and the reason), what ``loss_of`` returned for
        the chosen set (``None`` when the set is empty) and how many graphs were measured.
    """
    if math.isinf(bound):
        _, measured = loss_of([layer.node for layer in layers])
        return [LayerChoice(layer, math.nan, True, NO_BOUND_REASON) for layer in layers], measured, 1
    blocks = blocks_of(layers)
    alone = [loss_of([layer.node for layer in block])[0] for block in blocks]
    threshold = layer_share * bound
    candidates = sorted((index for index, cost in enumerate(alone) if cost <= threshold), key=lambda i: alone[i])
    reasons = {index: f"its block INT8 alone costs {alone[index]:.3f} dB > {threshold:.3g} dB ({layer_share:g} x the "
               f"bound)" for index in range(len(blocks)) if index not in candidates}
    trials, measured, loss = len(blocks), None, math.nan
    while candidates:
        loss, measured = loss_of([layer.node for index in candidates for layer in blocks[index]])
        trials += 1
        if loss <= bound:
            break
        worst = candidates.pop()
        reasons[worst] = (f"with {len(candidates) + 1} blocks INT8 the loss was {loss:.3f} dB > {bound:g} dB; this "
                          f"block costs most alone ({alone[worst]:.3f} dB)")
        measured = None
    for index in candidates:
        reasons[index] = (f"its block INT8 alone costs {alone[index]:.3f} dB <= {threshold:.3g} dB ({layer_share:g} "
                          f"x the bound), and the {len(candidates)} INT8 blocks together {loss:.3f} dB <= {bound:g} dB")
    chosen = [layer.node for index in sorted(candidates) for layer in blocks[index]]
    by_node = {layer.node: reasons[index] for index, block in enumerate(blocks) for layer in block}
    left_out = sorted((index for index in range(len(blocks)) if index not in candidates), key=lambda i: alone[i])
    extra, measured, extra_trials = _leading_parts([blocks[index] for index in left_out], chosen, loss_of, bound,
                                                   measured)
    by_node.update(extra)
    block_cost = {layer.node: alone[index] for index, block in enumerate(blocks) for layer in block}
    choices = [LayerChoice(layer, block_cost[layer.node], layer.node in chosen, by_node[layer.node])
               for layer in layers]
    return choices, measured, trials + extra_trials


def _leading_parts(blocks: Sequence[Sequence[ConvLayer]], chosen: list[str],
                   loss_of: Callable[[Sequence[str]], tuple[float, Any]], bound: float,
                   measured: Any) -> tuple[dict[str, str], Any, int]:
    """Step 4 of :func:`choose_convolutions`: for each of ``blocks`` (left out whole), its longest leading part (its
    first ``k < len(block)`` convolutions) with which ``chosen`` stays within ``bound``, appended to ``chosen``.
    Returns the reasons of the layers taken, what ``loss_of`` returned for the final set (``measured`` when nothing
    was added) and how many graphs were measured. On the measured CPU a block's second convolution (32->32) alone
    is most of its INT8 gain (``benchmarks/results/precision_vnni_120.md``)."""
    reasons: dict[str, str] = {}
    trials = 0
    for block in blocks:
        for length in range(len(block) - 1, 0, -1):
            part = block[:length]
            nodes = [*chosen, *(layer.node for layer in part)]
            loss, result = loss_of(nodes)
            trials += 1
            if loss <= bound:
                chosen[:] = nodes
                measured = result
                for layer in part:
                    reasons[layer.node] = (f"the whole block costs too much; its first {length} INT8 convolution(s) "
                                           f"with the other INT8 blocks cost {loss:.3f} dB <= {bound:g} dB")
                break
    return reasons, measured, trials
