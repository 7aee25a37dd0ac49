r"""The data-fidelity layer for masks of whole lines, in image space: no 2-D Fourier transform at all.

A mask made of whole lines along one axis (every mask of this project) samples a line pattern :math:`m` along the
phase-encode axis and everything along the other. With :math:`F = F_r + i F_i` the orthonormal, uncentred,
symmetric DFT matrix along the phase-encode axis (:func:`~compressor.physics.fft.dft_matrix`) and
:math:`D = \operatorname{diag}(m)`,

.. math:: P = F^H D F = P_r + i P_i, \qquad P_r = F_r D F_r + F_i D F_i, \qquad P_i = F_r D F_i - F_i D F_r

is the projection onto the sampled lines: :math:`P_r` is symmetric, :math:`P_i` antisymmetric, so :math:`P` is
Hermitian (not symmetric once its imaginary part is kept). Because the 2-D transform factorises along the two axes,
:math:`F_2^{-1} M F_2 z` is :math:`P` applied along the phase-encode axis, and eq. (2) of the paper (see
:mod:`compressor.physics.data_fidelity`), with :math:`w = \lambda / (1 + \lambda)` (:math:`w = 1` for
:math:`\lambda \to \infty`) and the zero-filled image :math:`x_u = F_2^{-1}(M y)`, becomes

.. math:: F_2^{-1}\big((1 - wM) F_2 z + w M y\big) = z + w\,(x_u - \mathrm{Proj}(z)).

Shapes and conventions (those of :mod:`compressor.physics`): images ``(B, C, H, W)``, ``C = 1`` a real image,
``C = 2`` the complex image as (real, imag) channels; ``axis = -1`` when the mask samples whole columns (the line
pattern runs along ``W``), ``-2`` for whole rows. For a real image (``C = 1``) only :math:`P_r` matters: the real part
of the inverse transform is kept, as the paper's models do, and :math:`\mathrm{Re}(P z) = P_r z`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LineProjection(NamedTuple):
    """``P = F^H diag(m) F = real + i imag``, both ``(N, N)``: ``real`` symmetric, ``imag`` antisymmetric."""

    real: Tensor
    imag: Tensor


def line_projection(lines: Tensor, dft_real: Tensor, dft_imag: Tensor) -> LineProjection:
    """``P = F^H diag(m) F`` for a line pattern ``m`` ``(N,)`` and the orthonormal, symmetric DFT matrix
    ``F = dft_real + i dft_imag`` ``(N, N)`` (module docstring); for a signal ``v`` along the axis,
    ``P v = F^{-1}(m ⊙ F v)``."""
    weighted_real = lines[:, None] * dft_real  # D F_r
    weighted_imag = lines[:, None] * dft_imag  # D F_i
    # F^H = conj(F) because F is symmetric: (F_r - i F_i) D (F_r + i F_i).
    return LineProjection(dft_real @ weighted_real + dft_imag @ weighted_imag,
                          dft_real @ weighted_imag - dft_imag @ weighted_real)


def _along_axis(matrix: Tensor, image: Tensor, axis: int) -> Tensor:
    """A real matrix applied along ``axis`` of a real image: ``image @ matrix`` (``-1``, each row a row vector) or
    ``matrix @ image`` (``-2``, each column a column vector)."""
    return image @ matrix if axis == -1 else matrix @ image


def project_lines(image: Tensor, projection: LineProjection, axis: int) -> Tensor:
    """``Proj(z)``: ``P`` applied along ``axis`` of ``image`` ``(B, C, H, W)`` (module docstring).

    ``C = 1``: ``Re(P z) = z P_r`` (``axis = -1``; ``P_r`` is symmetric) or ``P_r z`` (``axis = -2``).
    ``C = 2``, ``z = z_r + i z_i``: ``axis = -2`` gives ``P z``; ``axis = -1`` applies ``P`` to every row, which as a
    right product is ``z P^T = z conj(P)`` (``P`` is Hermitian), i.e. the matrix ``P_r - i P_i``.
    """
    if image.shape[-3] == 1:
        return _along_axis(projection.real, image, axis)
    real, imag = projection.real, (-projection.imag if axis == -1 else projection.imag)
    image_real, image_imag = image[..., :1, :, :], image[..., 1:, :, :]
    # (M_r + i M_i)(z_r + i z_i) expanded with real matrices: the same expansion whichever side M acts from.
    projected_real = _along_axis(real, image_real, axis) - _along_axis(imag, image_imag, axis)
    projected_imag = _along_axis(real, image_imag, axis) + _along_axis(imag, image_real, axis)
    return torch.cat((projected_real, projected_imag), dim=-3)


def line_data_fidelity(
    image: Tensor,
    zero_filled_image: Tensor,
    projection: LineProjection,
    axis: int,
    dc_weight: Tensor | None = None,
) -> Tensor:
    """Eq. (2) of the paper for a whole-line mask, in image space: ``z + w (x_u - Proj(z))``.

    Args:
        image: CNN output ``z``, ``(B, C, H, W)``: real (``C = 1``) or (real, imag) (``C = 2``).
        zero_filled_image: ``x_u = F^{-1}(M y)`` as the model takes it (its real part for ``C = 1``), ``(B, C, H, W)``,
            same units as ``image``.
        projection: ``P`` from :func:`line_projection`, ``(W, W)`` for ``axis = -1``, ``(H, H)`` for ``axis = -2``.
        axis: ``-1`` when the mask samples whole columns (lines along ``W``), ``-2`` for whole rows.
        dc_weight: ``λ``; ``None`` means ``λ → ∞`` (the paper's models), giving ``x_u + z - Proj(z)``.

    Returns:
        The corrected image, ``(B, C, H, W)``.
    """
    correction = zero_filled_image - project_lines(image, projection, axis)
    if dc_weight is None:
        return image + correction
    return image + (dc_weight / (1.0 + dc_weight)) * correction
