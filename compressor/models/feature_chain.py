"""Feature-domain block networks: one CNN with a global residual, cut into blocks that pass feature maps, no DF.

Two families share this code: the feature-domain SFT ablation of Tables 2 and 4 (``rcnnL``: the original SFT of
Park et al. 2021 adapted as the paper did, with the layer counts of d5c5 / d3c5, i.e. 25 vs 15 convs, and no
intermediate DF layers or image outputs) and VDSR for super-resolution (:mod:`compressor.models.vdsr`).

The network is ``L`` 3×3 convs (padding 1, no block padding): ``conv(1→C)``, ``(L−2) × conv(C→C)``,
``conv(C→1)``, a ReLU after every conv but the last, and a global residual ``output = input + net(input)``.
With ``block_skips`` (``rcnnL``) every block that maps features to features is a ResNet unit: an identity skip
around it, added before its last ReLU (``relu(f + F(f))``), as the ResNet blocks SFT was designed for ("each block
output is in the residual feature domain", paper §1); VDSR has none (a plain chain, as Kim et al.).

**Block split.** The ``L`` convs are cut, in order, into ``K`` consecutive blocks of ``⌊L/K⌋`` convs, the first
``L mod K`` blocks taking one more (:func:`split_layers`; ``L ≥ K``). Block 0 maps the 1-channel input image to
features, middle blocks map features to features, the last block maps features to the 1-channel residual and adds
the global residual. Teacher and student with the same ``K`` and ``C`` can then be wired as in reconstruction:
an SFT student branch starts at block ``i`` from the teacher's block ``i − 1`` output.

**The carried input (how a branch started at block i > 0 finds the global residual's input).** Between blocks
the network passes a *feature state* ``(B, 1 + C, H, W)``: channel 0 is the network's input image, carried
unchanged, channels ``1..C`` are the features. Every cascade output but the last is such a state, so
``run_cascades(state, kspace, mask, start=i)`` has all it needs and the call signature of
:class:`~compressor.models.base.CascadeModel` (and the SFT trainer's
``student.run_cascades(teacher_run.cascade_outputs[i - 1], kspace, mask, start=i)``) works unchanged. The last
cascade's output is the image ``(B, 1, H, W)``; ``kspace`` and ``mask`` are not used (no DF).

**Hidden layers.** ``hidden_layers(i)`` are block ``i``'s ReLU outputs ``relu1..`` (``C`` channels, ``H × W``).
A block made of the final conv alone (e.g. vdsr4's last block) has no ReLU: its hidden layer is then
``block_input``, an identity tap on the features entering it (the previous block's last ReLU output).
``distillation_layer(i)`` is the middle one (base-class rule).
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.models.base import Cascade, CascadeModel

RCNN_BLOCKS = 5
"""Blocks of the feature-domain SFT networks: as many as the DC-CNNs' cascades they are compared with (d5c5, d3c5)."""


def split_layers(n_layers: int, n_blocks: int) -> list[int]:
    """Convs per block: ``n_blocks`` consecutive groups of ``⌊L/K⌋``, the first ``L mod K`` one conv longer.

    >>> split_layers(12, 4), split_layers(4, 4), split_layers(10, 4)
    ([3, 3, 3, 3], [1, 1, 1, 1], [3, 3, 2, 2])
    """
    if n_blocks < 1 or n_layers < max(n_blocks, 2):
        raise ValueError(f"cannot split {n_layers} conv layers into {n_blocks} blocks (need layers >= blocks >= 1, "
                         "layers >= 2)")
    base, extra = divmod(n_layers, n_blocks)
    return [base + 1 if b < extra else base for b in range(n_blocks)]


