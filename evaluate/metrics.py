"""Per-slice image-quality metrics of a reconstruction against the fully sampled target.

Every metric takes ``reconstruction`` and ``target`` of the same shape and dtype, ``(..., H, W)`` (leading
dimensions are slices), computes in float64 and returns one value per slice: a ``float`` for a single
``(H, W)`` slice, an array of the leading shape otherwise. Conventions, pinned here and in the tests:

- **data range** (PSNR, SSIM, VIF): the target *slice's* maximum, as the paper's code
  (``data_range = target.max()`` per slice); a positive float overrides it for every slice (e.g. a volume max).
- **SSIM**: scikit-image's default, a 7×7 uniform window with sample covariance, K1 = 0.01, K2 = 0.03, averaged
  over the pixels whose window lies inside the image. ``convention="authors"`` reproduces the authors' call
  ``structural_similarity(..., multichannel=True)`` on a 2-D slice: each *column* is treated as a channel, so
  the value is the mean of 1-D SSIMs (window 7 along H) over columns. It is lower than standard SSIM and is
  only for setting a table beside the paper's.
- **HFN**: relative L2 error of Laplacian-of-Gaussian filtered images, σ = 1.5 pixels.
- **VIF**: pixel-domain VIF, four scales, σ_n² = 2 on images scaled to 0..255 by the data range.

All metrics are invariant to a common rescaling of both images, so normalised and input units give the same
values. Bad input (shape or dtype mismatch, NaN, a slice whose metric is undefined) raises
:class:`~compressor.errors.InputError` naming the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.ndimage import correlate1d, gaussian_filter, uniform_filter

from compressor.errors import InputError
from compressor.registry import Registry

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_CONVENTIONS = ("standard", "authors")
HFN_SIGMA = 1.5
VIF_WINDOWS = (17, 9, 5, 3)
# Each scale filters with its window ('valid') and halves the grid; 41 is the smallest side that leaves at
# least one valid pixel at the fourth scale.
VIF_MIN_SIZE = 41
VIF_EPSILON = 1e-10
VIF_GREY_LEVELS = 255.0

SLICE_AXES = (-2, -1)


def _check_images(reconstruction: np.ndarray, target: np.ndarray) -> None:
    """Reject a shape or dtype mismatch, non-real data, fewer than two dimensions, NaN or infinity."""
    if reconstruction.shape != target.shape:
        raise InputError(f"reconstruction shape {reconstruction.shape} differs from target shape {target.shape}")
    if reconstruction.dtype != target.dtype:
        raise InputError(f"reconstruction dtype {reconstruction.dtype} differs from target dtype {target.dtype}")
    if reconstruction.dtype.kind not in "fiu":
        raise InputError(f"images must be real-valued numbers, got dtype {reconstruction.dtype}")
    if reconstruction.ndim < 2:
        raise InputError(f"images must have shape (..., H, W), got shape {reconstruction.shape}")
    for name, image in (("reconstruction", reconstruction), ("target", target)):
        if not np.all(np.isfinite(image)):
            raise InputError(f"{name} contains NaN or infinite values")


def _float_images(reconstruction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reconstruction, target = np.asarray(reconstruction), np.asarray(target)
    _check_images(reconstruction, target)
    return reconstruction.astype(np.float64), target.astype(np.float64)


def _data_range(target: np.ndarray, data_range: float | None) -> np.ndarray:
    """Per-slice data range ``(...)``: the target slice's max by default, else the given positive float."""
    if data_range is not None:
        if not np.isfinite(data_range) or data_range <= 0:
            raise InputError(f"data_range must be a positive number, got {data_range!r}")
        return np.full(target.shape[:-2], float(data_range))
    maxima = target.max(axis=SLICE_AXES)
    if np.any(maxima <= 0):
        index = np.argwhere(np.atleast_1d(maxima <= 0))[0].tolist()
        raise InputError(
            f"target slice {index} has maximum ≤ 0 (an all-zero or negative image), so its default data range "
            f"(the slice's max) is undefined; give the metric function a data_range"
        )
    return maxima


def _per_slice(values: np.ndarray) -> float | np.ndarray:
    """A float for a single slice, the array of per-slice values otherwise."""
    return float(values) if values.ndim == 0 else values


