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
* a 1-channel model (the paper's real image): ``image`` ``(B, H, W)`` float32, the reconstruction in **normalised
  units** (the training convention: the zero-filled image divided by its max absolute value);
* a 2-channel model (the complex image): ``image_real``, ``image_imag`` and ``magnitude`` ``(B, H, W)`` float32, the
  complex reconstruction's parts and its magnitude, in normalised units;
* ``scale``: ``(B,)`` float32, that divisor, so ``image * scale[:, None, None]`` is in the input's units.

The names come from one place, :func:`compressor.export.exported_file.graph_outputs`, and the exported metadata
records
``image_channels``; :meth:`compressor.export.runtimes.session.ExportedModel.run` returns the image as a real or
complex array.

DF formulations (registered in :data:`FORMULATIONS`; all exact to float32 rounding; a test proves them equal to the
training DF on ``torch.fft``):

``"dft"``
    the training DF function :func:`compressor.physics.data_fidelity.data_fidelity`, unchanged, with the
    Fourier operator swapped for :class:`~compressor.physics.fft.MatmulDFT` (DFT matrices as ``MatMul`` nodes,
    which every ONNX Runtime execution provider runs). Works for any mask.
``"lines"``
    for masks made of whole lines along one axis (every mask of this project), no 2-D transform at all: the
    data-fidelity layer in image space, :func:`compressor.physics.line_data_fidelity` (the maths is in
    :mod:`compressor.physics.line_projection`), ``z + w (x_u - Proj(z))`` with the projection
    :math:`P = F^H \operatorname{diag}(m) F` onto the sampled lines computed once per forward from the mask (only its
    real part acts on a real image; the complex image takes both). The graph reads the line pattern from the mask
    input's first row (column lines) or first column (row lines), so the mask fed to it must be whole lines along the
    axis recorded in the metadata (``compress reconstruct`` checks, with :func:`compressor.masks.is_whole_lines`; the
    axis itself is found by :func:`compressor.masks.line_axis`).
``"fft"``
    the training operator :class:`~compressor.physics.fft.TorchFFT`; the dynamo exporter turns it into ONNX
    ``DFT`` nodes. Kept only as the naive baseline of the latency benchmark (slow and Bluestein-inaccurate in
    ONNX Runtime for sizes that are not powers of two; no CUDA kernel).

The CNN blocks run as trained except that their last convolution (one or two output channels) is computed as a
grouped convolution plus a channel sum (:class:`ChannelSumConv`): the same function, cheaper in ONNX Runtime's
channel-blocked CPU layout.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.export.exported_file import graph_outputs
from compressor.masks import LINE_AXES
from compressor.models.base import CascadeModel
from compressor.physics import (
    DataFidelity,
    LineProjection,
    MatmulDFT,
    TorchFFT,
    apply_mask,
    channel_magnitude,
    dft_matrix,
    line_data_fidelity,
    line_projection,
    normalise_kspace,
)
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


def exportable_formulations() -> list[str]:
    """The formulations ``compress export`` may write (``--formulation`` choices besides ``auto``)."""
    return [name for name in FORMULATIONS if FORMULATIONS.get(name).exportable]


CHANNEL_SUM_MAX_OUTPUTS = 2
"""The most outputs a convolution may have to be rewritten as :class:`ChannelSumConv`: the blocks' last conv has
one (real images) or two (complex images); the rewrite pays while ``out_channels`` is far below the block of 16."""


class ChannelSumConv(nn.Module):
    """A ``Conv2d`` with few output channels (:data:`CHANNEL_SUM_MAX_OUTPUTS`), computed as a grouped convolution
    (``groups = in_channels``, each input channel producing ``out_channels`` maps) followed by a fixed 1x1
    convolution that sums, per output, over the input channels and adds the bias.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``, the same function to float32 rounding (a test and every export's
    validation check it). Why: ONNX Runtime's CPU convolutions use a channel-blocked layout (NCHWc) that pads output
    channels to the block size (16 with AVX-512), so the blocks' last conv (32 -> 1 or 2) costs as much as a 32 -> 16
    one; the grouped form does ``C_out``/16 of that work. The channel sum is a 1x1
    convolution with 0/1 weights (carrying the bias), which reads the blocked layout directly (faster than
    ``ReduceSum``, which needs it reordered first). Measured against the plain convolution in
    ``benchmarks/results/precision_vnni_120.md`` (fp32 and INT8; the plain form is slower in both).

    The grouped weights are fixed when the module is made (the export's weights are final): ``conv.weight`` changed
    afterwards is not seen. With one output (a real image) the grouped convolution is depthwise, which ONNX
    Runtime's INT8 kernels run fast, so INT8 may take both halves (:mod:`compressor.export.precision.layers`).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_channel_sum_candidate(conv):
            raise ValueError(f"expected an ungrouped, zero-padded Conv2d with at most {CHANNEL_SUM_MAX_OUTPUTS} "
                             f"outputs and more inputs than outputs, got {conv}")
        self.conv = conv
        outputs = conv.out_channels
        # (C_out, C_in, k, k) -> (C_in * C_out, 1, k, k): group g's filters are W[:, g], in output order. A buffer
        # taken from the weights as they are now, so that the graph holds it as an initializer (a constant INT8 can
        # quantize) instead of computing it from the weight at run time.
        self.register_buffer("grouped_weights", conv.weight.detach().transpose(0, 1).reshape(-1, 1, *conv.kernel_size)
                             .clone(), persistent=False)
        # Grouped map g * C_out + o is input channel g's contribution to output o: sum those with o fixed.
        self.register_buffer("sum_weights", torch.eye(outputs).repeat(1, conv.in_channels)[:, :, None, None],
                             persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        per_channel = F.conv2d(image, self.grouped_weights, None, conv.stride, conv.padding, conv.dilation,
                               groups=conv.in_channels)
        return F.conv2d(per_channel, self.sum_weights, conv.bias)


def is_channel_sum_candidate(conv: nn.Module) -> bool:
    """Whether ``conv`` is a ``Conv2d`` that :class:`ChannelSumConv` computes faster: ungrouped, zero-padded, at most
    :data:`CHANNEL_SUM_MAX_OUTPUTS` outputs and more inputs than outputs (a block's last conv, not its first)."""
    return (isinstance(conv, nn.Conv2d) and conv.out_channels <= CHANNEL_SUM_MAX_OUTPUTS
            and conv.in_channels > conv.out_channels and conv.groups == 1 and conv.padding_mode == "zeros")


def with_channel_sum_convs(module: nn.Module) -> nn.Module:
    """``module`` with every :func:`is_channel_sum_candidate` ``Conv2d`` replaced by :class:`ChannelSumConv` (in
    place; pass a copy)."""
    for name, child in list(module.named_children()):
        if is_channel_sum_candidate(child):
            setattr(module, name, ChannelSumConv(child))
        else:
            with_channel_sum_convs(child)
    return module


DATA_FIDELITY_SCOPE = re.compile(r"cascades\.\d+\.data_fidelity|line_projection")
"""The module scopes of the DF in every formulation's exported nodes (``pkg.torch.onnx.name_scopes``): each
cascade's ``cascades.<i>.data_fidelity`` and, for ``"lines"``, the projection built once from the mask
(``line_projection``). The benchmark's DF share sums the ONNX Runtime profile over the nodes in these scopes."""


class LineProjector(nn.Module):
    """``(H, W)`` whole-line mask ``->`` :class:`~compressor.physics.LineProjection` ``P`` along ``line_axis``
    (:func:`~compressor.physics.line_projection`), read from the mask's first row (column lines) or first column
    (row lines). A module so that its exported nodes carry the scope ``line_projection``."""

    def __init__(self, size: int, line_axis: int):
        super().__init__()
        self.line_axis = line_axis
        dft_real, dft_imag = dft_matrix(size)
        self.register_buffer("dft_real", dft_real, persistent=False)
        self.register_buffer("dft_imag", dft_imag, persistent=False)

    def forward(self, mask: torch.Tensor) -> LineProjection:
        lines = mask[0, :] if self.line_axis == -1 else mask[:, 0]
        return line_projection(lines, self.dft_real, self.dft_imag)


class LineDataFidelity(nn.Module):
    """One cascade's DF for whole-line masks, :func:`~compressor.physics.line_data_fidelity` with that cascade's
    weight: ``(B, C, H, W)`` CNN output and zero-filled image, ``P`` ``->`` ``(B, C, H, W)``. It replaces the
    cascade's ``data_fidelity`` in the graph, so its nodes carry the scope ``cascades.<i>.data_fidelity`` as the
    other formulations' DF do."""

    def __init__(self, data_fidelity: DataFidelity, line_axis: int):
        super().__init__()
        self.trained = data_fidelity
        self.line_axis = line_axis

    def forward(self, image: torch.Tensor, zero_filled_image: torch.Tensor,
                projection: LineProjection) -> torch.Tensor:
        return line_data_fidelity(image, zero_filled_image, projection, self.line_axis, self.trained.dc_weight)


def graph_output_tensors(image: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The graph's outputs from the normalised reconstruction ``(B, C, H, W)`` and the scale ``(B, 1)``, in the order
    of :func:`compressor.export.exported_file.graph_outputs` ``(C).names``: ``C = 1``: ``image (B, H, W), scale
    (B,)``;
    ``C = 2``: ``image_real, image_imag, magnitude (B, H, W), scale (B,)``."""
    if image.shape[1] == 1:
        return image[:, 0], scale[:, 0]
    return image[:, 0], image[:, 1], channel_magnitude(image)[:, 0], scale[:, 0]


class ScannerGraph(nn.Module):
    """A trained cascade model as a scanner-side graph (see the module docstring for inputs and outputs).

    The graph holds a copy of the model's cascades, whose last convolutions are rewritten as :class:`ChannelSumConv`
    (same function, faster in ONNX Runtime); the model itself is left untouched (its ``fourier`` stays whatever
    training used): the graph passes its own Fourier operator to each cascade.

    Args:
        model: the trained model, in eval mode; its ``image_channels`` (1 real, 2 complex) fix the outputs.
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
        self.image_channels = model.image_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.formulation = formulation
        self.line_axis = line_axis
        self.fourier = TorchFFT() if formulation == "fft" else MatmulDFT(*self.image_size)
        if formulation == "lines":
            self.line_projection = LineProjector(self.image_size[1] if line_axis == -1 else self.image_size[0],
                                                 line_axis)
            for cascade in self.cascades:
                if cascade.data_fidelity is not None:
                    cascade.data_fidelity = LineDataFidelity(cascade.data_fidelity, line_axis)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of :meth:`forward`'s outputs, in order
        (:func:`compressor.export.exported_file.graph_outputs`)."""
        return graph_outputs(self.image_channels).names

    def forward(self, kspace_real: torch.Tensor, kspace_imag: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, H, W), (B, H, W), (H, W) ->`` the outputs named by :attr:`output_names`
        (:func:`graph_output_tensors`)."""
        mask = mask[None, None]
        kspace = apply_mask(torch.stack((kspace_real, kspace_imag), dim=-1)[:, None], mask)
        image, kspace, scale = normalise_kspace(kspace, self.fourier, self.image_channels)
        if self.formulation == "lines":
            image = self._run_line_cascades(image, mask[0, 0])
        else:
            for cascade in self.cascades:
                _, image = cascade(image, kspace, mask, self.fourier)
        return graph_output_tensors(image, scale)

    def _run_line_cascades(self, zero_filled_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every cascade with its :class:`LineDataFidelity`; ``P`` is built once from the ``(H, W)`` mask."""
        projection = self.line_projection(mask)
        image = zero_filled_image
        for cascade in self.cascades:
            image = cascade.block(image)
            if cascade.data_fidelity is not None:
                image = cascade.data_fidelity(image, zero_filled_image, projection)
        return image
