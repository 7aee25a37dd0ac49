"""The super-resolution degradation: k-space truncation to the LR grid, interpolation back to the HR grid.

Oracles are analytic: a trigonometric polynomial whose frequencies all lie inside the kept band is evaluated in
closed form at the HR pixels and at the LR sample positions (HR block centres ``s·m + (s − 1)/2``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.errors import InputError
from compressor.physics.degradation import bicubic_interpolate, degrade, sinc_interpolate, truncate_kspace

BICUBIC_TOLERANCE = 0.015
"""Largest interior error (``s`` pixels from the border) of the bicubic path on :func:`smooth` (amplitude 0.3)
at scale 4 and 64 × 64; a half-pixel misplacement of the LR samples gives 0.05."""


def band_limited(y: np.ndarray, x: np.ndarray, size: tuple[int, int], top: int) -> np.ndarray:
    """A real image with frequencies ``(±1, ±2)`` and ``(±top, 0)`` cycles per field of view, at coordinates
    ``(y, x)`` in HR pixels; inside the band of an ``h``-row LR grid when ``top < h / 2``."""
    height, width = size
    return (0.5 + 0.3 * np.cos(2 * np.pi * y / height + 0.3) * np.sin(4 * np.pi * x / width + 1.0)
            + 0.1 * np.cos(2 * np.pi * top * y / height + 0.7))


def _grid(n_y: int, n_x: int, step: float = 1.0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(n_y)[:, None] * step + offset), (np.arange(n_x)[None, :] * step + offset)


def _image(size: tuple[int, int], top: int) -> torch.Tensor:
    return torch.from_numpy(band_limited(*_grid(*size), size, top)).float()


def smooth(size: tuple[int, int]) -> torch.Tensor:
    """One cycle per field of view in each direction."""
    height, width = size
    y, x = _grid(height, width)
    return torch.from_numpy(0.5 + 0.3 * np.cos(2 * np.pi * y / height + 0.3) * np.sin(2 * np.pi * x / width + 1.0)
                            ).float()


# HR sizes and scales: LR grids even and odd in each direction.
CASES = [((64, 64), 4), ((60, 72), 4), ((45, 54), 3), ((16, 18), 2), ((28, 20), 4)]


@pytest.mark.parametrize("size, scale", CASES)
def test_lr_pixels_sample_the_band_limited_image_at_hr_block_centres(size, scale):
    low = (size[0] // scale, size[1] // scale)
    top = (min(low) - 1) // 2
    lr = truncate_kspace(_image(size, top), scale)
    expected = band_limited(*_grid(*low, step=scale, offset=(scale - 1) / 2), size, top)
    assert lr.shape == low
    np.testing.assert_allclose(lr.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("size, scale", CASES)
def test_band_limited_image_survives_truncation_and_zero_padded_interpolation(size, scale):
    top = (min(size[0] // scale, size[1] // scale) - 1) // 2
    image = _image(size, top)
    torch.testing.assert_close(degrade(image, scale, interpolation="sinc"), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(sinc_interpolate(truncate_kspace(image, scale), scale), image, atol=1e-5, rtol=0)


def test_frequencies_outside_the_band_are_removed():
    height, width, scale = 32, 32, 4
    y, x = _grid(height, width)
    outside = torch.from_numpy(np.cos(2 * np.pi * 5 * y / height) + np.sin(2 * np.pi * 9 * x / width)).float()
    assert truncate_kspace(outside, scale).abs().max() < 1e-5  # the band keeps |k| <= 4 of 32


def test_bicubic_path_reproduces_a_smooth_image_up_to_interpolation_error():
    image, scale = smooth((64, 64)), 4
    error = (degrade(image, scale) - image).abs()
    assert error[scale:-scale, scale:-scale].max() < BICUBIC_TOLERANCE
    assert error.mean() < 0.005
    assert torch.equal(degrade(image, scale), bicubic_interpolate(truncate_kspace(image, scale), scale))


def test_mean_and_constants_are_preserved():
    torch.manual_seed(0)
    image = torch.rand(3, 1, 24, 36)
    lr = truncate_kspace(image, 4)
    torch.testing.assert_close(lr.mean(dim=(-2, -1)), image.mean(dim=(-2, -1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(degrade(image, 4, "sinc").mean(dim=(-2, -1)), image.mean(dim=(-2, -1)),
                               atol=1e-6, rtol=0)
    constant = torch.full((12, 15), 0.7)
    torch.testing.assert_close(truncate_kspace(constant, 3), torch.full((4, 5), 0.7))
    torch.testing.assert_close(degrade(constant, 3), constant)


@pytest.mark.parametrize("interpolation", ["bicubic", "sinc"])
def test_shapes_keep_leading_dimensions(interpolation):
    image = torch.rand(2, 1, 16, 24)
    assert truncate_kspace(image, 4).shape == (2, 1, 4, 6)
    assert degrade(image, 4, interpolation).shape == image.shape
    assert degrade(image[0, 0], 2, interpolation).shape == (16, 24)


def test_scale_one_changes_nothing():
    image = torch.rand(1, 1, 9, 10)
    torch.testing.assert_close(truncate_kspace(image, 1), image, atol=1e-6, rtol=0)
    torch.testing.assert_close(degrade(image, 1), image, atol=1e-6, rtol=0)


def test_scale_not_dividing_the_size_is_an_input_error():
    with pytest.raises(InputError, match=r"scale 3 does not divide the image size 16x18"):
        degrade(torch.rand(1, 1, 16, 18), 3)
    with pytest.raises(InputError, match=r"scale 4 does not divide the image size 16x18"):
        truncate_kspace(torch.rand(16, 18), 4)


@pytest.mark.parametrize("scale", [0, -2, 2.0, True])
def test_scale_must_be_a_positive_integer(scale):
    with pytest.raises(InputError, match="positive integer"):
        degrade(torch.rand(8, 8), scale)


def test_unknown_interpolation_lists_the_valid_ones():
    with pytest.raises(InputError, match="bicubic, sinc"):
        degrade(torch.rand(8, 8), 2, interpolation="nearest")


def test_truncation_matches_a_numpy_oracle_of_the_centred_band():
    # NumPy: keep the central h × w block of the centred spectrum, scale by 1/s, shift by c = (s−1)/2 − o per axis.
    rng = np.random.default_rng(0)
    image = rng.random((20, 15))
    scale, (low_h, low_w) = 5, (4, 3)
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    band = spectrum[10 - 2:10 - 2 + low_h, 7 - 1:7 - 1 + low_w] / scale
    for axis, (size, low) in enumerate(((20, low_h), (15, low_w))):
        shift = (scale - 1) / 2 - (size // 2 - scale * (low // 2))
        k = np.arange(low) - low // 2
        band = band * np.expand_dims(np.exp(2j * np.pi * k * shift / size), 1 - axis)
    expected = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(band), norm="ortho")).real
    np.testing.assert_allclose(truncate_kspace(torch.from_numpy(image).float(), scale).numpy(), expected, atol=1e-5)
    assert math.isclose(expected.mean(), image.mean(), abs_tol=1e-9)
