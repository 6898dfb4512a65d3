"""`mfu plan`: expand a suite without allocating anything and predict its cost on a named GPU.

Each case becomes a `planned` row with the same columns as a run: the formulas' flops and bytes,
intensity, bound, the roofline time on the GPU (the fastest any kernel could go), and the memory
the case would need.
"""

from __future__ import annotations

from harness import workloads
from harness.config import Suite
from harness.device import DeviceFacts
from harness.dtypes import DTYPES
from harness.case import Context, base_row
from harness.specs import PeakSpec


def plan(suite: Suite, spec: PeakSpec | None) -> list[dict]:
    ctx = Context("plan", DeviceFacts(kind="plan", name=spec.name if spec else ""), spec)
    rows = []
    for case in suite.cases:
        need = workloads.REGISTRY[case.workload].memory_bytes(case.p, DTYPES[case.dtype])
        rows.append({**base_row(case, ctx), "status": "planned", "memory_gib": need / 2**30})
    return rows


def budget_s(suite: Suite) -> float:
    """An upper estimate of the run's timing phase: each case's warm-up plus its time box."""
    t = suite.timing
    return len(suite.cases) * (t.warmup_ms / 1e3 + t.max_time_s)
