"""Metrics: scikit-image / sewar / NumPy oracles, the paper's data-range convention, degradation with noise."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.ndimage import gaussian_laplace
from sewar.full_ref import vifp
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from compressor.errors import InputError
from compressor.evaluate.metrics import METRICS, hfn, nmse, psnr, slice_metrics, ssim, vif

NOISE_LEVELS = (0.01, 0.03, 0.1, 0.3)


def random_slices(shape: tuple[int, ...] = (3, 45, 52), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random targets (odd, non-square) and a noisy reconstruction of them."""
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    return target + 0.1 * rng.standard_normal(shape), target


def phantom_slices(count: int = 3, size: int = 64, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """A real-looking MR-like slice (Shepp-Logan with a smooth bias field) at several intensities, plus noise."""
    phantom = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    bias = np.linspace(0.8, 1.2, size)[None, :]
    target = np.stack([(index + 1) * 100.0 * phantom * bias for index in range(count)])
    rng = np.random.default_rng(1)
    return target + noise * target.max() * rng.standard_normal(target.shape), target


def per_slice(oracle, reconstruction: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([oracle(r, t) for r, t in zip(reconstruction, target)])


@pytest.mark.parametrize("images", [random_slices(), phantom_slices()], ids=["random", "phantom"])
def test_psnr_equals_scikit_image_with_target_slice_max(images):
    reconstruction, target = images
    expected = per_slice(lambda r, t: peak_signal_noise_ratio(t, r, data_range=t.max()), reconstruction, target)
    np.testing.assert_allclose(psnr(reconstruction, target), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("images", [random_slices(), phantom_slices()], ids=["random", "phantom"])
def test_ssim_equals_scikit_image_default_2d(images):
    reconstruction, target = images
    expected = per_slice(lambda r, t: structural_similarity(t, r, data_range=t.max()), reconstruction, target)
    np.testing.assert_allclose(ssim(reconstruction, target), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("images", [random_slices(), phantom_slices()], ids=["random", "phantom"])
def test_authors_ssim_is_scikit_image_with_columns_as_channels(images):
    # The authors called structural_similarity(..., multichannel=True) on 2-D slices: channel_axis=-1 today.
    reconstruction, target = images
    expected = per_slice(
        lambda r, t: structural_similarity(t, r, data_range=t.max(), channel_axis=-1), reconstruction, target
    )
    np.testing.assert_allclose(ssim(reconstruction, target, convention="authors"), expected, rtol=0, atol=1e-6)


def test_authors_ssim_differs_from_standard_ssim_on_a_noisy_phantom():
    reconstruction, target = phantom_slices(count=1)
    assert ssim(reconstruction, target, convention="authors") < ssim(reconstruction, target) - 0.01


def test_float32_slices_match_scikit_image_in_float32():
    reconstruction, target = (image.astype(np.float32) for image in random_slices())
    expected = per_slice(lambda r, t: structural_similarity(t, r, data_range=float(t.max())), reconstruction, target)
    np.testing.assert_allclose(ssim(reconstruction, target), expected, rtol=0, atol=1e-6)


def test_explicit_data_range_overrides_the_target_max():
    reconstruction, target = random_slices()
    assert psnr(reconstruction[0], target[0], data_range=2.0) == pytest.approx(
        peak_signal_noise_ratio(target[0], reconstruction[0], data_range=2.0), abs=1e-9
    )
    assert ssim(reconstruction[0], target[0], data_range=2.0) == pytest.approx(
        structural_similarity(target[0], reconstruction[0], data_range=2.0), abs=1e-9
    )


def test_vif_equals_sewar_vifp_on_images_scaled_to_grey_levels():
    # Tolerance 1e-9 relative: the same arithmetic, only the order of the separable filtering differs.
    reconstruction, target = phantom_slices(size=72)
    grey_levels = 255.0 / target.max(axis=(1, 2))
    expected = np.array([vifp(t * g, r * g) for r, t, g in zip(reconstruction, target, grey_levels)])
    np.testing.assert_allclose(vif(reconstruction, target), expected, rtol=1e-9)


def test_vif_is_independent_of_intensity_units():
    reconstruction, target = phantom_slices(count=1, size=48)
    assert vif(reconstruction * 1e-3, target * 1e-3) == pytest.approx(vif(reconstruction, target), rel=1e-9)


def test_hfn_is_relative_error_of_laplacian_of_gaussian_with_sigma_1_5():
    reconstruction, target = random_slices()

    def oracle(r: np.ndarray, t: np.ndarray) -> float:
        return np.linalg.norm(gaussian_laplace(r, 1.5) - gaussian_laplace(t, 1.5)) / np.linalg.norm(
            gaussian_laplace(t, 1.5)
        )

    np.testing.assert_allclose(hfn(reconstruction, target), per_slice(oracle, reconstruction, target), rtol=1e-12)


def test_nmse_is_squared_error_over_target_energy():
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    reconstruction = np.array([[1.0, 2.0], [3.0, 2.0]])
    assert nmse(reconstruction, target) == pytest.approx(4.0 / 30.0)


def test_identical_images_are_perfect():
    _, target = phantom_slices(count=2, size=48)
    assert np.all(hfn(target, target) == 0)
    assert np.all(nmse(target, target) == 0)
    np.testing.assert_allclose(vif(target, target), 1.0, atol=1e-9)
    np.testing.assert_allclose(ssim(target, target), 1.0, atol=1e-12)
    assert np.all(np.isinf(psnr(target, target)))


def test_every_metric_worsens_monotonically_as_noise_grows():
    _, target = phantom_slices(count=1, size=48)
    unit_noise = np.random.default_rng(2).standard_normal(target.shape) * target.max()
    values = {name: [] for name in ("psnr", "ssim", "nmse", "hfn", "vif")}
    for level in NOISE_LEVELS:
        for name, per_slice_values in slice_metrics(target + level * unit_noise, target).items():
            values[name].append(per_slice_values[0])
    for name, series in values.items():
        steps = np.diff(series)
        assert np.all(steps < 0 if METRICS.get(name).higher_is_better else steps > 0), (name, series)


def test_batches_over_leading_dimensions_and_returns_a_float_for_one_slice():
    reconstruction, target = random_slices(shape=(2, 3, 20, 24))
    batched = psnr(reconstruction, target)
    assert batched.shape == (2, 3)
    assert batched[1, 2] == psnr(reconstruction[1, 2], target[1, 2])
    assert isinstance(ssim(reconstruction[0, 0], target[0, 0]), float)


def test_slice_metrics_returns_one_value_per_slice_in_the_requested_order():
    reconstruction, target = phantom_slices(count=3, size=48)
    results = slice_metrics(reconstruction, target, names=("vif", "psnr"), ssim_convention="authors")
    assert list(results) == ["vif", "psnr"]
    assert all(values.shape == (3,) and values.dtype == np.float64 for values in results.values())
    authors = slice_metrics(reconstruction, target, names=("ssim",), ssim_convention="authors")["ssim"]
    np.testing.assert_allclose(authors, ssim(reconstruction, target, convention="authors"))


def test_registry_records_which_direction_is_better():
    assert {name: METRICS.get(name).higher_is_better for name in METRICS} == {
        "hfn": False, "nmse": False, "psnr": True, "ssim": True, "vif": True
    }


@pytest.mark.parametrize(
    ("reconstruction", "target", "message"),
    [
        (np.zeros((8, 9)), np.ones((8, 8)), "shape"),
        (np.ones((8, 8), np.float32), np.ones((8, 8), np.float64), "dtype"),
        (np.full((8, 8), np.nan), np.ones((8, 8)), "NaN"),
        (np.ones((8, 8), np.complex64), np.ones((8, 8), np.complex64), "real"),
        (np.ones(8), np.ones(8), "(..., H, W)"),
        (np.ones((8, 8)), np.zeros((8, 8)), "data_range"),
    ],
)
def test_bad_input_raises_a_clear_input_error(reconstruction, target, message):
    with pytest.raises(InputError, match=re.escape(message)):
        psnr(reconstruction, target)


def test_undefined_or_impossible_cases_raise_input_errors():
    with pytest.raises(InputError, match="at least 41"):
        vif(np.ones((32, 32)), np.ones((32, 32)))
    with pytest.raises(InputError, match="unknown metric 'mse'"):
        slice_metrics(np.ones((1, 48, 48)), np.ones((1, 48, 48)), names=("mse",))
    with pytest.raises(InputError, match=r"\(S, H, W\)"):
        slice_metrics(np.ones((48, 48)), np.ones((48, 48)))
    with pytest.raises(InputError, match="convention"):
        ssim(np.ones((8, 8)), np.ones((8, 8)), convention="paper")
    with pytest.raises(InputError, match="all-zero"):
        hfn(np.ones((8, 8)), np.zeros((8, 8)))
    with pytest.raises(InputError, match="all-zero"):
        nmse(np.ones((8, 8)), np.zeros((8, 8)))
