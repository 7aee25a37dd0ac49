r"""The exportable scanner-side graph: raw undersampled k-space and mask in, normalised reconstruction out.

:class:`ScannerGraph` wraps a trained :class:`~compressor.models.base.CascadeModel` so that the exported ONNX
file needs nothing but ONNX Runtime: it masks the k-space, forms the zero-filled image and normalises it with the
function training uses (:func:`compressor.physics.normalisation.normalise_kspace`, given the graph's own Fourier
operator), and runs every cascade with its data-fidelity (DF) layer.

Graph inputs and outputs (``B`` dynamic, ``H x W`` fixed at export):

* ``kspace_real``, ``kspace_imag``: ``(B, H, W)`` float32, undersampled k-space, **uncentred** (DC at ``(0, 0)``),
  orthonormal FFT convention, in any units (the graph normalises);
* ``mask``: ``(H, W)`` float32 0/1, uncentred, one mask for the whole batch (the paper uses one fixed mask per
  acceleration);
* ``image``: ``(B, H, W)`` float32, the reconstruction in **normalised units** (the training convention: the
  zero-filled image divided by its max absolute value);
* ``scale``: ``(B,)`` float32, that divisor, so ``image * scale[:, None, None]`` is in the input's units.

DF formulations (registered in :data:`FORMULATIONS`; all exact to float32 rounding; a test proves them equal to the
training DF on ``torch.fft``):

``"dft"``
    the training DF function :func:`compressor.physics.data_fidelity.data_fidelity`, unchanged, with the
    Fourier operator swapped for :class:`~compressor.physics.fft.MatmulDFT` (DFT matrices as ``MatMul`` nodes,
    which every ONNX Runtime execution provider runs). Works for any mask.
``"lines"``
    for masks made of whole lines along one axis (every mask of this project), no 2-D transform at all.
    With :math:`m` the line pattern and :math:`F` the orthonormal DFT matrix along the phase-encode axis,

    .. math:: P = \mathrm{Re}(F^H \operatorname{diag}(m) F) = F_r \operatorname{diag}(m) F_r
              + F_i \operatorname{diag}(m) F_i

    is the real projection onto the sampled lines, computed once per forward from the mask, and for a real
    CNN output :math:`z` and weight :math:`w = \lambda / (1 + \lambda)` (:math:`w = 1` for :math:`\lambda \to \infty`)

    .. math:: \mathrm{Re}\,F^{-1}\big((1 - wM) F z + w M y\big) = z + w\,(x_u - z P)

    (right-multiplication for column lines, ``P z`` for row lines), where :math:`x_u = \mathrm{Re}\,F^{-1}(My)`.
    Exact because :math:`F^{-1} M F` factorises along the two axes and :math:`z` is real. The graph reads the
    line pattern from the mask input's first row (column lines) or first column (row lines), so the mask fed
    to it must be whole lines along the axis recorded in the metadata (``compress reconstruct`` checks, with
    :func:`compressor.masks.is_whole_lines`; the axis itself is found by :func:`compressor.masks.line_axis`).
``"fft"``
    the training operator :class:`~compressor.physics.fft.TorchFFT`; the dynamo exporter turns it into ONNX
    ``DFT`` nodes. Kept only as the naive baseline of the latency benchmark (slow and Bluestein-inaccurate in
    ONNX Runtime for sizes that are not powers of two; no CUDA kernel).
``"none"``
    the CNN blocks alone, no DF: the benchmark's reference for the DF layers' share of the run time.

The CNN blocks run as trained except that their last convolution (one output channel) is computed as a depthwise
convolution plus a channel sum (:class:`ChannelSumConv`), the same function but ~20 % less ONNX Runtime time for
d3c5 at 240x240.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.masks import LINE_AXES
from compressor.models.base import CascadeModel
from compressor.physics import MatmulDFT, TorchFFT, apply_mask, dft_matrix, normalise_kspace
from compressor.registry import Registry


@dataclass(frozen=True)
class FormulationSpec:
    """What the rest of the tool needs to know about a DF formulation of :class:`ScannerGraph`.

    Attributes:
        exportable: whether ``compress export`` may write it (the others are benchmark baselines).
        needs_line_axis: whether the graph takes the mask's line axis (only for whole-line masks).
    """

    exportable: bool
    needs_line_axis: bool = False


FORMULATIONS: Registry[FormulationSpec] = Registry("DF formulation")
FORMULATIONS.register("lines")(FormulationSpec(exportable=True, needs_line_axis=True))
FORMULATIONS.register("dft")(FormulationSpec(exportable=True))
FORMULATIONS.register("fft")(FormulationSpec(exportable=False))
FORMULATIONS.register("none")(FormulationSpec(exportable=False))


def exportable_formulations() -> list[str]:
    """The formulations ``compress export`` may write (``--formulation`` choices besides ``auto``)."""
    return [name for name in FORMULATIONS if FORMULATIONS.get(name).exportable]


def line_projection(lines: torch.Tensor, dft_real: torch.Tensor, dft_imag: torch.Tensor) -> torch.Tensor:
    """``P = Re(F^H diag(m) F)`` ``(N, N)`` for a line pattern ``m`` ``(N,)`` and the orthonormal, symmetric DFT
    matrix ``F = dft_real + i dft_imag`` ``(N, N)``. ``P`` is symmetric; for a real signal ``v`` along the axis,
    ``P v = Re F^{-1}(m ⊙ F v)``."""
    weighted_real = lines[:, None] * dft_real
    weighted_imag = lines[:, None] * dft_imag
    return dft_real @ weighted_real + dft_imag @ weighted_imag


def line_data_fidelity(
    image: torch.Tensor,
    zero_filled_image: torch.Tensor,
    projection: torch.Tensor,
    axis: int,
    dc_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2) of the paper for a whole-line mask, in image space: ``z + w (x_u - z P)``.

    Args:
        image: CNN output ``z``, real, ``(B, 1, H, W)``.
        zero_filled_image: ``x_u = Re F^{-1}(M y)``, ``(B, 1, H, W)``, same units as ``image``.
        projection: ``P`` from :func:`line_projection`, ``(W, W)`` for ``axis=-1``, ``(H, H)`` for ``axis=-2``.
        axis: ``-1`` when the mask samples whole columns (lines along ``W``), ``-2`` for whole rows.
        dc_weight: ``λ``; ``None`` means ``λ → ∞`` (the paper's models), giving ``x_u + z - z P``.
    """
    projected = image @ projection if axis == -1 else projection @ image
    correction = zero_filled_image - projected
    if dc_weight is None:
        return image + correction
    return image + (dc_weight / (1.0 + dc_weight)) * correction


