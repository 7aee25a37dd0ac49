"""Coil compression of multi-coil images to one virtual coil (SVD), and the root-sum-of-squares reference.

The 2-channel (complex) models take one complex image per slice, while multi-coil k-space (fastMRI multi-coil:
``(C, H, W)`` per slice) has one image per receive coil. The coils are compressed to the single virtual coil that
keeps the most energy (Buehrer et al., MRM 2007; Huang et al., MRI 2008):

* stack the ``C`` coil images as the rows of a ``(C, N)`` matrix ``X`` (``N = H * W`` pixels);
* take ``u``, the first left singular vector of ``X`` (unit norm, ``(C,)``): the coil combination of largest energy.
  It is computed as the eigenvector of the largest eigenvalue of the ``(C, C)`` Gram matrix ``X X^H`` (whose
  eigenvalues are the squared singular values ``s_i^2``): the same vector, at ``O(C^2 N)`` instead of an SVD of the
  ``(C, N)`` matrix (it runs per slice on the server's critical path);
* the virtual image is ``u^H X`` reshaped to ``(H, W)``; it keeps ``s_1^2 / sum_i s_i^2 = ||u^H X||^2 / ||X||^2``
  of the energy (:func:`kept_energy_fraction`), all of it when the coil images are rank 1 (every coil sees the same
  image times a constant).

A singular vector is defined only up to a complex factor of modulus 1, and that factor multiplies the virtual image's
phase. It is fixed so that **the entry of u of largest magnitude is real and positive** (the first such entry on a
tie): then the virtual image's phase follows the coil that sees the slice best, and it does not change from run to run
or platform to platform with the SVD routine's arbitrary choice.

Compression is linear in the coil images, so it commutes with the Fourier transform: compressing coil images and
transforming the virtual image gives the same k-space as compressing the coils' k-space with the same ``u``.

All functions take coil images ``(C, H, W)`` complex (any complex or real dtype; computed in double precision).
"""

from __future__ import annotations

import numpy as np


def _coil_matrix(coil_images: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` coil images as the ``(C, H * W)`` complex128 matrix ``X`` (one coil per row)."""
    images = np.asarray(coil_images)
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"coil images must be (C, H, W) with C >= 1, got shape {images.shape}")
    return images.reshape(images.shape[0], -1).astype(np.complex128)


def _gram_eigen(coil_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(C,)`` (ascending, the squared singular values of the coil matrix ``X``) and eigenvectors
    ``(C, C)`` (columns, unit norm) of the Hermitian Gram matrix ``X X^H`` of coil images ``(C, H, W)``."""
    matrix = _coil_matrix(coil_images)
    return np.linalg.eigh(matrix @ matrix.conj().T)


def principal_coil_vector(coil_images: np.ndarray) -> np.ndarray:
    """``u`` ``(C,)`` complex128: the first left singular vector of the ``(C, H * W)`` coil matrix (the Gram
    matrix's leading eigenvector), unit norm, its phase fixed so that its largest-magnitude entry is real and positive
    (module docstring)."""
    _, vectors = _gram_eigen(coil_images)
    u = vectors[:, -1]
    largest = u[np.argmax(np.abs(u))]
    return u * (np.conj(largest) / np.abs(largest))


def virtual_coil(coil_images: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """The virtual coil image ``u^H X`` ``(H, W)`` complex64 of coil images ``(C, H, W)``; ``u`` ``(C,)`` defaults to
    :func:`principal_coil_vector` of the same images."""
    if u is None:
        u = principal_coil_vector(coil_images)
    matrix = _coil_matrix(coil_images)
    return (np.conj(u) @ matrix).reshape(np.shape(coil_images)[1:]).astype(np.complex64)


def masked_virtual_coil(coil_kspace: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2-channel models' single-coil input from multi-coil k-space, as the server forms it: ``(virtual, u)``.

    ``coil_kspace`` ``(C, H, W)`` (uncentred, prewhitened) times ``mask`` ``(H, W)`` 0/1; ``u`` ``(C,)`` is
    :func:`principal_coil_vector` of that **masked** k-space (compression commutes with the Fourier transform and the
    Gram matrix is the same in either domain, so nothing outside the mask changes the input); ``virtual`` ``(H, W)``
    complex64 is ``u^H`` of the masked k-space, zero outside the mask. Shared by
    :func:`~compressor.export.scanner.raw_input.prepare_slice` and :mod:`compressor.data.coil_simulation`.
    """
    masked = np.asarray(coil_kspace) * mask
    u = principal_coil_vector(masked)
    return virtual_coil(masked, u), u


def root_sum_of_squares(coil_images: np.ndarray) -> np.ndarray:
    """``sqrt(sum_c |X_c|^2)`` ``(H, W)`` float32 of coil images ``(C, H, W)``: the usual magnitude reference of
    multi-coil data (fastMRI's ``reconstruction_rss``), phase-free."""
    matrix = _coil_matrix(coil_images)
    energy = np.sum(matrix.real ** 2 + matrix.imag ** 2, axis=0)
    return np.sqrt(energy).reshape(np.shape(coil_images)[1:]).astype(np.float32)


def kept_energy_fraction(coil_images: np.ndarray) -> float:
    """``||u^H X||^2 / ||X||^2`` in ``[0, 1]`` for coil images ``(C, H, W)``: the share of the coils' energy the
    virtual coil keeps (1 for rank-1 coil images; 1 for all-zero images, which lose nothing)."""
    energies = np.clip(_gram_eigen(coil_images)[0], 0.0, None)  # s_i^2; rounding can leave tiny negatives
    total = float(np.sum(energies))
    return 1.0 if total == 0 else float(energies[-1] / total)
