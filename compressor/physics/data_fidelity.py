r"""The k-space data-fidelity (DF) layer of eq. (2) of the paper.

.. math::

    \hat X_{rec}(k) = \begin{cases} \hat X_{cnn}(k) & k \notin \Omega \\
        \frac{\hat X_{cnn}(k) + \lambda \hat X_u(k)}{1 + \lambda} & k \in \Omega \end{cases},
    \qquad x_{rec} = F^{-1}(\hat X_{rec})

With :math:`\lambda \to \infty` (the paper's models) the sampled k-space is replaced by the measurement and the
CNN's k-space is kept elsewhere. A finite :math:`\lambda`, fixed or learnable, blends the two on :math:`\Omega`;
:math:`\lambda` is a weight on the *measurement* so larger means more trust in the data.

The image's channel count says what it is (:func:`~compressor.physics.fft.channels_to_pair`): a 1-channel image is
real, and the real part of the inverse transform is kept (the paper's models, as in the authors' code); a 2-channel
image is the complex image (real, imaginary), and eq. (2) acts on it as written, nothing discarded.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.physics.fft import FourierOperator, channels_to_pair, pair_to_channels


def data_fidelity_kspace(
    image: torch.Tensor,
    measured_kspace: torch.Tensor,
    mask: torch.Tensor,
    fourier: FourierOperator,
    dc_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2) in k-space: the corrected k-space ``(B, 1, H, W, 2)`` before the inverse transform.

    Args:
        image: CNN output ``x_cnn``, ``(B, C, H, W)``: real (``C = 1``) or (real, imag) (``C = 2``).
        measured_kspace: undersampled k-space ``y = M ⊙ F(x)``, uncentred, ``(B, 1, H, W, 2)``.
        mask: sampling mask ``M`` (0/1), uncentred, ``(B or 1, 1, H, W)``.
        fourier: the Fourier operator (uncentred, orthonormal).
        dc_weight: ``λ``; ``None`` means ``λ → ∞`` (hard replacement).
    """
    predicted = fourier.forward(channels_to_pair(image))
    sampled = mask.unsqueeze(-1)
    if dc_weight is None:
        return predicted + sampled * (measured_kspace - predicted)
    return predicted + sampled * (dc_weight / (1.0 + dc_weight)) * (measured_kspace - predicted)


def data_fidelity(
    image: torch.Tensor,
    measured_kspace: torch.Tensor,
    mask: torch.Tensor,
    fourier: FourierOperator,
    dc_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2) followed by ``F^{-1}``: an image of ``image``'s channels ``(B, C, H, W)`` (``C = 1`` keeps the real
    part). Arguments as :func:`data_fidelity_kspace`."""
    kspace = data_fidelity_kspace(image, measured_kspace, mask, fourier, dc_weight)
    return pair_to_channels(fourier.backward(kspace), image.shape[-3])


class DataFidelity(nn.Module):
    """DF layer with ``λ → ∞`` (``dc_lambda=None``, no parameter: the paper's models) or a finite ``λ``.

    A finite ``λ`` is either fixed (a buffer) or learnable (one parameter per layer, stored as
    ``log λ`` so it stays positive). The Fourier operator is passed to :meth:`forward`, not owned, so that export
    can swap it without touching the model.
    """

    def __init__(self, dc_lambda: float | None = None, learnable: bool = False):
        super().__init__()
        if dc_lambda is None and learnable:
            raise ValueError("a learnable data-fidelity weight needs a finite initial dc_lambda")
        if dc_lambda is not None and dc_lambda <= 0:
            raise ValueError(f"dc_lambda must be positive, got {dc_lambda}")
        self.learnable = learnable
        self.log_lambda: torch.Tensor | None
        if dc_lambda is None:
            self.log_lambda = None
        elif learnable:
            self.log_lambda = nn.Parameter(torch.tensor(float(dc_lambda)).log())
        else:
            self.register_buffer("log_lambda", torch.tensor(float(dc_lambda)).log())

    @property
    def dc_weight(self) -> torch.Tensor | None:
        return None if self.log_lambda is None else self.log_lambda.exp()

    def forward(
        self, image: torch.Tensor, measured_kspace: torch.Tensor, mask: torch.Tensor, fourier: FourierOperator
    ) -> torch.Tensor:
        return data_fidelity(image, measured_kspace, mask, fourier, self.dc_weight)

    def extra_repr(self) -> str:
        if self.log_lambda is None:
            return "lambda=inf"
        return f"lambda={self.dc_weight.item():.4g}, learnable={self.learnable}"
