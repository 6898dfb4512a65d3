"""`mfu history DIR [DIR ...]`: each case's TFLOPS and MFU across runs, and where its level stepped.

Runs are ordered by start time, or by a software version (`--by torch|triton|harness`, ties by
time). For each case, steps are found by binary segmentation of the series: split where the two
sides' medians fit best (least absolute deviation of log times), keep the split if the two sides
differ by the same rule as `mfu compare` (harness/present/verdict.py on the pooled raw samples: beyond
`--threshold` and significant), and look for more steps on each side. Each step is listed with
the software that changed between the two runs around it, from their meta.json.

The table goes to stdout (console, markdown, csv or json); the plot to `--plot` (PNG, with an SVG
beside it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from harness.present import ranks, roofline, tables, verdict
from harness.present.compare.command import FORMATS, fraction
from harness.present.ratios import speedup
from harness.present.tables import Table
from harness.store import runs
from harness.store.runs import Run

BY = ("time", "torch", "triton", "harness")


@dataclass
class Step:
    case_id: str
    at: int  # index (in run order) of the first run at the new level
    change: float  # throughput change across the step, +0.1 = 10% more TFLOPS
    evidence: str
    changed: str  # what differs between the runs either side of the step


@dataclass
class History:
    """The runs of one device model in order, and each case's steps."""

    device: str
    ordered: list[Run]
    found: dict[str, list[Step]]

    @property
    def notes(self) -> list[str]:
        """One line per pair of neighbouring runs timed with other settings (l2_flush, cuda_graph)."""
        return [f"#{i + 1} was timed with other settings than #{i} ({', '.join(diffs)}): a step between them "
                "may be the settings, not the software" for i in range(1, len(self.ordered))
                if (diffs := runs.timing_differences(self.ordered[i - 1], self.ordered[i]))]

    def params(self, workload: str) -> list[str]:
        """The workload's parameter columns, from the first run whose schema knows it."""
        return next((r.params(workload) for r in self.ordered if r.params(workload)), [])


def add_command(sub) -> None:
    p = sub.add_parser("history", help="each case's TFLOPS and MFU over runs, with level steps",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="DIR",
                   help="run directory, pytest-benchmark JSON file, or a directory holding run directories")
    p.add_argument("--by", choices=BY, default="time", help="order runs by start time or a software version")
    p.add_argument("--ranks", choices=ranks.PER, default="case",
                   help="runs on several GPUs: each case pooled over its ranks (the median; default), or a "
                        "history per rank")
    p.add_argument("--threshold", type=fraction, default=verdict.THRESHOLD,
                   help="smallest level change that is a step, e.g. 5%% (default 5%%)")
    p.add_argument("--format", choices=FORMATS,
                   help="default: console on a terminal (fitted to its width), md in a pipe or log")
    p.add_argument("--plot", type=Path, default=Path("history.png"), metavar="FILE",
                   help="the chart, PNG (an SVG is written beside it; default history.png)")
    p.set_defaults(command=_command)


def _command(args, console: Console) -> int:
    histories = build(runs.find(args.paths), args.by, args.threshold, args.ranks)
    fmt = tables.output_format(args.format)
    render(histories, fmt, console)
    for h in histories:
        path = args.plot if len(histories) == 1 else args.plot.with_stem(f"{args.plot.stem}-{_slug(h.device)}")
        paths = plot(h, path, args.by)
        print(f"plot: {', '.join(map(str, paths))}", file=sys.stdout if fmt == "console" else sys.stderr)
    return 0


def build(found: list[Run], by: str = "time", threshold: float = verdict.THRESHOLD,
          per: str = "case") -> list[History]:
    """One history per device model (a step between two GPUs is not a software step), and with
    per="rank" per rank of distributed runs; otherwise their ranks are pooled per case."""
    by_device: dict[str, list[Run]] = {}
    for run in order(found):
        for rank, view in ranks.views(run, per):
            device = run.device_name if rank is None else f"{run.device_name} rank {rank}"
            by_device.setdefault(device, []).append(view)
    out = []
    for device, group in by_device.items():
        ordered = order(group, by)
        out.append(History(device, ordered, {cid: steps(ordered, cid, threshold) for cid in _case_ids(ordered)}))
    return out


# ------------------------------------------------------------------------------ order and steps


def order(found: list[Run], by: str = "time") -> list[Run]:
    if by == "time":
        return sorted(found, key=lambda r: r.started)
    return sorted(found, key=lambda r: (_version_key(r.software.get(by)), r.started))


def _version_key(text: str | None) -> tuple:
    from packaging.version import InvalidVersion, Version

    if not text:
        return (0,)
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (2, text)


