"""Summary statistics and the Wilcoxon signed-rank test on constructed data with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from compressor.errors import InputError
from compressor.evaluate.stats import Comparison, Summary, summarise, wilcoxon_test


def test_summary_is_mean_and_population_std():
    assert summarise([1.0, 2.0, 3.0, 4.0]) == Summary(mean=2.5, std=math.sqrt(1.25), n=4)


def test_consistent_improvement_over_20_slices_is_significant_with_the_exact_p_value():
    a = np.linspace(30.0, 35.0, 20)
    b = a + 0.1 * np.arange(1, 21)  # 20 distinct positive differences: every signed rank is positive
    result = wilcoxon_test(a, b)
    assert result.significant
    assert result.p_value == pytest.approx(2 / 2**20)  # exact two-sided null probability of W- = 0
    assert result.statistic == 0.0
    assert result.n == 20
    assert result.median_difference == pytest.approx(1.05)


def test_constant_shift_b_equals_a_plus_one_is_significant():
    a = np.random.default_rng(0).normal(35.0, 2.0, 20)
    result = wilcoxon_test(a, a + 1)
    assert result.significant and result.p_value < 1e-4 and result.median_difference == pytest.approx(1.0)


def test_hand_computed_exact_p_value():
    # Differences 1..5 and -6: W- = 6; 14 of the 64 sign patterns have W ≤ 6, so p = 2 · 14 / 64.
    a = np.zeros(6)
    result = wilcoxon_test(a, a + np.array([1.0, 2.0, 3.0, 4.0, 5.0, -6.0]))
    assert result.p_value == pytest.approx(28 / 64)
    assert not result.significant


def test_identical_values_are_not_significant_and_raise_no_warning():
    a = np.linspace(0.9, 0.99, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = wilcoxon_test(a, a.copy())
    assert result == Comparison(statistic=0.0, p_value=1.0, significant=False, n=12, median_difference=0.0)


def test_small_samples_with_ties_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = wilcoxon_test([1.0, 2.0, 3.0], [2.0, 3.0, 3.0])
    assert not result.significant


def test_alpha_sets_the_significance_threshold():
    a = np.zeros(6)
    b = a + np.array([1.0, 2.0, 3.0, 4.0, 5.0, -6.0])
    assert wilcoxon_test(a, b, alpha=0.5).significant


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [([1.0, 2.0], [1.0], "length"), ([1.0, float("nan")], [1.0, 2.0], "NaN"), ([], [], "empty")],
)
def test_bad_values_raise_input_errors(a, b, message):
    with pytest.raises(InputError, match=message):
        wilcoxon_test(a, b)
