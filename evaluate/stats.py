"""Summary statistics and the paper's significance test (Wilcoxon signed-rank, α = 0.05, section 4.1)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import wilcoxon

from compressor.errors import InputError

ALPHA = 0.05


class Summary(NamedTuple):
    """Mean and population standard deviation (``ddof=0``) of ``n`` per-slice values; ``n = 0`` when only the
    mean and std are known (read from ``results.json`` without the per-slice file)."""

    mean: float
    std: float
    n: int


class Comparison(NamedTuple):
    """A paired two-sided Wilcoxon signed-rank test of ``b`` against ``a``.

    Attributes:
        statistic: scipy's statistic (the smaller of the signed rank sums); 0 when every difference is 0.
        p_value: two-sided p-value; 1.0 when every difference is 0.
        significant: ``p_value < alpha``.
        n: number of pairs.
        median_difference: median of ``b − a`` (its sign says which is larger).
    """

    statistic: float
    p_value: float
    significant: bool
    n: int
    median_difference: float


def _finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InputError(f"{name} must be a 1-D sequence of per-slice values, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name} is empty")
    if np.any(np.isnan(array)):
        raise InputError(f"{name} contains NaN")
    return array


def summarise(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean ± population std of per-slice values ``(S,)``."""
    array = _finite_vector(values, "values")
    return Summary(mean=float(array.mean()), std=float(array.std()), n=int(array.size))


def wilcoxon_test(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = ALPHA
) -> Comparison:
    """Paired two-sided Wilcoxon signed-rank test of per-slice values ``b`` against ``a`` (both ``(S,)``).

    Zero differences are dropped (scipy's ``zero_method="wilcox"``); when all differences are zero the two
    models are indistinguishable and the result is ``p = 1``, not significant, with no warning.
    """
    first, second = _finite_vector(a, "a"), _finite_vector(b, "b")
    if first.shape != second.shape:
        raise InputError(f"paired values differ in length: {first.size} and {second.size}")
    differences = second - first
    median_difference = float(np.median(differences))
    if np.all(differences == 0):
        return Comparison(statistic=0.0, p_value=1.0, significant=False, n=int(first.size), median_difference=0.0)
    with warnings.catch_warnings():
        # scipy warns about small samples and ties; the p-value it returns is still the right one to report.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        result = wilcoxon(second, first)
    p_value = float(result.pvalue)
    return Comparison(
        statistic=float(result.statistic),
        p_value=p_value,
        significant=p_value < alpha,
        n=int(first.size),
        median_difference=median_difference,
    )