def steps(ordered: list[Run], case_id: str, threshold: float = verdict.THRESHOLD) -> list[Step]:
    """The steps in one case's series (runs where the case is ok), in run order. Each step is
    described against its neighbouring levels, once all steps are known."""
    points = [(i, _samples(r, case_id)) for i, r in enumerate(ordered) if _ok(r, case_id)]
    logs = [math.log(statistics.median(s)) for _, s in points]
    pooled = lambda lo, hi: verdict.Timing.from_samples([x for _, s in points[lo:hi] for x in s])  # noqa: E731
    cuts: list[int] = []

    def split(lo: int, hi: int) -> None:
        if hi - lo < 2:
            return
        k = min(range(lo + 1, hi), key=lambda k: _deviation(logs[lo:k]) + _deviation(logs[k:hi]))
        if verdict.judge(pooled(lo, k), pooled(k, hi), threshold).verdict in ("faster", "slower"):
            cuts.append(k)
            split(lo, k)
            split(k, hi)

    split(0, len(points))
    edges = [0, *sorted(cuts), len(points)]
    found = []
    for lo, k, hi in zip(edges, edges[1:], edges[2:]):
        v = verdict.judge(pooled(lo, k), pooled(k, hi), threshold)
        before, after = ordered[points[k - 1][0]], ordered[points[k][0]]
        found.append(Step(case_id, points[k][0], v.change, v.evidence, changed(before, after)))
    return found


def _deviation(values: list[float]) -> float:
    middle = statistics.median(values)
    return sum(abs(v - middle) for v in values)


