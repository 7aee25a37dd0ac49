"""VDSR (Kim et al. 2016) for the super-resolution task of Appendix B: ``vdsrN`` = N 3×3 convs of 64 channels.

``conv(1→64), ReLU, (N−2) × [conv(64→64), ReLU], conv(64→1)`` with the global residual
``output = input + net(input)``, where the input is the low-resolution image interpolated back to the
high-resolution grid (:func:`compressor.physics.degradation.degrade`). No data fidelity. Teacher vdsr12
(370,497 parameters), student vdsr4 (75,073).

For SFT both are cut into :data:`VDSR_BLOCKS` = 4 blocks (vdsr12: 4 × 3 convs; vdsr4: 4 × 1 conv), the most
that vdsr4 allows (each of its convs is one block), which gives three student branches. The block network, the
feature state passed between blocks (input image carried in channel 0, so a branch started at block ``i > 0``
still adds the global residual), and the hidden layers are those of
:class:`~compressor.models.feature_chain.FeatureChainModel`. Paired layers
(middle ReLU of each block): vdsr12 block ``i < 3`` → ``relu2`` of 3, block 3 → ``relu2`` of 2; vdsr4 blocks 0–2
→ their only ``relu1``, block 3 (the final conv alone) → ``block_input``, the features entering it (block 2's
``relu1``, the network's third ReLU). All are 64-channel ``H × W`` maps, so every feature KD loss applies without
an adapter once built for 64 → 64 channels.
"""

from __future__ import annotations

from compressor.models.feature_chain import FeatureChainModel

VDSR_WIDTH = 64
VDSR_BLOCKS = 4


class VDSR(FeatureChainModel):
    """``vdsrN`` (``N ≥`` :data:`VDSR_BLOCKS`): ``N`` convs of :data:`VDSR_WIDTH` channels, cut into :data:`VDSR_BLOCKS`
    cascades. Parameters: ``640 + (N − 2) · 36,928 + 577``. ``forward(image, kspace, mask)`` ignores ``kspace``
    and ``mask``."""

    def __init__(self, n_layers: int):
        super().__init__(n_layers, VDSR_BLOCKS, VDSR_WIDTH)
        self.arch = f"vdsr{n_layers}"