class ChannelSumConv(nn.Module):
    """A ``Conv2d`` with one output channel, computed as a depthwise convolution followed by a sum over channels.

    The same function to float32 rounding (a test and every export's validation check it). Why: ONNX Runtime's
    CPU convolutions use a channel-blocked layout (NCHWc) that pads output channels to the block size (16 with
    AVX-512), so the blocks' last conv (32 -> 1) costs as much as a 32 -> 16 one, about a third of d3c5's run
    time; the depthwise form does 1/16 of that work. The channel sum is a 1x1 convolution with unit weights
    (carrying the bias), which reads the blocked layout directly (faster than ``ReduceSum``, which needs it
    reordered first).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.out_channels != 1 or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"expected a single-output, ungrouped, zero-padded Conv2d, got {conv}")
        self.conv = conv
        self.register_buffer("unit_weights", torch.ones(1, conv.in_channels, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        per_channel = F.conv2d(image, conv.weight.transpose(0, 1), None, conv.stride, conv.padding, conv.dilation,
                               groups=conv.in_channels)
        return F.conv2d(per_channel, self.unit_weights, conv.bias)


def with_channel_sum_convs(module: nn.Module) -> nn.Module:
    """``module`` with every single-output ``Conv2d`` of more than one input channel replaced by
    :class:`ChannelSumConv` (in place; pass a copy)."""
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.Conv2d) and child.out_channels == 1 and child.in_channels > 1
                and child.groups == 1 and child.padding_mode == "zeros"):
            setattr(module, name, ChannelSumConv(child))
        else:
            with_channel_sum_convs(child)
    return module


class ScannerGraph(nn.Module):
    """A trained cascade model as a scanner-side graph (see the module docstring for inputs and outputs).

    The graph holds a copy of the model's cascades, whose single-output convolutions are rewritten as
    :class:`ChannelSumConv` (same function, faster in ONNX Runtime); the model itself is left untouched (its
    ``fourier`` stays whatever training used): the graph passes its own Fourier operator to each cascade.

    Args:
        model: the trained model, in eval mode.
        image_size: ``(H, W)`` fixed at export.
        formulation: a name registered in :data:`FORMULATIONS`.
        line_axis: for ``"lines"`` (only), the mask's :func:`~compressor.masks.line_axis` (``-1`` or ``-2``).
    """

    def __init__(self, model: CascadeModel, image_size: tuple[int, int], formulation: str,
                 line_axis: int | None = None):
        super().__init__()
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}, got {formulation!r}")
        if FORMULATIONS.get(formulation).needs_line_axis != (line_axis in LINE_AXES):
            raise ValueError(f"the 'lines' formulation and only it takes a line axis (-1 or -2), got {line_axis}")
        self.cascades = with_channel_sum_convs(copy.deepcopy(model.cascades))
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.formulation = formulation
        self.line_axis = line_axis
        self.fourier = TorchFFT() if formulation == "fft" else MatmulDFT(*self.image_size)
        if formulation == "lines":
            dft_real, dft_imag = dft_matrix(self.image_size[1] if line_axis == -1 else self.image_size[0])
            self.register_buffer("line_dft_real", dft_real, persistent=False)
            self.register_buffer("line_dft_imag", dft_imag, persistent=False)

    def forward(
        self, kspace_real: torch.Tensor, kspace_imag: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W), (B, H, W), (H, W) -> image (B, H, W) normalised, scale (B,)``."""
        mask = mask[None, None]
        kspace = apply_mask(torch.stack((kspace_real, kspace_imag), dim=-1)[:, None], mask)
        image, kspace, scale = normalise_kspace(kspace, self.fourier)
        if self.formulation == "lines":
            image = self._run_line_cascades(image, mask[0, 0])
        elif self.formulation == "none":
            for cascade in self.cascades:
                image = cascade.block(image)
        else:
            for cascade in self.cascades:
                _, image = cascade(image, kspace, mask, self.fourier)
        return image[:, 0], scale[:, 0]

    def _run_line_cascades(self, zero_filled_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every cascade with :func:`line_data_fidelity`; ``P`` is built once from the ``(H, W)`` mask."""
        lines = mask[0, :] if self.line_axis == -1 else mask[:, 0]
        projection = line_projection(lines, self.line_dft_real, self.line_dft_imag)
        image = zero_filled_image
        for cascade in self.cascades:
            image = cascade.block(image)
            if cascade.data_fidelity is not None:
                image = line_data_fidelity(image, zero_filled_image, projection, self.line_axis,
                                           cascade.data_fidelity.dc_weight)
        return image
