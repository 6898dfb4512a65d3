"""Sample statistics: median, quartiles and a distribution-free confidence interval of the median.

Kernel times are skewed (a long tail of preemptions and clock dips), so nothing here assumes
normality. The median's CI comes from order statistics: the count of samples below the true median
is Binomial(n, 1/2), so [x_(l), x_(n-l+1)] covers it with probability 1 - 2·P(X < l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    q1: float
    q3: float
    ci_low: float
    ci_high: float

    @property
    def rel_ci(self) -> float:
        """Half the CI's width over the median: the relative noise the stopping rule uses."""
        if self.median <= 0 or not math.isfinite(self.ci_high - self.ci_low):
            return math.inf
        return (self.ci_high - self.ci_low) / (2 * self.median)


def summarize(samples) -> Summary:
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    lo, hi = median_ci_indices(n)
    ci_low, ci_high = (x[lo], x[hi]) if lo is not None else (-math.inf, math.inf)
    return Summary(n, float(median), float(q1), float(q3), float(ci_low), float(ci_high))


def median_ci_indices(n: int, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """0-based sorted indices bounding the median's CI, or (None, None) when n is too small
    for any pair of order statistics to reach the confidence (n < 6 at 95%)."""
    from scipy.stats import binom

    alpha = 1 - confidence
    l = int(binom.ppf(alpha / 2, n, 0.5))  # 1-based rank of the lower bound: P(X <= l-1) <= alpha/2
    if l < 1:
        return None, None
    return l - 1, n - l