class FeatureChainBlock(nn.Module):
    """A run of 3×3 convs of the chain; layers named ``conv1..convN``, ``relu1..`` and the tap ``block_input``.

    Args:
        widths: channel counts along the run, ``len = N + 1`` (e.g. ``[1, 64, 64, 64]`` for vdsr12's block 0).
        first: the block takes the image ``(B, 1, H, W)`` (else a feature state ``(B, 1 + C, H, W)``).
        last: the block ends the network: no ReLU after its last conv, and it returns
            ``input image + conv output`` ``(B, 1, H, W)`` (else the feature state ``(B, 1 + C, H, W)``).
        skip: add the block's input features to its last conv output, before the last ReLU (a ResNet unit;
            needs a middle block, whose input and output widths are equal).
    """

    def __init__(self, widths: list[int], first: bool, last: bool, skip: bool = False):
        super().__init__()
        if skip and (first or last or widths[0] != widths[-1]):
            raise ValueError("an identity skip needs a middle block with equal input and output widths")
        self.n_layers = len(widths) - 1
        self.first = first
        self.last = last
        self.skip = skip
        self.block_input = nn.Identity()
        for k in range(1, self.n_layers + 1):
            self.add_module(f"conv{k}", nn.Conv2d(widths[k - 1], widths[k], kernel_size=3, padding=1))
            if not (last and k == self.n_layers):
                self.add_module(f"relu{k}", nn.ReLU())

    def hidden_layer_names(self) -> list[str]:
        """The ReLU outputs in order, or ``["block_input"]`` for a block without ReLU."""
        relus = [f"relu{k}" for k in range(1, self.n_layers + 1) if hasattr(self, f"relu{k}")]
        return relus or ["block_input"]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        # Block 0 receives the bare image, which is both the network input to carry and the conv input.
        image, features = (state, state) if self.first else (state[:, :1], state[:, 1:])
        x = self.block_input(features)
        for k in range(1, self.n_layers + 1):
            x = getattr(self, f"conv{k}")(x)
            if self.skip and k == self.n_layers:
                x = x + features
            relu = getattr(self, f"relu{k}", None)
            if relu is not None:
                x = relu(x)
        return image + x if self.last else torch.cat((image, x), dim=1)


class FeatureChainModel(CascadeModel):
    """A CNN of ``n_layers`` convs of ``width`` hidden channels and a global residual, cut into ``n_blocks``
    cascades (no DF), with identity skips around the middle blocks if ``block_skips``; see the module docstring
    for the block split, the carried input and the hidden layers.

    ``forward(image, kspace, mask)`` returns ``image + net(image)`` ``(B, 1, H, W)``; ``kspace`` and ``mask`` are
    ignored. Parameters: ``10C + (L − 2)(9C² + C) + (9C + 1)`` (skips have none).
    """

    def __init__(self, n_layers: int, n_blocks: int, width: int, block_skips: bool = False):
        sizes = split_layers(n_layers, n_blocks)
        widths = [1] + [width] * (n_layers - 1) + [1]
        blocks, start = [], 0
        for b, size in enumerate(sizes):
            first, last = b == 0, b == n_blocks - 1
            blocks.append(FeatureChainBlock(widths[start:start + size + 1], first=first, last=last,
                                            skip=block_skips and not (first or last)))
            start += size
        super().__init__([Cascade(block, None) for block in blocks])
        self.n_layers = n_layers
        self.width = width
        he_initialise(self)


def he_initialise(model: nn.Module) -> None:
    """He et al. 2015 normal initialisation of every conv (fan-in, ReLU gain), zero biases: VDSR's own choice.

    PyTorch's default conv initialisation shrinks activations by about √6 per ReLU layer, so through a deep chain the
    residual branch starts at ~0; He initialisation keeps the activation scale through depth.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)


class ResidualCNN(FeatureChainModel):
    """``rcnnL``: the feature-domain SFT ablation network, ``L`` convs of ``width`` channels (paper: 32) in
    :data:`RCNN_BLOCKS` = 5 blocks (rcnn25: 5 × 5 convs, 213,313 parameters; rcnn15: 5 × 3, 120,833), blocks 1-3
    ResNet units (identity skips), with the global residual to the zero-filled input."""

    def __init__(self, n_layers: int, width: int = 32):
        super().__init__(n_layers, RCNN_BLOCKS, width, block_skips=True)
        self.arch = f"rcnn{n_layers}"
