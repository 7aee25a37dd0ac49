"""The interface every reconstruction model offers to training, distillation and export.

A :class:`CascadeModel` is a chain of cascades; cascade ``i`` is a CNN block followed by a data-fidelity (DF)
layer (identity for tasks without k-space). Later stages need three things, exposed by name rather than by
tuple position:

* :meth:`CascadeModel.run_cascades`: run cascades ``start .. stop-1`` from a given image (SFT student branches
  start from a teacher cascade's output);
* :class:`ReconOutput`: the final image, each block's output before DF and each cascade's output after DF;
* :meth:`CascadeModel.hidden_layers` / :meth:`CascadeModel.distillation_layer`: module paths of the hidden
  activations, read through forward hooks (:class:`compressor.models.features.FeatureRecorder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.physics.data_fidelity import DataFidelity
from compressor.physics.fft import FourierOperator, TorchFFT


@dataclass
class ReconOutput:
    """What a (partial) forward pass produced.

    Attributes:
        image: the last cascade's output, ``(B, C, H, W)`` (``C``: the model's ``image_channels``).
        block_outputs: per cascade run, the CNN block's output before DF, ``(B, C, H, W)`` each.
        cascade_outputs: per cascade run, the output after DF, ``(B, C, H, W)`` each.
    """

    image: torch.Tensor
    block_outputs: list[torch.Tensor] = field(default_factory=list)
    cascade_outputs: list[torch.Tensor] = field(default_factory=list)


class Cascade(nn.Module):
    """One CNN block followed by a DF layer (``None`` for tasks without k-space)."""

    def __init__(self, block: nn.Module, data_fidelity: DataFidelity | None):
        super().__init__()
        self.block = block
        self.data_fidelity = data_fidelity

    def forward(
        self, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, fourier: FourierOperator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(block output, cascade output)``."""
        block_output = self.block(image)
        if self.data_fidelity is None:
            return block_output, block_output
        return block_output, self.data_fidelity(block_output, kspace, mask, fourier)


def data_fidelity_cascades(blocks: list[nn.Module], dc_lambda: float | None = None,
                           dc_learnable: bool = False) -> list[Cascade]:
    """One :class:`Cascade` per block, each block followed by its own DF layer (eq. 2)."""
    return [Cascade(block, DataFidelity(dc_lambda, dc_learnable)) for block in blocks]


class CascadeModel(nn.Module):
    """A chain of :class:`Cascade` modules sharing one Fourier operator (``self.fourier``, swappable).

    Subclasses set ``arch`` (the name it was built from) and ``width`` (the hidden width: the channel count of every
    :meth:`distillation_layer` activation, which sizes the KD losses' adapters); ``image_channels`` is the channel
    count of the images they take and return (1: real, the default; 2: complex as real and imaginary parts).
    """

    arch: str
    width: int
    image_channels: int = 1

    def __init__(self, cascades: list[Cascade], fourier: FourierOperator | None = None):
        super().__init__()
        self.cascades = nn.ModuleList(cascades)
        self.fourier = fourier if fourier is not None else TorchFFT()

    @property
    def n_cascades(self) -> int:
        return len(self.cascades)

    @property
    def has_data_fidelity(self) -> bool:
        """Every cascade ends in a DF layer (DC-CNN, DC-UNet); ``False`` for the image-to-image networks."""
        return all(cascade.data_fidelity is not None for cascade in self.cascades)

    def run_cascades(
        self,
        image: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
    ) -> ReconOutput:
        """Run cascades ``start .. stop - 1`` (0-based) from ``image``.

        Args:
            image: input of cascade ``start``, ``(B, C, H, W)`` (the zero-filled image when ``start == 0``).
            kspace: measured undersampled k-space, uncentred, ``(B, 1, H, W, 2)``.
            mask: sampling mask, uncentred, ``(B or 1, 1, H, W)``.
        """
        stop = self.n_cascades if stop is None else stop
        if not 0 <= start <= stop <= self.n_cascades:
            raise ValueError(f"cascade range {start}..{stop} outside 0..{self.n_cascades}")
        output = ReconOutput(image=image)
        for cascade in self.cascades[start:stop]:
            block_output, image = cascade(image, kspace, mask, self.fourier)
            output.block_outputs.append(block_output)
            output.cascade_outputs.append(image)
        output.image = image
        return output

    def forward(self, zero_filled: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full reconstruction ``(B, C, H, W)`` from the zero-filled image, k-space and mask."""
        return self.run_cascades(zero_filled, kspace, mask).image

    def hidden_layers(self, cascade: int) -> list[str]:
        """Module paths (as in ``named_modules``) of cascade ``cascade``'s hidden activations, in order: the
        names its block lists in ``hidden_layer_names()``."""
        block = self.cascades[cascade].block
        return [f"cascades.{cascade}.block.{name}" for name in block.hidden_layer_names()]

    def distillation_layer(self, cascade: int) -> str:
        """The hidden activation paired across teacher and student for feature KD: the middle one.

        For a block of ``N`` convs the hidden activations are the ReLU outputs ``relu1 .. relu(N-1)``; the pair
        rule takes ``relu⌈N/2⌉`` (d5: relu3, d3: relu2, d2: relu1), which is what the authors' AT pairs
        (teacher's 3rd conv of 5 with the student's 2nd of 3) and works for any depth.
        """
        layers = self.hidden_layers(cascade)
        return layers[len(layers) // 2]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