def _crop(image: np.ndarray, margin: int, axes: Sequence[int]) -> np.ndarray:
    cropped = image
    for axis in axes:
        cropped = np.moveaxis(np.moveaxis(cropped, axis, 0)[margin:-margin], 0, axis)
    return cropped


def psnr(reconstruction: np.ndarray, target: np.ndarray, data_range: float | None = None) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(R² / MSE)`` per slice.

    Args:
        reconstruction: ``(..., H, W)`` image(s).
        target: fully sampled ``(..., H, W)`` image(s), same dtype.
        data_range: ``R``; default the target slice's max (the paper's convention).

    Returns:
        One PSNR per slice; ``inf`` where the images are identical.
    """
    reconstruction, target = _float_images(reconstruction, target)
    peak = _data_range(target, data_range)
    mse = np.mean((reconstruction - target) ** 2, axis=SLICE_AXES)
    with np.errstate(divide="ignore"):
        return _per_slice(10 * np.log10(peak**2 / mse))


def _ssim_values(
    reconstruction: np.ndarray, target: np.ndarray, peak: np.ndarray, axes: tuple[int, ...]
) -> np.ndarray:
    """Mean SSIM per slice with a 7-wide uniform window along ``axes``, cropped by the window radius there."""
    size = SSIM_WINDOW
    if any(target.shape[axis] < size for axis in axes):
        raise InputError(f"SSIM needs at least {size} pixels along the window axes, got shape {target.shape}")
    samples = size ** len(axes)
    covariance_norm = samples / (samples - 1)  # sample covariance, as scikit-image's default

    # A window of 1 along every other axis keeps slices (and, for the authors' convention, columns) apart.
    window = [1] * target.ndim
    for axis in axes:
        window[axis] = size

    def local_mean(image: np.ndarray) -> np.ndarray:
        return uniform_filter(image, size=window)

    mean_x, mean_y = local_mean(target), local_mean(reconstruction)
    var_x = covariance_norm * (local_mean(target * target) - mean_x * mean_x)
    var_y = covariance_norm * (local_mean(reconstruction * reconstruction) - mean_y * mean_y)
    cov_xy = covariance_norm * (local_mean(target * reconstruction) - mean_x * mean_y)
    c1 = (SSIM_K1 * peak[..., None, None]) ** 2
    c2 = (SSIM_K2 * peak[..., None, None]) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return _crop(ssim_map, (size - 1) // 2, axes).mean(axis=SLICE_AXES)


def ssim(
    reconstruction: np.ndarray,
    target: np.ndarray,
    data_range: float | None = None,
    convention: str = "standard",
) -> float | np.ndarray:
    """Structural similarity per slice (Wang et al. 2004, scikit-image defaults).

    Args:
        reconstruction: ``(..., H, W)`` image(s).
        target: fully sampled ``(..., H, W)`` image(s), same dtype.
        data_range: default the target slice's max (the paper's convention).
        convention: ``standard`` (2-D 7×7 window) or ``authors`` (mean over columns of 1-D SSIMs along H, what
            ``multichannel=True`` on a 2-D slice computed in the authors' code).

    Returns:
        One SSIM per slice, in (-1, 1].
    """
    if convention not in SSIM_CONVENTIONS:
        raise InputError(f"unknown SSIM convention {convention!r}; valid: {', '.join(SSIM_CONVENTIONS)}")
    reconstruction, target = _float_images(reconstruction, target)
    peak = _data_range(target, data_range)
    axes = SLICE_AXES if convention == "standard" else (-2,)
    return _per_slice(_ssim_values(reconstruction, target, peak, axes))


def nmse(reconstruction: np.ndarray, target: np.ndarray) -> float | np.ndarray:
    """Normalised mean squared error ``‖x̂ − x‖² / ‖x‖²`` per slice (fastMRI's NMSE); 0 for identical images."""
    reconstruction, target = _float_images(reconstruction, target)
    energy = np.sum(target**2, axis=SLICE_AXES)
    if np.any(energy == 0):
        raise InputError("NMSE is undefined for an all-zero target slice")
    return _per_slice(np.sum((reconstruction - target) ** 2, axis=SLICE_AXES) / energy)


def _laplacian_of_gaussian(images: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_laplace`` of every ``(H, W)`` slice of ``(..., H, W)``: the sum of the Gaussian
    second derivatives along H and along W (what ``gaussian_laplace`` sums), with no smoothing across slices.

    Written out because ``gaussian_laplace`` takes ``axes`` only in recent SciPy, and giving it σ = 0 on the
    slice axes would add the smoothed image itself (an order-2 term along an axis it does not filter)."""
    leading = (0,) * (images.ndim - 2)
    sigmas = (*leading, sigma, sigma)
    along_h = gaussian_filter(images, sigmas, order=(*leading, 2, 0))
    along_w = gaussian_filter(images, sigmas, order=(*leading, 0, 2))
    return along_h + along_w


def hfn(reconstruction: np.ndarray, target: np.ndarray, sigma: float = HFN_SIGMA) -> float | np.ndarray:
    """High-frequency error norm ``‖LoG(x̂) − LoG(x)‖₂ / ‖LoG(x)‖₂`` per slice; lower is better, 0 if identical.

    LoG is ``scipy.ndimage.gaussian_laplace`` over the two image axes with standard deviation ``sigma`` = 1.5
    pixels (Ravishankar & Bresler 2011, "MR image reconstruction from highly undersampled k-space data by
    dictionary learning", used by Fujita et al. 2020 and the paper's Appendix A), reflecting borders and
    truncating the kernel at 4σ (a 13×13 support; the original 15×15 changes HFN by < 0.01 % on a noisy phantom).
    """
    reconstruction, target = _float_images(reconstruction, target)
    target_edges = _laplacian_of_gaussian(target, sigma)
    # LoG is linear, so LoG(x̂) − LoG(x) = LoG(x̂ − x).
    error_edges = _laplacian_of_gaussian(reconstruction - target, sigma)
    target_norm = np.sqrt(np.sum(target_edges**2, axis=SLICE_AXES))
    if np.any(target_norm == 0):
        raise InputError("HFN is undefined for a target slice whose LoG is zero (an all-zero slice)")
    return _per_slice(np.sqrt(np.sum(error_edges**2, axis=SLICE_AXES)) / target_norm)


def _vif_window(size: int) -> np.ndarray:
    """1-D factor of the Gaussian window ``fspecial('gaussian', size, size / 5)``; the 2-D one is its outer product."""
    offsets = np.arange(size) - size // 2
    window = np.exp(-(offsets**2) / (2 * (size / 5) ** 2))
    return window / window.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering over the last two axes, keeping only pixels whose window lies inside."""
    radius = len(window) // 2
    rows = correlate1d(images, window, axis=-1)[..., radius:-radius]
    return correlate1d(rows, window, axis=-2)[..., radius:-radius, :]


def vif(
    reconstruction: np.ndarray,
    target: np.ndarray,
    data_range: float | None = None,
    sigma_nsq: float = 2.0,
) -> float | np.ndarray:
    """Pixel-domain visual information fidelity (Sheikh & Bovik 2006, "Image information and visual quality").

    The multi-scale pixel version (``vifp`` in Sheikh's MATLAB code and in ``sewar``): at four scales with
    Gaussian windows of 17, 9, 5, 3 pixels (σ = size / 5) the local statistics of reference ``x`` and
    distorted ``x̂`` give a gain ``g = σ_xx̂ / σ_x²`` and a distortion variance ``σ_v² = σ_x̂² − g σ_xx̂``;

        VIF = Σ log10(1 + g² σ_x² / (σ_v² + σ_n²)) / Σ log10(1 + σ_x² / σ_n²)

    summed over pixels and scales. σ_n² = 2 is the visual noise variance in 8-bit grey levels, so both images
    are first scaled by ``255 / data_range`` (default: the target slice's max), which also makes VIF
    independent of the input units. Identical images give 1; higher is better.

    Args:
        reconstruction: ``(..., H, W)`` image(s), H and W at least 41.
        target: fully sampled ``(..., H, W)`` image(s), same dtype.
        data_range: default the target slice's max.
        sigma_nsq: visual noise variance σ_n² in grey levels².

    Returns:
        One VIF per slice.
    """
    reconstruction, target = _float_images(reconstruction, target)
    if min(target.shape[-2:]) < VIF_MIN_SIZE:
        raise InputError(f"VIF needs slices of at least {VIF_MIN_SIZE}×{VIF_MIN_SIZE}, got {target.shape[-2:]}")
    to_grey_levels = (VIF_GREY_LEVELS / _data_range(target, data_range))[..., None, None]
    reference, distorted = target * to_grey_levels, reconstruction * to_grey_levels
    information_kept = np.zeros(target.shape[:-2])
    information_total = np.zeros(target.shape[:-2])
    for scale, size in enumerate(VIF_WINDOWS):
        window = _vif_window(size)
        if scale > 0:
            reference = _filter_valid(reference, window)[..., ::2, ::2]
            distorted = _filter_valid(distorted, window)[..., ::2, ::2]
        mean_ref, mean_dist = _filter_valid(reference, window), _filter_valid(distorted, window)
        var_ref = np.maximum(_filter_valid(reference * reference, window) - mean_ref**2, 0)
        var_dist = np.maximum(_filter_valid(distorted * distorted, window) - mean_dist**2, 0)
        covariance = _filter_valid(reference * distorted, window) - mean_ref * mean_dist

        gain = covariance / (var_ref + VIF_EPSILON)
        noise_var = var_dist - gain * covariance
        # Flat reference: nothing to transmit, the distortion is all noise.
        flat_ref = var_ref < VIF_EPSILON
        gain = np.where(flat_ref, 0, gain)
        noise_var = np.where(flat_ref, var_dist, noise_var)
        var_ref = np.where(flat_ref, 0, var_ref)
        # Flat distortion: no information survives.
        flat_dist = var_dist < VIF_EPSILON
        gain = np.where(flat_dist, 0, gain)
        noise_var = np.where(flat_dist, 0, noise_var)
        # A negative gain (contrast inversion) is treated as no signal, all noise.
        inverted = gain < 0
        noise_var = np.where(inverted, var_dist, noise_var)
        gain = np.where(inverted, 0, gain)
        noise_var = np.maximum(noise_var, VIF_EPSILON)

        information_kept += np.sum(np.log10(1 + gain**2 * var_ref / (noise_var + sigma_nsq)), axis=SLICE_AXES)
        information_total += np.sum(np.log10(1 + var_ref / sigma_nsq), axis=SLICE_AXES)
    if np.any(information_total == 0):
        raise InputError("VIF is undefined for a target slice without structure (zero local variance everywhere)")
    return _per_slice(information_kept / information_total)


class Metric(NamedTuple):
    """A registered metric: ``compute(reconstruction, target)`` per slice, and how tables show it."""

    name: str
    compute: Callable[..., float | np.ndarray]
    higher_is_better: bool
    label: str
    number_format: str


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    Metric("psnr", psnr, True, "PSNR", ".2f"),
    Metric("ssim", ssim, True, "SSIM", ".4f"),
    Metric("nmse", nmse, False, "NMSE", ".3e"),
    Metric("hfn", hfn, False, "HFN", ".4f"),
    Metric("vif", vif, True, "VIF", ".4f"),
):
    METRICS.register(_metric.name)(_metric)

DEFAULT_METRICS = ("psnr", "ssim", "nmse", "hfn", "vif")


def slice_metrics(
    reconstruction: np.ndarray,
    target: np.ndarray,
    names: Sequence[str] = DEFAULT_METRICS,
    ssim_convention: str = "standard",
) -> dict[str, np.ndarray]:
    """Every named metric for every slice, with the default data range (the target slice's max).

    Args:
        reconstruction: ``(S, H, W)`` slices.
        target: ``(S, H, W)`` fully sampled slices, same dtype.
        names: registered metric names (see :data:`METRICS`).
        ssim_convention: ``standard`` or ``authors`` (see :func:`ssim`).

    Returns:
        ``{name: (S,) float64 array}`` in the order of ``names``.
    """
    reconstruction, target = np.asarray(reconstruction), np.asarray(target)
    if reconstruction.ndim != 3 or target.ndim != 3:
        raise InputError(
            f"slice_metrics expects (S, H, W) arrays, got {reconstruction.shape} and {target.shape}"
        )
    if ssim_convention not in SSIM_CONVENTIONS:
        raise InputError(f"unknown SSIM convention {ssim_convention!r}; valid: {', '.join(SSIM_CONVENTIONS)}")
    results = {}
    for name in names:
        metric = METRICS.get(name)
        options = {"convention": ssim_convention} if metric.name == "ssim" else {}
        results[metric.name] = np.asarray(metric.compute(reconstruction, target, **options), dtype=np.float64)
    return results
