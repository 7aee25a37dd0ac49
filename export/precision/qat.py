"""Quantization-aware fine-tuning (QAT) for INT8, tried when post-training INT8 of every convolution loses more than
``PrecisionOptions.qat_threshold``.

A copy of the model is fine-tuned with the weights and inputs of every convolution INT8 may take fake-quantized as
ONNX Runtime quantizes them (:func:`finetune_quantization_aware`), distilled from the fp32 model's own
reconstruction; it is traced again, quantized whole the same way, and used if it is within the bound against the
original fp32 graph and quantizes more convolutions than the post-training choice (:func:`quantization_aware`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.export.exported_file import Int8Settings, QatRun
from compressor.export.graph.scanner_graph import is_channel_sum_candidate
from compressor.export.graph.validate import ImageQuality, model_input
from compressor.export.precision.layers import block_convolutions
from compressor.export.precision.options import CalibrationSlices, PrecisionOptions
from compressor.export.precision.quality import QualityProbe
from compressor.export.precision.quantizer import Quantizer
from compressor.export.precision.sensitivity import Int8Choice, LayerChoice
from compressor.models.base import CascadeModel
from compressor.training.objectives import reconstruction_loss

QAT_BATCH = 4
QAT_LEARNING_RATE = 3e-5


def quantization_aware(choice: Int8Choice, model: CascadeModel, mask: np.ndarray, calibration: CalibrationSlices,
                       options: PrecisionOptions, settings: Int8Settings, probe: QualityProbe,
                       retrace: Callable[[CascadeModel], onnx.ModelProto], whole: ImageQuality) -> Int8Choice:
    """Fine-tune ``model`` with every convolution INT8 may take fake-quantized, quantize the result whole, and keep
    it instead of ``choice`` when it is within the bound and quantizes more convolutions. ``whole``: the quality of
    post-training INT8 of every such convolution (which started it); ``retrace`` traces a model's fp32 graph."""
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
    run = QatRun(options.qat_steps, QAT_LEARNING_RATE, QAT_BATCH, first, last, whole.psnr_loss, quality.psnr_loss,
                 used)
    if not used:
        return Int8Choice(choice.layers, choice.graph, choice.quality, choice.bound, choice.trials + 1, run)
    reason = (f"quantization-aware fine-tuning: every convolution INT8 may take, together {quality.psnr_loss:.3f} dB "
              f"<= {choice.bound:g} dB")
    layers = [LayerChoice(c.layer, c.psnr_loss, True, reason) if c.layer.int8_eligible else c for c in choice.layers]
    return Int8Choice(layers, candidate, quality, choice.bound, choice.trials + 1, run)


class _FakeQuantizedWeight(nn.Module):
    """Parametrization of a conv weight ``(C_out, C_in, k, k)``: symmetric per-channel fake quantization to
    ``[-levels, levels]``, as ONNX Runtime quantizes it (scale ``max |w| / levels`` per channel); gradients pass
    straight through. The channels are the convolution's output channels, or with ``grouped`` its ``(output, input)``
    pairs: the filters of the grouped convolution a channel-sum convolution is exported as
    (:class:`~compressor.export.graph.scanner_graph.ChannelSumConv`), each of which ONNX Runtime scales alone."""

    def __init__(self, levels: int, grouped: bool = False):
        super().__init__()
        self.levels = levels
        self.grouped = grouped

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        filters = weight.reshape(-1, 1, *weight.shape[2:]) if self.grouped else weight
        scale = (filters.detach().abs().amax(dim=tuple(range(1, filters.ndim))).clamp_min(1e-12) / self.levels).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        quantized = torch.fake_quantize_per_channel_affine(filters, scale, zero, 0, -self.levels, self.levels)
        return quantized.reshape(weight.shape)


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
    teacher = model.eval()
    student = copy.deepcopy(model).cpu().train()
    levels = 64 if settings.reduce_range else 127
    convs = [conv for cascade_index, cascade in enumerate(block_convolutions(student), start=1)
             for conv_index, conv in enumerate(cascade, start=1)
             if convolutions is None or (cascade_index, conv_index) in convolutions]
    hooks = []
    for conv in convs:
        parametrize.register_parametrization(conv, "weight",
                                             _FakeQuantizedWeight(levels, is_channel_sum_candidate(conv)))
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
