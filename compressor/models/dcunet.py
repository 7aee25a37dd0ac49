"""DC-UNet (Sun et al. 2019) as the heterogeneous teacher of Table 6: ``dcunetM`` = M cascades of U-Net block + DF.

Each block is a two-level U-Net (``c`` = ``ModelOptions.width``, paper-size default 32), all convs 3×3 with
padding 1:

====================  ==========================  ===================================
layer                 channels                    resolution (``H' × W'``, see below)
====================  ==========================  ===================================
conv1, relu1          1 → c                       full
conv2, relu2          c → c   (skip)              full
pool                  2×2 max-pool                half
conv3, relu3          c → 2c                      half
conv4, relu4          2c → 2c                     half
upsample              bilinear ×2                 full
conv5, relu5          [skip, up] 3c → c           full
conv6, relu6          c → c                       full
conv7                 c → 1                       full
====================  ==========================  ===================================

Like :class:`~compressor.models.dccnn.CNNBlock`, the block zero-pads its input by ``block_padding`` pixels
(default 5) on every side and crops its output back; when the padded size is odd it adds one more row/column at
the bottom/right so the max-pool and the upsampling meet again (any ``H × W`` works, e.g. 15 × 18). Full
resolution is then ``H' = H + 2p + ((H + 2p) mod 2)``. ``plain`` or ``residual`` block form as DC-CNN, and the
same :class:`~compressor.physics.data_fidelity.DataFidelity` after every block.

Parameters per cascade: ``10c + (9c² + c) + (18c² + 2c) + (36c² + 2c) + (27c² + c) + (9c² + c) + (9c + 1)``
= 102,209 for ``c = 32`` (dcunet5: 511,045), plus one per cascade with a learnable λ.

**Feature pairing with a DC-CNN student (the adapter).** ``hidden_layers(i)`` lists ``relu1..relu6`` in order.
The base-class rule (the middle one) would pick ``relu4``, the bottleneck: ``2c`` channels at half resolution.
:meth:`DCUNet.distillation_layer` instead pairs ``relu5``, the first full-resolution activation after the skip
merge, where the U-Net's two scales meet on the image grid: ``c = 32`` channels like d3c5's paired ``relu2``, and
the same ``(H + 10) × (W + 10)`` size with the default 5-pixel padding whenever ``H`` and ``W`` are even. So the
feature KD losses pair the two maps as they are: AT, NST, SP and PKT need no adapter, FitNets' regressor and FT's
translator are built for 32 → 32 channels. The one adapter is spatial: when a size is odd the teacher's map is one
row/column larger, and the losses adaptive-average-pool the student's map to the teacher's size
(:func:`compressor.kd.base.resize_map_to`). SFT branches need nothing: teacher and student cascades both map
images to images with DF, so a d3c5 branch starts from a DC-UNet cascade output as from a DC-CNN one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.models.base import CascadeModel, data_fidelity_cascades
from compressor.models.dccnn import is_residual
from compressor.physics.fft import FourierOperator

PAIRED_RELU = "relu5"
"""The U-Net activation paired with a DC-CNN student's middle activation (see the module docstring)."""


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class UNetBlock(nn.Module):
    """Two-level U-Net ``(B, 1, H, W) -> (B, 1, H, W)``; layer names and shapes in the module docstring.

    Args:
        width: ``c``, the full-resolution width (the bottleneck has ``2c``).
        residual: return ``image + U-Net(image)`` instead of ``U-Net(image)``.
        block_padding: zero padding added on every side before the U-Net and cropped after it.
    """

    def __init__(self, width: int = 32, residual: bool = False, block_padding: int = 5):
        super().__init__()
        c = width
        self.residual = residual
        self.block_padding = block_padding
        self.conv1, self.relu1 = _conv(1, c), nn.ReLU()
        self.conv2, self.relu2 = _conv(c, c), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3, self.relu3 = _conv(c, 2 * c), nn.ReLU()
        self.conv4, self.relu4 = _conv(2 * c, 2 * c), nn.ReLU()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv5, self.relu5 = _conv(3 * c, c), nn.ReLU()
        self.conv6, self.relu6 = _conv(c, c), nn.ReLU()
        self.conv7 = _conv(c, 1)

    @staticmethod
    def hidden_layer_names() -> list[str]:
        return [f"relu{k}" for k in range(1, 7)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        p = self.block_padding
        # One pooling level: the padded size must be even for the upsampled map to meet the skip connection.
        x = F.pad(image, (p, p + (width + 2 * p) % 2, p, p + (height + 2 * p) % 2))
        skip = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        bottom = self.relu4(self.conv4(self.relu3(self.conv3(self.pool(skip)))))
        x = torch.cat((skip, self.upsample(bottom)), dim=1)
        x = self.conv7(self.relu6(self.conv6(self.relu5(self.conv5(x)))))
        x = x[..., p:p + height, p:p + width]
        return image + x if self.residual else x


class DCUNet(CascadeModel):
    """``n_cascades`` × (:class:`UNetBlock` + :class:`DataFidelity`).

    Args:
        n_cascades: cascades (``M``, ≥ 1).
        width: the U-Nets' full-resolution width ``c``.
        block_form: ``"plain"`` or ``"residual"``.
        block_padding: zero padding around each block's input (authors' DC-CNN: 5).
        dc_lambda: ``None`` for the paper's ``λ → ∞``; a float for a finite DF weight.
        dc_learnable: learn ``λ`` (adds one parameter per cascade).
    """

    def __init__(self, n_cascades: int, width: int = 32, block_form: str = "plain", block_padding: int = 5,
                 dc_lambda: float | None = None, dc_learnable: bool = False,
                 fourier: FourierOperator | None = None):
        residual = is_residual(block_form)
        blocks = [UNetBlock(width, residual, block_padding) for _ in range(n_cascades)]
        super().__init__(data_fidelity_cascades(blocks, dc_lambda, dc_learnable), fourier)
        self.arch = f"dcunet{n_cascades}"
        self.width = width
        self.block_form = block_form

    def distillation_layer(self, cascade: int) -> str:
        """``relu5`` of the cascade's U-Net: ``c`` channels at full (padded) resolution, not the base rule's
        bottleneck ``relu4``; why in the module docstring."""
        return f"cascades.{cascade}.block.{PAIRED_RELU}"
