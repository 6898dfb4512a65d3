"""Is one measurement of a case faster, slower or the same as another? The asv rule, on raw samples.

A change is `faster` or `slower` only when both hold:

1. it is large: the ratio of median times is beyond 1 + threshold either way (after/before above
   1.05, or before/after above 1.05, at the default 5%);
2. it is significant on the raw samples:
   - Mann-Whitney U (two-sided, p < ALPHA) when both sides have at least MW_MIN samples;
   - with fewer (at least CI_MIN each), the 95% confidence intervals of the medians
     (distribution-free, harness/measure/stats.py) must not overlap;
   - without raw samples (a pytest-benchmark file saved without data), the interquartile ranges
     must not overlap, with at least MW_MIN rounds each.

A change that could not be tested (too few samples on a side, no positive median time) is
`inconclusive`, never `same`: +1318% on three samples is not "the same". Anything else is `same`,
and `evidence` says why (within the threshold, or not significant). `change` is the throughput change, before/after median time - 1: +10% means
10% more TFLOPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.measure import stats

THRESHOLD = 0.05
ALPHA = 0.01
MW_MIN = 10  # samples per side for Mann-Whitney U (its p-value can reach ALPHA from 5 on)
CI_MIN = 6  # below this no pair of order statistics gives a 95% CI of the median


@dataclass(frozen=True)
class Timing:
    """One side of a comparison: median and quartiles (ms), sample count, raw samples if kept."""

    median: float
    q1: float | None = None
    q3: float | None = None
    n: int = 0
    samples: tuple[float, ...] = ()

    @classmethod
    def of(cls, row: dict, samples: list[float] | None) -> Timing:
        if samples:
            return cls.from_samples(samples)
        return cls(row["time_ms"], row.get("time_ms_q1"), row.get("time_ms_q3"), row.get("samples") or 0)

    @classmethod
    def from_samples(cls, samples) -> Timing:
        s = stats.summarize(samples)
        return cls(s.median, s.q1, s.q3, s.n, tuple(samples))


@dataclass(frozen=True)
class Verdict:
    verdict: str  # faster | slower | same | inconclusive
    change: float  # throughput change: before median / after median - 1
    evidence: str  # the test that decided, or why none could
    p_value: float | None = None


def judge(before: Timing, after: Timing, threshold: float = THRESHOLD) -> Verdict:
    if not (before.median > 0 and after.median > 0):
        return Verdict("inconclusive", math.nan, "no positive median time to compare")
    change = before.median / after.median - 1
    if max(after.median / before.median, before.median / after.median) <= 1 + threshold:
        return Verdict("same", change, f"within ±{threshold:.0%}")
    significant, evidence, p = _significance(before, after)
    if significant is None:
        return Verdict("inconclusive", change, evidence)
    if not significant:
        return Verdict("same", change, evidence, p)
    return Verdict("faster" if change > 0 else "slower", change, evidence, p)


def _significance(a: Timing, b: Timing) -> tuple[bool | None, str, float | None]:
    """Whether the samples differ significantly, or None when there are too few to test."""
    if a.samples and b.samples and min(a.n, b.n) >= MW_MIN:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(a.samples, b.samples, alternative="two-sided").pvalue)
        return p < ALPHA, f"U test p={p:.2g}" + ("" if p < ALPHA else f" ≥ {ALPHA}"), p
    if a.samples and b.samples and min(a.n, b.n) >= CI_MIN:
        sa, sb = stats.summarize(a.samples), stats.summarize(b.samples)
        apart = sa.ci_high < sb.ci_low or sb.ci_high < sa.ci_low
        return apart, f"median CIs {'disjoint' if apart else 'overlap'} (n={a.n}, {b.n})", None
    quartiles = None not in (a.q1, a.q3, b.q1, b.q3)
    if not (a.samples and b.samples) and quartiles and min(a.n, b.n) >= MW_MIN:
        apart = a.q3 < b.q1 or b.q3 < a.q1
        return apart, f"no raw samples; IQRs {'disjoint' if apart else 'overlap'}", None
    return None, f"too few samples to test (n={a.n}, {b.n})", None
