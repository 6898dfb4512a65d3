"""`mfu compare`: backends side by side within a run, and runs against a reference run.

One run: per problem, each backend's TFLOPS, MFU and MBU side by side, with its speedup over the
baseline backend (`--baseline`, default the workload's own, e.g. torch for gemm).

Several runs: the first is the reference (A); each other run is matched to it by case_id.
- On the same device (meta.json's device name): Δ (throughput change) and a verdict from
  harness/present/verdict.py: faster or slower only past `--threshold` and significant on raw samples.
- On different devices: the ratio of TFLOPS and of MFU, i.e. how much of each chip the kernel uses.
A case that was ok in A and is error, mismatch or suspect now is `failed`. Cases found in only one
run are listed, not errors. A geometric-mean summary per workload and backend closes the output.
`--fail-on-regression` exits 1 when any case is slower or failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from harness.errors import UsageError
from harness.present import summary, tables, verdict
from harness.present.ratios import geomean, speedup
from harness.present.tables import Table, number, tflops
from harness.store import runs as runs_mod
from harness.store.ids import problem
from harness.store.results import FAILED
from harness.store.runs import Run

FORMATS = ("console", "md", "markdown", "csv", "json")  # markdown: the older name of md
# How each run after the first is compared with it: a code (csv, json) and its words (tables).
MODES = {"same-device": "same device: verdicts", "same-model": "same model, another card: verdicts",
         "cross-device": "another device: TFLOPS and MFU ratios"}
SHOWN_MISSING = 20  # missing case ids listed per run in tables; csv and json list them all


@dataclass
class Comparison:
    tables: list[Table]
    records: list[dict]  # one per case (and per compared run): what csv and json carry
    summary: list[dict]  # geometric means per workload and backend
    runs: list[dict] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)  # e.g. runs timed with other settings than A

    @property
    def regressions(self) -> list[dict]:
        return [r for r in self.records if r.get("verdict") in ("slower", "failed")]


def add_command(sub) -> None:
    p = sub.add_parser("compare", help="compare backends within a run, or runs against the first",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or pytest-benchmark JSON file")
    p.add_argument("--baseline", metavar="BACKEND",
                   help="one run: the backend speedups are against (default: the workload's own)")
    p.add_argument("--threshold", type=fraction, default=verdict.THRESHOLD,
                   help="smallest change that can be a verdict, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a case is slower or failed")
    p.add_argument("--format", choices=FORMATS,
                   help="default: console on a terminal (fitted to its width), md in a pipe or log")
    p.add_argument("--out", type=Path, metavar="FILE", help="write there instead of stdout (not for console)")
    p.set_defaults(command=_command)


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
    if len(loaded) == 1:
        result = single(loaded[0], args.baseline)
    else:
        if args.baseline:
            raise UsageError("--baseline applies to one run; with several, the first run is the reference")
        result = several(loaded, args.threshold)
    render(result, tables.output_format(args.format), console, args.out)
    return 1 if args.fail_on_regression and result.regressions else 0


# ------------------------------------------------------------------------------ one run


def single(run: Run, baseline: str | None = None) -> Comparison:
    """Backends side by side per problem, with speedups over the baseline backend."""
    if baseline and baseline not in {r["backend"] for r in run.rows}:
        known = ", ".join(sorted({r["backend"] for r in run.rows}))
        raise UsageError(f"--baseline: no backend {baseline!r} in {run.path} (it has {known})")
    result = Comparison([], [], [])
    for wl, rows in _by_workload(run.rows).items():
        base = baseline or run.baseline(wl)
        problems = _group(rows, lambda r: r["backend"])
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        if base not in backends:
            base = None
        else:
            backends = [base] + [b for b in backends if b != base]
        for by_backend in problems.values():
            for b in backends:
                r = by_backend.get(b)
                if r is not None:
                    result.records.append({**_identity(r), "status": r["status"], "time_ms": r.get("time_ms"),
                                           "tflops": r.get("tflops"), "mfu": r.get("mfu"), "mbu": r.get("mbu"),
                                           "baseline": base,
                                           "speedup": speedup(by_backend.get(base), r) if b != base else None})
        result.tables.append(summary.side_by_side(rows, wl, base, schema=run.schema))
        result.summary += _single_summary(wl, [r for r in result.records if r["workload"] == wl], base)
    if result.summary:
        result.tables.append(_summary_table(result.summary, ["workload", "backend", "cases", "geomean MFU",
                                                             "geomean speedup"]))
    result.runs = [_describe(run, "A", run.path.name)]
    return result


def _single_summary(wl: str, records: list[dict], base: str | None) -> list[dict]:
    out = []
    for backend, recs in _bucket(records, lambda r: r["backend"]).items():
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            continue
        out.append({"workload": wl, "backend": backend, "cases": len(ok),
                    "geomean MFU": geomean([r["mfu"] for r in ok]),
                    "geomean speedup": geomean([r["speedup"] for r in ok]) if backend != base else None})
    return out


# ------------------------------------------------------------------------------ several runs


def several(runs: list[Run], threshold: float = verdict.THRESHOLD) -> Comparison:
    """Each run after the first against the first, case by case."""
    tags = list(string.ascii_uppercase[: len(runs)]) if len(runs) <= 26 else [str(i + 1) for i in range(len(runs))]
    names = runs_mod.labels(runs)
    ref = runs[0]
    modes = ["reference"] + [_mode(ref, r) for r in runs[1:]]
    result = Comparison([], [], [], runs=[{**_describe(r, t, n), "mode": m}
                                          for r, t, n, m in zip(runs, tags, names, modes)], threshold=threshold)
    settings = {tags[j]: runs_mod.timing_differences(ref, runs[j]) for j in range(1, len(runs))}
    result.notes = [f"{tag} was timed with other settings than A ({', '.join(diffs)}): its times are not "
                    "like for like" for tag, diffs in settings.items() if diffs]
    legend = Table("Runs", ["run", "name", "device", "versions", "started", "compared with A"],
                   [[d["tag"], d["name"], d["device"], runs_mod.versions_text(d["versions"]), d["started"],
                     MODES.get(d["mode"], d["mode"])] for d in result.runs], notes=list(result.notes))
    by_case = [r.by_case for r in runs]
    order = list(dict.fromkeys(cid for cases in by_case for cid in cases))
    for j in range(1, len(runs)):
        for cid in order:
            if cid in by_case[0] or cid in by_case[j]:
                result.records.append({**_pair(cid, by_case[0].get(cid), by_case[j].get(cid), ref, runs[j],
                                                 tags[j], modes[j], threshold),
                                       "settings_changed": ", ".join(settings[tags[j]])})
        for side, other in ((0, j), (j, 0)):
            gone = [cid for cid in by_case[side] if cid not in by_case[other]]
            if gone:
                result.missing[f"only in {tags[side]}, not in {tags[other]}"] = gone
    params = {wl: next((r.params(wl) for r in runs if r.params(wl)), []) for wl in _by_workload(result.records)}
    result.tables = [legend] + _pair_tables(result.records, by_case, tags, modes, params)
    result.summary = _pair_summary(result.records)
    if result.summary:  # runs with no case in common have nothing to average
        result.tables.append(_summary_table(result.summary, ["workload", "backend", "run", "cases", "faster",
                                                             "slower", "same", "inconclusive", "failed",
                                                             "geomean ×TFLOPS", "geomean ×MFU"]))
    for what, ids in result.missing.items():
        shown = ids[:SHOWN_MISSING] + ([f"... and {len(ids) - SHOWN_MISSING} more"] if len(ids) > SHOWN_MISSING else [])
        result.tables.append(Table(f"{len(ids)} cases {what}", [], [], notes=shown))
    return result


def _mode(ref: Run, run: Run) -> str:
    if run.device_name != ref.device_name:
        return "cross-device"
    ids = {ref.device.get("uuid"), run.device.get("uuid")}
    return "same-device" if len(ids) == 1 or None in ids else "same-model"


def _pair(cid: str, a: dict | None, b: dict | None, ref: Run, run: Run, tag: str, mode: str,
          threshold: float) -> dict:
    known = a or b
    rec = {**_identity(known), "run": tag, "mode": mode,
           "status_ref": a and a["status"], "status_run": b and b["status"],
           "tflops_ref": a and a.get("tflops"), "tflops_run": b and b.get("tflops"),
           "mfu_ref": a and a.get("mfu"), "mfu_run": b and b.get("mfu"),
           "time_ms_ref": a and a.get("time_ms"), "time_ms_run": b and b.get("time_ms"),
           "change": None, "tflops_ratio": None, "mfu_ratio": None, "verdict": "", "evidence": "", "p_value": None}
    if a is None or b is None:
        return {**rec, "verdict": "missing", "evidence": f"not in {'A' if a is None else tag}"}
    if a["status"] == "ok" and b["status"] in FAILED:
        return {**rec, "verdict": "failed", "evidence": f"ok → {b['status']}: {b.get('reason') or ''}".strip()}
    if not (a["status"] == b["status"] == "ok"):
        return {**rec, "evidence": f"{a['status']} → {b['status']}"}
    if mode == "cross-device":
        return {**rec, "tflops_ratio": speedup(a, b),
                "mfu_ratio": _ratio(b.get("mfu"), a.get("mfu"))}
    v = verdict.judge(verdict.Timing.of(a, ref.samples.get(cid)), verdict.Timing.of(b, run.samples.get(cid)),
                      threshold)
    return {**rec, "change": v.change, "verdict": v.verdict, "evidence": v.evidence, "p_value": v.p_value}


def _pair_tables(records: list[dict], by_case: list[dict], tags: list[str], modes: list[str],
                 params_of: dict[str, list[str]] | None = None) -> list[Table]:
    out = []
    metric = "tflops" if any(r.get("tflops") for cases in by_case for r in cases.values()) else "time_ms"
    unit = "TFLOPS" if metric == "tflops" else "ms"
    for wl, recs in _by_workload(records).items():
        params = (params_of or {}).get(wl) or ["case_id"]
        headers = params + ["dtype", "backend", f"A {unit}"]
        for tag, mode in zip(tags[1:], modes[1:]):
            headers += [f"{tag} {unit}"] + ([f"{tag} ×TFLOPS", f"{tag} ×MFU"] if mode == "cross-device"
                                            else [f"{tag} Δ", f"{tag} verdict", f"{tag} evidence"])
        cells, hidden = [], 0
        for cid, per_run in _group(recs, lambda r: r["run"], key=lambda r: r["case_id"]).items():
            first = next(iter(per_run.values()))
            if all(r["status_ref"] == r["status_run"] == "skipped" for r in per_run.values()):
                hidden += 1
                continue
            known = next((cases[cid] for cases in by_case if cid in cases), {})
            line = [number(known.get(p)) for p in params] + [first["dtype"], first["backend"],
                                                           _side(first, "ref", metric)]
            for tag, mode in zip(tags[1:], modes[1:]):
                r = per_run.get(tag)
                if r is None:  # in neither this run nor A
                    line += [""] * (3 if mode == "cross-device" else 4)
                    continue
                line.append(_side(r, "run", metric))
                if mode == "cross-device":
                    line += [number(r["tflops_ratio"], "{:.2f}"), number(r["mfu_ratio"], "{:.2f}")]
                else:
                    line += [number(r["change"], "{:+.1%}"), r["verdict"], r["evidence"]]
            cells.append(line)
        notes = [f"{hidden} cases skipped in every run are not shown"] if hidden else []
        priorities = [0 if h.endswith(("verdict", "Δ", unit)) else 0 if h == "backend" else 3 if "evidence" in h
                      else 2 if "×" in h else 1 for h in headers]
        out.append(Table(wl, headers, cells, notes, priorities=priorities, keys=len(params) + 2))
    return out


def _side(rec: dict, side: str, metric: str) -> str:
    status = rec[f"status_{side}"]
    if status is None:
        return "missing"
    if status != "ok":
        return status
    value = rec[f"{metric}_{side}"]
    return tflops(value) if metric == "tflops" else number(value, "{:.4g}")


def _pair_summary(records: list[dict]) -> list[dict]:
    out = []
    for (wl, backend, tag), recs in _bucket(records, lambda r: (r["workload"], r["backend"], r["run"])).items():
        both = [r for r in recs if r["status_ref"] == r["status_run"] == "ok"]
        counts = {v: sum(1 for r in recs if r["verdict"] == v) for v in ("faster", "slower", "same", "inconclusive", "failed")}
        ratios = [speedup(*_sides(r)) for r in both]
        if not both and not any(counts.values()):
            continue
        out.append({"workload": wl, "backend": backend, "run": f"{tag} vs A", "cases": len(both), **counts,
                     "geomean ×TFLOPS": geomean(ratios), "geomean ×MFU": geomean([r["mfu_ratio"] for r in both])})
    return out


# ------------------------------------------------------------------------------ shared pieces


def _summary_table(summary: list[dict], columns: list[str]) -> Table:
    def cell(row, c):
        v = row.get(c)
        if c.startswith("geomean"):
            return number(v, "{:.1%}" if "MFU" in c and "×" not in c else "{:.3f}")
        return str(v) if v not in (None, 0) or c == "cases" else ""

    return Table("Geometric means per workload and backend", columns,
                 [[cell(r, c) for c in columns] for r in summary])


def _bucket(rows: list[dict], key) -> dict:
    """{key(row): [rows]}, in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _by_workload(rows: list[dict]) -> dict[str, list[dict]]:
    return _bucket(rows, lambda r: r["workload"])


