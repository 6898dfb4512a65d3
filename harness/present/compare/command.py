"""`mfu compare`: backends side by side within a run, and runs against a reference run.

One run goes to within_run.single, several to between_runs.several (the first is the reference);
rendering.render writes the result in the chosen format. `--fail-on-regression` exits 1 when any
case is slower or failed; a usage error (`--out` without a file format, `--baseline` with several
runs, an unknown baseline) is one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from rich.console import Console

from harness.errors import UsageError
from harness.present import ranks, tables, verdict
from harness.present.compare.between_runs import several
from harness.present.compare.comparison import Comparison
from harness.present.compare.rendering import render
from harness.present.compare.within_run import single
from harness.store import runs as runs_mod

FORMATS = ("console", "md", "markdown", "csv", "json")  # markdown: the older name of md


def add_command(sub) -> None:
    p = sub.add_parser("compare", help="compare backends within a run, or runs against the first",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or pytest-benchmark JSON file")
    p.add_argument("--baseline", metavar="BACKEND",
                   help="one run: the backend speedups are against (default: the workload's own)")
    p.add_argument("--threshold", type=fraction, default=verdict.THRESHOLD,
                   help="smallest change that can be a verdict, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--by", choices=ranks.PER, default="case",
                   help="a run on several GPUs: each case pooled over its ranks (the median; default), or "
                        "each rank on its own")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a case is slower or failed")
    p.add_argument("--format", choices=FORMATS,
                   help="default: console on a terminal (fitted to its width), md in a pipe or log")
    p.add_argument("--out", type=Path, metavar="FILE", help="write there instead of stdout (not for console)")
    p.set_defaults(command=_command)


def _joined(parts: list) -> Comparison:
    """One comparison of several ranks' comparisons, each table titled and each record marked with its rank."""
    if len(parts) == 1 and parts[0][0] is None:
        return parts[0][1]
    out = dataclasses.replace(parts[0][1], tables=[], records=[], summary=[], notes=list(parts[0][1].notes))
    for rank, part in parts:
        for t in part.tables:
            out.tables.append(dataclasses.replace(t, title=f"rank {rank}: {t.title}"))
        out.records += [{"rank": rank, **r} for r in part.records]
        out.summary += [{"rank": rank, **r} for r in part.summary]
        for key, missing in part.missing.items():
            out.missing.setdefault(key, []).extend(missing)
    return out


def fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05; anything outside (0, 1) is refused."""
    import argparse

    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction like 0.05 or a percentage like 5% (got {text!r})")
    return value


def _command(args, console: Console) -> int:
    if args.out and args.format in (None, "console"):
        raise UsageError("--out needs --format md, csv or json")
    loaded = [runs_mod.load(p) for p in args.runs]
    if len(loaded) > 1 and args.baseline:
        raise UsageError("--baseline applies to one run; with several, the first run is the reference")
    per_run = [dict(ranks.views(run, args.by)) for run in loaded]
    found = list(dict.fromkeys(rank for views in per_run for rank in views))
    parts = []
    for rank in found:  # None alone, unless --by rank on distributed runs
        views = [v.get(rank) for v in per_run]
        if any(v is None for v in views):
            continue  # a rank that not every run has
        part = single(views[0], args.baseline) if len(views) == 1 else several(views, args.threshold)
        parts.append((rank, part))
    if not parts:
        raise UsageError("--by rank: the runs have no rank in common")
    result = _joined(parts)
    render(result, tables.output_format(args.format), console, args.out)
    return 1 if args.fail_on_regression and result.regressions else 0
