r"""The input normalisation, written once: training, evaluation, export and ``compress reconstruct`` all call it.

From undersampled k-space alone (at inference there is no target):

.. math:: x_u = \mathrm{Re}\, F^{-1}(y), \qquad s = \max_{h, w} |x_u| \ (\ge 10^{-12}), \qquad
          (x_u / s,\ y / s,\ s)

* ``y``: undersampled k-space as a real-pair tensor ``(..., H, W, 2)`` (last dimension real, imaginary),
  **uncentred** (DC at ``(0, 0)``), orthonormal (``norm="ortho"``), in any units; already masked.
* ``F``: the Fourier operator, passed in (:class:`~compressor.physics.fft.FourierOperator`): training uses
  :class:`~compressor.physics.fft.TorchFFT` (the default), the exported graph
  :class:`~compressor.physics.fft.MatmulDFT`. Both give the same result to float32 rounding.
* ``x_u``: the **real part** of the zero-filled image (not its magnitude), as the data-fidelity layer keeps it:
  the models are real-valued, one image channel.
* ``s``: one divisor per slice, the largest absolute value of ``x_u`` over ``H x W``, never below
  :data:`EPSILON` (an all-zero input stays finite). The normalised zero-filled image lies in ``[-1, 1]`` with
  ``max |x_u / s| = 1``; the same ``s`` divides the k-space (and, in training, the target), so multiplying a
  reconstruction by ``s`` returns it to the input's units.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from compressor.physics.fft import FourierOperator
from compressor.physics.sampling import zero_filled

EPSILON = 1e-12


class NormalisedInput(NamedTuple):
    """A model's input computed from undersampled k-space alone (:func:`normalise_kspace`).

    Attributes:
        zero_filled: ``Re F^{-1}(y) / s``, real, ``(..., H, W)``, in ``[-1, 1]``.
        kspace: ``y / s``, real-pair ``(..., H, W, 2)``, uncentred.
        scale: ``s = max |Re F^{-1}(y)|`` per slice, ``(...)``; multiply a reconstruction by it to undo.
    """

    zero_filled: torch.Tensor
    kspace: torch.Tensor
    scale: torch.Tensor


def normalisation_scale(zero_filled_image: torch.Tensor) -> torch.Tensor:
    """``s = max |x_u|`` over the last two dimensions, ``(..., H, W) -> (...)``, never below :data:`EPSILON`."""
    return zero_filled_image.abs().amax(dim=(-2, -1)).clamp_min(EPSILON)


def normalise_kspace(kspace: torch.Tensor, fourier: FourierOperator | None = None) -> NormalisedInput:
    """Zero-fill undersampled k-space and divide everything by the zero-filled image's max (module docstring).

    Args:
        kspace: ``y``, real-pair ``(..., H, W, 2)``, uncentred, orthonormal convention, already masked.
        fourier: the inverse transform's operator; ``None`` means :class:`~compressor.physics.fft.TorchFFT`.

    Returns:
        :class:`NormalisedInput` ``(x_u / s (..., H, W), y / s (..., H, W, 2), s (...))``.
    """
    image = zero_filled(kspace, fourier)
    scale = normalisation_scale(image)
    return NormalisedInput(image / scale[..., None, None], kspace / scale[..., None, None, None], scale)