def _group(rows: list[dict], inner, key=None) -> dict:
    """{outer key: {inner key: row}}, outer by problem (or `key`), in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault((key or problem)(r), {})[inner(r)] = r
    return out


def _identity(row: dict) -> dict:
    return {k: row.get(k) for k in ("case_id", "workload", "backend", "dtype")}


def _describe(run: Run, tag: str, name: str) -> dict:
    return {"tag": tag, "name": name, "path": str(run.path), "device": run.device_name,
            "versions": run.versions(), "started": run.started,
            "timing": {k: run.timing.get(k) for k in runs_mod.TIMING_SETTINGS}}


def _ratio(num, den) -> float | None:
    return num / den if num is not None and den else None


def _sides(rec: dict) -> tuple[dict, dict]:
    """A paired record's reference and run as rows, for ratios.speedup."""
    return tuple({"status": rec[f"status_{s}"], "time_ms": rec[f"time_ms_{s}"]} for s in ("ref", "run"))


# ------------------------------------------------------------------------------ output


def render(result: Comparison, fmt: str, console: Console, out: Path | None = None) -> None:
    if fmt == "console":
        tables.print_console(result.tables, console)
        if result.regressions:
            console.print(f"[red]{len(result.regressions)} regressions (slower or failed)[/]")
        return
    if fmt in ("md", "markdown"):
        text = tables.markdown(result.tables)
        if result.regressions:
            text += f"\n**{len(result.regressions)} regressions (slower or failed)**\n"
    elif fmt == "json":
        text = json.dumps({"runs": result.runs, "threshold": result.threshold, "cases": result.records,
                           "summary": result.summary, "missing": result.missing, "notes": result.notes},
                          indent=1, default=str) + "\n"
    else:
        buffer = io.StringIO()
        columns = list(dict.fromkeys(k for r in result.records for k in r))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in result.records)
        text = buffer.getvalue()
    if out:
        out.write_text(text)
        console.print(f"written: {out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
