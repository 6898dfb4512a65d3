"""How two measurements of the same problem compare: one speedup, one geometric mean.

Light on purpose (no torch, no numpy): the summary, compare and the claim rules all use these.
"""

from __future__ import annotations

import math


def speedup(base: dict | None, row: dict | None) -> float | None:
    """How many times faster `row` ran than `base` on the same problem: base time over this time,
    which is this row's throughput over the base's, for TFLOPS and GB/s alike (the work is the
    same). None unless both rows are ok and timed."""
    if not (base and row and base.get("status") == row.get("status") == "ok"
            and base.get("time_ms") and row.get("time_ms")):
        return None
    return base["time_ms"] / row["time_ms"]


def geomean(values) -> float | None:
    """The geometric mean of the positive, finite values (None, zeros and infinities are left out),
    or None when none is left: the mean of ratios, which is symmetric (1/2 and 2 average to 1)."""
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None
