"""The verdict rule on synthetic samples: a change must be large (past the threshold) and
significant on the raw samples to be `faster` or `slower`; everything else is `same`."""

import numpy as np
import pytest

from harness.present.verdict import ALPHA, Timing, judge


def samples(median: float, n: int = 50, sigma: float = 0.02, seed: int = 0) -> Timing:
    """Right-skewed kernel times around `median` ms (lognormal noise of relative width sigma)."""
    return Timing.from_samples(list(median * np.random.default_rng(seed).lognormal(0, sigma, n)))


@pytest.mark.parametrize("factor, expected", [(1.10, "slower"), (1 / 1.10, "faster")])
def test_a_known_10_percent_shift_is_detected(factor, expected):
    v = judge(samples(1.0, seed=1), samples(factor, seed=2))
    assert v.verdict == expected
    assert v.change == pytest.approx(1 / factor - 1, abs=0.01)
    assert v.evidence.startswith("U test") and v.p_value < ALPHA


def test_pure_noise_is_same():
    """Two draws from one distribution, noisy enough that medians often differ by more than 5%:
    the significance test must hold the false alarms to about its level."""
    pairs = [(samples(1.0, n=15, sigma=0.15, seed=s), samples(1.0, n=15, sigma=0.15, seed=1000 + s))
             for s in range(200)]
    flagged = [a for a, b in pairs if judge(a, b).verdict != "same"]
    beyond = [a for a, b in pairs if max(a.median / b.median, b.median / a.median) > 1.05]
    assert len(beyond) > 50  # the threshold alone would call many of these
    assert len(flagged) <= 4


def test_a_2_percent_shift_under_the_threshold_is_same_even_when_significant():
    v = judge(samples(1.0, n=200, sigma=0.002, seed=1), samples(1.02, n=200, sigma=0.002, seed=2))
    assert v.verdict == "same" and v.evidence == "within ±5%"
    assert v.change == pytest.approx(1 / 1.02 - 1, abs=0.002)


def test_the_threshold_is_a_parameter():
    before, after = samples(1.0, seed=1), samples(1.10, seed=2)
    assert judge(before, after, threshold=0.2).verdict == "same"
    assert judge(before, after, threshold=0.05).verdict == "slower"


def test_few_samples_use_non_overlapping_confidence_intervals_of_the_median():
    tight = judge(samples(1.0, n=7, sigma=0.005, seed=1), samples(1.2, n=7, sigma=0.005, seed=2))
    assert tight.verdict == "slower" and tight.evidence == "median CIs disjoint (n=7, 7)"
    wide = judge(Timing.from_samples([0.5, 0.8, 0.9, 1.0, 1.1, 1.3, 1.6]),
                 Timing.from_samples([0.7, 1.0, 1.1, 1.2, 1.3, 1.5, 1.9]))
    assert wide.verdict == "same" and wide.evidence == "median CIs overlap (n=7, 7)"


def test_too_few_samples_to_test_is_inconclusive_never_same():
    v = judge(samples(1.0, n=3, seed=1), samples(2.0, n=3, seed=2))
    assert v.verdict == "inconclusive" and v.evidence == "too few samples to test (n=3, 3)"
    assert v.change == pytest.approx(-0.5, abs=0.05)


def test_without_raw_samples_the_interquartile_ranges_decide():
    before = Timing(1.0, 0.98, 1.02, n=20)
    assert judge(before, Timing(1.2, 1.18, 1.22, n=20)).verdict == "slower"
    assert judge(before, Timing(1.2, 1.0, 1.4, n=20)).evidence == "no raw samples; IQRs overlap"
