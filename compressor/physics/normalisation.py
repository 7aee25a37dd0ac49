r"""The input normalisation, written once: training, evaluation, export and ``compress reconstruct`` all call it.

From undersampled k-space alone (at inference there is no target):

.. math:: x_u = F^{-1}(y), \qquad s = \max_{h, w} |x_u| \ (\ge 10^{-12}), \qquad
          (x_u / s,\ y / s,\ s)

* ``y``: undersampled k-space as a real-pair tensor ``(..., H, W, 2)`` (last dimension real, imaginary),
  **uncentred** (DC at ``(0, 0)``), orthonormal (``norm="ortho"``), in any units; already masked.
* ``F``: the Fourier operator, passed in (:class:`~compressor.physics.fft.FourierOperator`): training uses
  :class:`~compressor.physics.fft.TorchFFT` (the default), the exported graph
  :class:`~compressor.physics.fft.MatmulDFT`. Both give the same result to float32 rounding.
* ``x_u``: the zero-filled image as the model takes it (:func:`~compressor.physics.sampling.zero_filled`): for the
  paper's 1-channel models its **real part** (not its magnitude), as their data-fidelity layer keeps it; for
  2-channel models the complex image as (real, imag) channels.
* ``s``: one divisor per slice, the largest absolute value of ``x_u`` over ``H x W`` (the complex magnitude for 2
  channels), never below :data:`EPSILON` (an all-zero input stays finite). The normalised zero-filled image has
  ``max |x_u / s| = 1``; the same ``s`` divides the k-space (and, in training, the target), so multiplying a
  reconstruction by ``s`` returns it to the input's units. The 1-channel value is the one the committed runs used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from compressor.physics.fft import FourierOperator, channel_magnitude
from compressor.physics.sampling import zero_filled

EPSILON = 1e-12


class NormalisedInput(NamedTuple):
    """A model's input computed from undersampled k-space alone (:func:`normalise_kspace`).

    Attributes:
        zero_filled: ``x_u / s``: ``Re F^{-1}(y) / s`` ``(..., H, W)`` for 1 channel, the complex image as
            channels ``(..., 2, H, W)`` for 2; ``max |x_u / s| = 1``.
        kspace: ``y / s``, real-pair ``(..., H, W, 2)``, uncentred.
        scale: ``s = max |x_u|`` per slice, ``(...)`` (1 channel) or ``(..., 1)`` (2 channels, the channel
            dimension kept as the k-space's singleton one); multiply a reconstruction by it to undo.
    """

    zero_filled: torch.Tensor
    kspace: torch.Tensor
    scale: torch.Tensor


def normalisation_scale(zero_filled_image: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """``s = max |x_u|`` over the last two dimensions, never below :data:`EPSILON`.

    ``channels = 1``: ``(..., H, W) -> (...)``; ``channels = 2``: the complex magnitude of ``(..., 2, H, W)``,
    ``-> (..., 1)``.
    """
    magnitude = zero_filled_image.abs() if channels == 1 else channel_magnitude(zero_filled_image)
    return magnitude.amax(dim=(-2, -1)).clamp_min(EPSILON)


def normalise_kspace(kspace: torch.Tensor, fourier: FourierOperator | None = None,
                     channels: int = 1) -> NormalisedInput:
    """Zero-fill undersampled k-space and divide everything by the zero-filled image's max (module docstring).

    Args:
        kspace: ``y``, real-pair, uncentred, orthonormal convention, already masked: ``(..., H, W, 2)`` for 1
            channel, ``(..., 1, H, W, 2)`` for 2.
        fourier: the inverse transform's operator; ``None`` means :class:`~compressor.physics.fft.TorchFFT`.
        channels: the model's image channels (1 real, 2 complex).

    Returns:
        :class:`NormalisedInput` ``(x_u / s, y / s, s)`` with the shapes listed there.
    """
    image = zero_filled(kspace, fourier, channels)
    scale = normalisation_scale(image, channels)
    return NormalisedInput(image / scale[..., None, None], kspace / scale[..., None, None, None], scale)
