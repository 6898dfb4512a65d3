"""`mfu plan`: expand a suite without allocating anything and predict its cost on a named GPU.

Each case becomes a `planned` row with the same columns as a run: the formulas' flops and bytes,
intensity, bound, the roofline time on the GPU (the fastest any kernel could go), and the memory
the case would need: the same figure (harness/measure/memory.py `required_bytes`, margin included) that a
run compares with free memory before skipping a case. `tables` renders the rows: every case, or
for a large suite a grouped summary and the most expensive cases.
"""

from __future__ import annotations

from collections import Counter

from harness import workloads
from harness.hardware.device import DeviceFacts
from harness.hardware.specs import PeakSpec
from harness.measure import memory
from harness.measure.case import Context, base_row
from harness.measure.config import Suite
from harness.measure.dtypes import DTYPES
from harness.present.tables import Table, number

MOST_EXPENSIVE = 20  # cases listed by roofline time when the plan is summarized


def plan(suite: Suite, spec: PeakSpec | None) -> list[dict]:
    ctx = Context("plan", DeviceFacts(kind="plan", name=spec.name if spec else ""), spec)
    rows = []
    for case in suite.cases:
        need = workloads.REGISTRY[case.workload].memory_bytes(case.p, DTYPES[case.dtype])
        rows.append({**base_row(case, ctx), "status": "planned",
                     "memory_gib": memory.required_bytes(need) / 2**30})
    return rows


def budget_s(suite: Suite) -> float:
    """An upper estimate of the run's timing phase: each case's warm-up plus its time box."""
    t = suite.timing
    return len(suite.cases) * (t.warmup_ms / 1e3 + t.max_time_s)


HEADERS = ["GFLOP", "MB", "FLOP/B", "bound", "roofline ms", "memory GiB"]


def tables(suite: Suite, rows: list[dict], spec: PeakSpec | None, every: bool = True) -> list[Table]:
    """Every case per workload, or (every=False) counts per workload, dtype and backend and the
    MOST_EXPENSIVE cases by roofline time."""
    on = spec.name if spec else "no GPU named (use --gpu)"
    roofline = [r["roofline_ms"] for r in rows if r.get("roofline_ms") is not None]
    notes = [f"timing budget: at most about {budget_s(suite):.0f} s plus set-up and autotuning"]
    if roofline:
        notes.append(f"roofline time of one call of every case: {sum(roofline) / 1e3:.3g} s")
    if every:
        out = [_cases(f"{suite.name} on {on}: {wl}", [r for r in rows if r["workload"] == wl], wl)
               for wl in dict.fromkeys(r["workload"] for r in rows)]
        out[-1].notes += notes
        return out
    counts = Counter((r["workload"], r["dtype"], r["backend"]) for r in rows)
    ms = Counter()
    for r in rows:
        ms[(r["workload"], r["dtype"], r["backend"])] += r.get("roofline_ms") or 0
    summary = Table(f"{suite.name} on {on}: {len(rows)} cases", ["workload", "dtype", "backend", "cases",
                                                                 "roofline ms"],
                    [[*key, str(n), number(ms[key] or None, "{:,.4g}")] for key, n in counts.items()], notes,
                    keys=3)
    top = sorted(rows, key=lambda r: r.get("roofline_ms") or 0, reverse=True)[:MOST_EXPENSIVE]
    if not roofline:
        top = sorted(rows, key=lambda r: r["flops"], reverse=True)[:MOST_EXPENSIVE]
    out = [summary]
    for wl in dict.fromkeys(r["workload"] for r in top):
        out.append(_cases(f"{wl}: the most expensive cases", [r for r in top if r["workload"] == wl], wl))
    return out


def _cases(title: str, rows: list[dict], workload: str) -> Table:
    from harness.present.summary import identity_columns, param_cell

    params, priorities = identity_columns(rows, [p.name for p in workloads.REGISTRY[workload].params])
    cells = [[param_cell(p, r.get(p)) for p in params] + [r["dtype"], r["backend"],
              f"{r['flops'] / 1e9:,.4g}", f"{r['bytes'] / 1e6:,.4g}", number(r["intensity"], "{:.1f}"),
              r["bound"] or "", number(r["roofline_ms"], "{:.4g}"), memory.gib(r["memory_gib"] * 2**30)]
             for r in rows]
    return Table(title, params + ["dtype", "backend"] + HEADERS, cells,
                 priorities=priorities + [1, 0, 3, 3, 2, 2, 0, 0], keys=len(params) + 2)
