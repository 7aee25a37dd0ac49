"""DC-CNN (Schlemper et al. 2017) as used by the paper: ``dNcM`` = M cascades of an N-conv CNN block + DF.

Each block: ``conv(C→32), ReLU, [conv(32→32), ReLU] × (N−2), conv(32→C)``, 3×3 kernels, where ``C`` is the image's
channel count: 1 for the paper's real image, 2 for the complex image as (real, imag) channels (Schlemper et al.'s
DC-CNN; 577 more parameters per cascade). Two block forms:

* ``plain``: the block's output is the new image (the authors' code);
* ``residual``: ``image + CNN(image)`` (Schlemper et al.'s DC-CNN).

Both have the same parameters. Following the authors' code, the block zero-pads its input by
``block_padding`` pixels (default 5) on every side and crops its output back; this only changes borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.models.base import CascadeModel, data_fidelity_cascades
from compressor.physics.fft import IMAGE_CHANNELS, FourierOperator
from compressor.vocabulary import BlockForm, values

BLOCK_FORMS = values(BlockForm)


def is_residual(block_form: str) -> bool:
    """``True`` for ``"residual"`` blocks, ``False`` for ``"plain"``; anything else is an error."""
    if block_form not in BLOCK_FORMS:
        raise ValueError(f"block_form must be one of {BLOCK_FORMS}, got {block_form!r}")
    return block_form == "residual"


class CNNBlock(nn.Module):
    """``n_layers`` 3×3 convs with ReLU between them; layers named ``conv1..convN`` and ``relu1..relu(N-1)``.

    Input and output ``(B, in_channels, H, W)``; the hidden activations ``relu k`` are ``(B, width, H + 2p, W + 2p)``
    where ``p = block_padding``.
    """

    def __init__(self, n_layers: int, width: int = 32, residual: bool = False, block_padding: int = 5,
                 in_channels: int = 1):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"a CNN block needs at least 2 conv layers, got {n_layers}")
        self.n_layers = n_layers
        self.residual = residual
        self.block_padding = block_padding
        widths = [in_channels] + [width] * (n_layers - 1) + [in_channels]
        for k in range(1, n_layers + 1):
            self.add_module(f"conv{k}", nn.Conv2d(widths[k - 1], widths[k], kernel_size=3, padding=1))
            if k < n_layers:
                self.add_module(f"relu{k}", nn.ReLU())

    def hidden_layer_names(self) -> list[str]:
        return [f"relu{k}" for k in range(1, self.n_layers)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.block_padding
        x = F.pad(image, (p, p, p, p)) if p else image
        for k in range(1, self.n_layers + 1):
            x = getattr(self, f"conv{k}")(x)
            if k < self.n_layers:
                x = getattr(self, f"relu{k}")(x)
        if p:
            x = x[..., p:-p, p:-p]
        return image + x if self.residual else x


class DCCNN(CascadeModel):
    """``n_cascades`` × (:class:`CNNBlock` + :class:`DataFidelity`).

    Args:
        n_layers: conv layers per block (``N`` in ``dNcM``, ≥ 2).
        n_cascades: cascades (``M``, ≥ 1).
        block_form: ``"plain"`` or ``"residual"``.
        dc_lambda: ``None`` for the paper's ``λ → ∞``; a float for a finite DF weight.
        dc_learnable: learn ``λ`` (adds one parameter per cascade).
        image_channels: 1 (the paper's real image) or 2 (the complex image as real and imaginary channels).
    """

    def __init__(self, n_layers: int, n_cascades: int, width: int = 32, block_form: str = "plain",
                 block_padding: int = 5, dc_lambda: float | None = None, dc_learnable: bool = False,
                 fourier: FourierOperator | None = None, image_channels: int = 1):
        if image_channels not in IMAGE_CHANNELS:
            raise ValueError(f"image_channels must be 1 or 2, got {image_channels}")
        residual = is_residual(block_form)
        blocks = [CNNBlock(n_layers, width, residual, block_padding, image_channels) for _ in range(n_cascades)]
        super().__init__(data_fidelity_cascades(blocks, dc_lambda, dc_learnable), fourier)
        self.arch = f"d{n_layers}c{n_cascades}"
        self.n_layers = n_layers
        self.width = width
        self.block_form = block_form
        self.image_channels = image_channels