def changed(before: Run, after: Run) -> str:
    """'torch 2.5.1 → 2.6.0, git 1a2b3c → 4d5e6f', or that nothing recorded changed."""
    a, b = before.versions(), after.versions()
    if before.device_name != after.device_name:
        a, b = {"device": before.device_name, **a}, {"device": after.device_name, **b}
    short = lambda k, v: v[:10] if k == "git_commit" and v else v  # noqa: E731
    diffs = [f"{'git' if k == 'git_commit' else k} {short(k, a.get(k)) or '?'} → {short(k, b.get(k)) or '?'}"
             for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    diffs += runs.timing_differences(before, after)
    return ", ".join(diffs) or "no recorded software change"


def _ok(run: Run, case_id: str) -> bool:
    row = run.by_case.get(case_id)
    return bool(row and row["status"] == "ok" and row.get("time_ms"))


def _samples(run: Run, case_id: str) -> list[float]:
    """Raw sample times, or the median alone where the run kept none."""
    return run.samples.get(case_id) or [run.by_case[case_id]["time_ms"]]


def _case_ids(ordered: list[Run]) -> list[str]:
    return list(dict.fromkeys(cid for r in ordered for cid, row in r.by_case.items() if row["status"] == "ok"))


# ------------------------------------------------------------------------------ output


def records(h: History) -> list[dict]:
    names = runs.labels(h.ordered)
    out = []
    for cid, case_steps in h.found.items():
        at = {s.at: s for s in case_steps}
        for i, run in enumerate(h.ordered):
            if not _ok(run, cid):
                continue
            row, step = run.by_case[cid], at.get(i)
            out.append({"device": h.device, "case_id": cid, "workload": row["workload"], "backend": row["backend"],
                        "dtype": row["dtype"], "run": i + 1, "name": names[i], "started": run.started,
                        **run.versions(), **{k: run.timing.get(k) for k in runs.TIMING_SETTINGS},
                        "time_ms": row["time_ms"], "tflops": row.get("tflops"),
                        "mfu": row.get("mfu"), "step_change": step.change if step else None,
                        "step_changed": step.changed if step else None})
    return out


def history_tables(h: History, prefix: str = "") -> list[Table]:
    names = runs.labels(h.ordered)
    legend = Table(f"{prefix}Runs, in order",
                   ["#", "name", "started", "device", "versions", "changed from the previous"],
                   [[str(i + 1), names[i], r.started, r.device_name, runs.versions_text(r.versions()),
                     changed(h.ordered[i - 1], r) if i else ""] for i, r in enumerate(h.ordered)],
                   notes=h.notes)
    out = [legend]
    for metric, unit, pattern in (("tflops", "TFLOPS", None), ("mfu", "MFU", "{:.1%}")):
        for wl, cids in _bucket_cases(h).items():
            params = h.params(wl) or ["case_id"]
            cells = []
            for cid in cids:
                known = next(r.by_case[cid] for r in h.ordered if cid in r.by_case)
                at = {s.at: s for s in h.found[cid]}
                values = []
                for i, run in enumerate(h.ordered):
                    value = run.by_case[cid].get(metric) if _ok(run, cid) else None
                    text = tables.tflops(value) if pattern is None else tables.number(value, pattern)
                    mark = (" ▲" if at[i].change > 0 else " ▼") if i in at and text else ""
                    values.append(text + mark)
                labels = [tables.number(known.get(p)) for p in params] + [known["dtype"], known["backend"]]
                cells.append(labels + values)
            if any(v for line in cells for v in line[len(params) + 2:]):
                out.append(Table(f"{prefix}{wl}: {unit} by run (▲ ▼: a step up or down)",
                                 params + ["dtype", "backend"] + [f"#{i + 1}" for i in range(len(h.ordered))], cells,
                                 priorities=[1] * (len(params) + 1) + [0] * (1 + len(h.ordered)),
                                 keys=len(params) + 2))
    found_steps = [s for case_steps in h.found.values() for s in case_steps]
    out.append(Table(f"{prefix}Steps ({len(found_steps)})", ["case", "at run", "change", "evidence", "what changed"],
                     [[s.case_id, f"#{s.at + 1}", f"{s.change:+.1%}", s.evidence, s.changed] for s in found_steps],
                     priorities=[0, 0, 0, 3, 0],
                     notes=[] if found_steps else ["no case changed level beyond the threshold"]))
    return out


def _bucket_cases(h: History) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cid in h.found:
        wl = next(r.by_case[cid]["workload"] for r in h.ordered if cid in r.by_case)
        out.setdefault(wl, []).append(cid)
    return out


def render(histories: list[History], fmt: str, console: Console) -> None:
    if fmt in ("console", "md", "markdown"):
        shown = [t for h in histories
                 for t in history_tables(h, f"{h.device}: " if len(histories) > 1 else "")]
        if fmt == "console":
            tables.print_console(shown, console)
        else:
            print(tables.markdown(shown))
        return
    rows = [r for h in histories for r in records(h)]
    if fmt == "json":
        found = [vars(s) | {"device": h.device, "at": s.at + 1} for h in histories for v in h.found.values() for s in v]
        print(json.dumps({"series": rows, "steps": found}, indent=1, default=str))
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    print(buffer.getvalue(), end="")


def plot(h: History, path: Path, by: str = "time") -> list[Path]:
    """Per workload, panels over the runs: TFLOPS (log scale), TFLOPS relative to the case's first
    run (where steps show best), and MFU where the runs have it. Steps are marked ▲ ▼."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    ordered, found = h.ordered, h.found
    groups = _bucket_cases(h)
    panels = [("tflops", "TFLOPS (log scale)"), ("relative", "TFLOPS relative to the case's first run")]
    if any(r.get("mfu") for run in ordered for r in run.rows):
        panels.append(("mfu", "MFU"))
    fig = Figure(figsize=(5.5 * len(panels) + 3.5, 3.8 * max(1, len(groups)) + 0.6), layout="constrained")
    axes = fig.subplots(max(1, len(groups)), len(panels), squeeze=False)
    ticks = [f"#{i + 1}\n{(r.started or '?')[:10] if by == 'time' else r.software.get(by) or '?'}"
             for i, r in enumerate(ordered)]
    for row_axes, (wl, cids) in zip(axes, groups.items()):
        for ax, (metric, title) in zip(row_axes, panels):
            ax.set_prop_cycle(color=colormaps["tab20"].colors)
            for cid in cids:
                xs, ys = _series(ordered, cid, metric)
                (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=cid.split(":", 1)[-1])
                for s in found[cid]:
                    if s.at in xs:
                        ax.plot([s.at], [ys[xs.index(s.at)]], marker="^" if s.change > 0 else "v", markersize=10,
                                color=line.get_color(), linestyle="")
            for at in sorted({s.at for cid in cids for s in found[cid]}):
                ax.axvline(at - 0.5, color="grey", linestyle=":", linewidth=1)
                ax.annotate(changed(ordered[at - 1], ordered[at]), xy=(at - 0.5, 1),
                            xycoords=("data", "axes fraction"), xytext=(2, -2), textcoords="offset points",
                            rotation=90, va="top", fontsize=7, color="dimgrey")
            ax.set_title(f"{h.device}: {wl}: {title}", fontsize=10)
            ax.set_xticks(range(len(ordered)), ticks, fontsize=7)
            ax.grid(True, alpha=0.3)
            if metric == "tflops":
                ax.set_yscale("log")
            else:
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if len(cids) <= 20:
            row_axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    return roofline.save(fig, path.parent, path.stem)


def _series(ordered: list[Run], case_id: str, metric: str) -> tuple[list[int], list[float]]:
    """Run indices and values of one case: tflops, mfu, or `relative` (the speedup over the first run)."""
    xs = [i for i, r in enumerate(ordered) if _ok(r, case_id)]
    rows = [ordered[i].by_case[case_id] for i in xs]
    if metric == "relative":
        return xs, [speedup(rows[0], r) for r in rows]
    kept = [(i, r[metric]) for i, r in zip(xs, rows) if r.get(metric) is not None]
    return [i for i, _ in kept], [v for _, v in kept]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"
