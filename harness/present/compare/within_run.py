"""One run: per problem, each backend's TFLOPS, MFU and MBU side by side, with its speedup over the
baseline backend (`--baseline`, default the workload's own as the run's schema records it, e.g. torch
for gemm), and a geometric mean per workload and backend.
"""

from __future__ import annotations

from harness.errors import UsageError
from harness.present import summary
from harness.present.compare.comparison import Comparison, bucket, by_workload, describe_run, group, identity
from harness.present.compare.rendering import WITHIN_RUN_SUMMARY, summary_table
from harness.present.ratios import geomean, speedup
from harness.store.runs import Run


def single(run: Run, baseline: str | None = None) -> Comparison:
    """Backends side by side per problem, with speedups over the baseline backend."""
    if baseline and baseline not in {r["backend"] for r in run.rows}:
        known = ", ".join(sorted({r["backend"] for r in run.rows}))
        raise UsageError(f"--baseline: no backend {baseline!r} in {run.path} (it has {known})")
    result = Comparison([], [], [])
    for wl, rows in by_workload(run.rows).items():
        base = baseline or run.baseline(wl)
        problems = group(rows, lambda r: r["backend"])
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        if base not in backends:
            base = None
        else:
            backends = [base] + [b for b in backends if b != base]
        for by_backend in problems.values():
            for b in backends:
                r = by_backend.get(b)
                if r is not None:
                    result.records.append({**identity(r), "status": r["status"], "time_ms": r.get("time_ms"),
                                           "tflops": r.get("tflops"), "mfu": r.get("mfu"), "mbu": r.get("mbu"),
                                           "baseline": base,
                                           "speedup": speedup(by_backend.get(base), r) if b != base else None})
        result.tables.append(summary.side_by_side(rows, wl, base, schema=run.schema))
        result.summary += _single_summary(wl, [r for r in result.records if r["workload"] == wl], base)
    if result.summary:
        result.tables.append(summary_table(result.summary, WITHIN_RUN_SUMMARY))
    result.runs = [describe_run(run, "A", run.path.name)]
    return result


def _single_summary(wl: str, records: list[dict], base: str | None) -> list[dict]:
    """Per backend of a workload: its ok cases, geomean MFU and geomean speedup over the baseline."""
    out = []
    for backend, recs in bucket(records, lambda r: r["backend"]).items():
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            continue
        out.append({"workload": wl, "backend": backend, "cases": len(ok),
                    "geomean MFU": geomean([r["mfu"] for r in ok]),
                    "geomean speedup": geomean([r["speedup"] for r in ok]) if backend != base else None})
    return out
