"""`mfu export --format pytest-benchmark RUN`: a run as the JSON pytest-benchmark saves and compares.

Each measured (`ok`) case with raw samples is one benchmark: `group` is the problem, so the
backends of one problem sit together in `pytest-benchmark compare`; `stats` are computed by
pytest-benchmark's own Stats class from the samples (in seconds, as it stores them) and include
the raw `data`; `extra_info` carries the case's columns (`extra_info()`); `machine_info["mfu"]` the
device, peak entry, software and column schema from meta.json, the same shape the pytest plugin
writes.
`mfu compare` reads these files back (harness/store/runs.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from harness.errors import UsageError
from harness.store import columns, ids, runs

LEFT_OUT = ("timing",)  # kinds extra_info leaves to pytest-benchmark's own stats


def add_command(sub) -> None:
    p = sub.add_parser("export", help="write a run in another tool's format (pytest-benchmark JSON)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=("pytest-benchmark",), default="pytest-benchmark")
    p.add_argument("--out", type=Path, metavar="FILE", help="write there instead of stdout")
    p.set_defaults(command=_command)


def _command(args, console: Console) -> int:
    run = runs.load(args.run)
    if run.meta.get("source") == "pytest-benchmark":
        raise UsageError(f"{args.run}: already a pytest-benchmark file")
    data = to_pytest_benchmark(run)
    text = json.dumps(data, indent=1, default=str) + "\n"
    if args.out:
        args.out.write_text(text)
        console.print(f"written: {args.out} ({len(data['benchmarks'])} benchmarks)")
    else:
        sys.stdout.write(text)
    return 0


def machine_info(device: dict, peak: dict | None, software: dict, schema: dict | None = None) -> dict:
    """What `machine_info["mfu"]` holds: the GPU facts, the peak entry used, the software, and the
    column schema (harness/store/schema.py) that `mfu compare` reads the benchmarks back with."""
    return {"device": device, "peak": peak and {k: peak.get(k) for k in ("name", "key", "origin")},
            "software": {k: v for k, v in software.items() if k != "argv"}, "schema": schema}


def extra_info(row: dict, params: list[str]) -> dict:
    """A row's columns for a benchmark's extra_info, in results.csv's order (parameters after the
    identity): every registered column but the timing ones, which pytest-benchmark's stats hold,
    and a failed worker's log; a workload's own columns too."""
    return {k: row.get(k) for k in columns.csv_order(params, [row])
            if columns.get(k).kind not in LEFT_OUT and k != "log_tail"}


def to_pytest_benchmark(run: runs.Run) -> dict:
    try:
        import pytest_benchmark
        from pytest_benchmark.stats import Stats
    except ImportError:
        raise UsageError("--format pytest-benchmark needs pytest-benchmark (pip install pytest-benchmark)") from None
    meta, benchmarks = run.meta, []
    for row in run.rows:
        samples = run.samples.get(row["case_id"])
        if row["status"] != "ok" or not samples:
            continue
        stats = Stats()
        for ms in samples:
            stats.update(ms / 1e3)
        benchmarks.append({
            "group": ids.problem(row), "name": row["case_id"], "fullname": f"mfu::{row['case_id']}",
            "params": {"backend": row["backend"]}, "param": row["backend"],
            "extra_info": extra_info(row, run.params(row["workload"])),
            "options": _options(meta), "stats": {**stats.as_dict(), "data": stats.data, "iterations": 1},
        })
    software = meta.get("software") or {}
    commit = software.get("git_commit") or ""
    return {
        "machine_info": {"node": software.get("host"), "machine": "", "processor": "", "system": "",
                         "release": "", "python_version": software.get("python"),
                         "python_implementation": "CPython", "cpu": {},
                         "mfu": machine_info(meta.get("device") or {}, meta.get("peak"), software,
                                             run.schema.data)},
        "commit_info": {"id": commit.removesuffix("-dirty") or None, "dirty": commit.endswith("-dirty"),
                        "project": "mfu-harness", "branch": None, "time": None},
        "benchmarks": benchmarks,
        "datetime": meta.get("started"),
        "version": pytest_benchmark.__version__,
    }


def _options(meta: dict) -> dict:
    timing = meta.get("timing") or {}
    timer = "cuda-events" if meta.get("device_kind") == "cuda" else "perf_counter_ns"
    return {"timer": timer, "disable_gc": False, "min_rounds": timing.get("min_samples"),
            "max_time": timing.get("max_time_s"), "min_time": 0, "warmup": bool(timing.get("warmup_ms"))}
