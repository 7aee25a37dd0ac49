"""The per-layer sensitivity analysis that picks the convolutions INT8 takes (:func:`choose_convolutions`), and its
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
"""A convolution is a candidate for INT8 when quantizing it alone costs at most this share of the bound."""
NO_BOUND_REASON = "no PSNR-loss bound (--max-psnr-loss inf): every convolution INT8 may take, not measured alone"


@dataclass(frozen=True)
class LayerChoice:
    """A convolution, its PSNR cost quantized alone (dB; NaN where not measured), whether it is INT8 in the file, and
    why (or why not)."""

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
        every layer's :class:`LayerChoice` (each with its reason), what ``loss_of`` returned for the chosen set
        (``None`` when the set is empty) and how many graphs were measured.
    """
    if math.isinf(bound):
        _, measured = loss_of([layer.node for layer in layers])
        return [LayerChoice(layer, math.nan, True, NO_BOUND_REASON) for layer in layers], measured, 1
    alone = {layer.node: loss_of([layer.node])[0] for layer in layers}
    threshold = layer_share * bound
    candidates = sorted((layer for layer in layers if alone[layer.node] <= threshold), key=lambda c: alone[c.node])
    reasons: dict[str, str] = {layer.node: f"alone it costs {alone[layer.node]:.3f} dB > {threshold:.3g} dB "
                               f"({layer_share:g} x the bound)" for layer in layers if layer not in candidates}
    trials, measured = len(layers), None
    while candidates:
        loss, measured = loss_of([layer.node for layer in candidates])
        trials += 1
        if loss <= bound:
            break
        worst = candidates.pop()
        reasons[worst.node] = (f"with {len(candidates) + 1} convolutions INT8 the loss was {loss:.3f} dB > {bound:g} "
                               f"dB; this one costs most alone ({alone[worst.node]:.3f} dB)")
        measured = None
    for layer in candidates:
        reasons[layer.node] = (f"alone it costs {alone[layer.node]:.3f} dB <= {threshold:.3g} dB ({layer_share:g} x "
                               f"the bound), and the {len(candidates)} INT8 convolutions together {loss:.3f} dB <= "
                               f"{bound:g} dB")
    chosen = {layer.node for layer in candidates}
    choices = [LayerChoice(layer, alone[layer.node], layer.node in chosen, reasons[layer.node]) for layer in layers]
    return choices, measured, trials
