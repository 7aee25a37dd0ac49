"""A synthetic phase for magnitude images: a **simulation**, so that the complex path runs and is tested offline.

The embedded MNI template (and every images-only source) is a real magnitude image; its simulated k-space is Hermitian
and a real-valued model loses nothing on it. Measured k-space is not like that: coil sensitivities, B0 inhomogeneity
and the receive chain give every image a phase that varies smoothly in space and from slice to slice. Training and
scoring on k-space simulated from magnitude images is one of the "data crimes" of Shimron et al. (PNAS 2022).
``compress --phase synthetic`` multiplies each magnitude slice by ``exp(i φ)`` with

.. math:: φ(u, v) = φ_0 + s \\cdot \\frac{p(u, v) - \\min p}{\\max p - \\min p}, \\qquad
          p(u, v) = \\sum_{1 \\le a + b \\le 2} c_{ab} u^a v^b, \\quad u, v \\in [-1, 1]

a random global offset :math:`φ_0 \\sim U[0, 2π)` plus a random second-order polynomial (coefficients standard normal)
scaled to a peak-to-peak span :math:`s \\sim U[1.25π, 2π]` across the image, so the spatial variation always exceeds
π. Every draw is seeded by the volume name, the slice index and ``seed``: the same slice gets the same phase in every
run and every process, neighbouring slices different ones. It is not a model of any scanner's phase; measured data
(fastMRI, ISMRMRD, the authors' files) bring their own.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

MIN_SPAN = 1.25 * math.pi
MAX_SPAN = 2.0 * math.pi
POLYNOMIAL_TERMS = ((1, 0), (0, 1), (2, 0), (1, 1), (0, 2))
"""The exponents ``(a, b)`` of ``u^a v^b`` in the spatial part: every term of degree 1 and 2."""


def synthetic_phase(shape: tuple[int, int], volume: str, slice_index: int, seed: int = 0) -> np.ndarray:
    """The phase map ``φ`` ``(H, W)`` float64, in radians, of one slice (module docstring), deterministic in
    ``(volume, slice_index, seed)``; its spatial peak-to-peak span is in ``[1.25π, 2π]``."""
    rng = np.random.default_rng([zlib.crc32(volume.encode()), int(slice_index), int(seed) & 0xFFFFFFFF])
    offset = rng.uniform(0.0, 2.0 * math.pi)
    coefficients = rng.standard_normal(len(POLYNOMIAL_TERMS))
    span = rng.uniform(MIN_SPAN, MAX_SPAN)
    u = np.linspace(-1.0, 1.0, shape[0])[:, None]
    v = np.linspace(-1.0, 1.0, shape[1])[None, :]
    polynomial = sum(c * u**a * v**b for c, (a, b) in zip(coefficients, POLYNOMIAL_TERMS, strict=True))
    spread = np.ptp(polynomial)
    # A degenerate draw (all coefficients ~0) would leave no spatial variation: fall back to a linear ramp.
    normalised = (polynomial - polynomial.min()) / spread if spread > 1e-9 else (u + 1) / 2 + 0 * v
    return offset + span * normalised


def with_synthetic_phase(magnitude: np.ndarray, volume: str, slice_index: int, seed: int = 0) -> np.ndarray:
    """``|x| exp(i φ)`` as complex64 ``(H, W)`` for a real image ``(H, W)`` (its absolute value is used)."""
    phase = synthetic_phase(magnitude.shape[-2:], volume, slice_index, seed)
    return (np.abs(magnitude) * np.exp(1j * phase)).astype(np.complex64)
