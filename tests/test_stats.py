"""Median, quartiles and the distribution-free confidence interval of the median."""

import numpy as np
import pytest

from harness.measure import stats


def test_ci_indices_match_the_binomial_table():
    # n=10: [x(2), x(9)] covers the median with 97.9% (the textbook pair for 95%)
    assert stats.median_ci_indices(10) == (1, 8)
    assert stats.median_ci_indices(6) == (0, 5)  # 1 - 2/64 = 96.9%
    assert stats.median_ci_indices(5) == (None, None)  # no pair reaches 95% with 5 samples


def test_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        x = rng.lognormal(0, 0.5, size=25)  # skewed, like kernel times; true median is 1
        s = stats.summarize(x)
        hits += s.ci_low <= 1.0 <= s.ci_high
    assert 0.93 <= hits / 2000 <= 0.995


def test_summary_values():
    s = stats.summarize([5, 1, 4, 2, 3, 100, 3, 3, 3, 3])
    assert s.median == 3 and s.n == 10
    # sorted: 1 2 3 3 3 3 3 4 5 100; linear interpolation at 2.25 and 6.75
    assert s.q1 == pytest.approx(3.0) and s.q3 == pytest.approx(3.75)
    assert s.rel_ci == pytest.approx((s.ci_high - s.ci_low) / 6)


def test_too_few_samples_have_infinite_noise():
    assert stats.summarize([1.0, 1.1]).rel_ci == float("inf")
    with pytest.raises(ValueError):
        stats.summarize([])
