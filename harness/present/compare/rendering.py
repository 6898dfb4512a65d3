"""How a comparison looks: its tables (the legend of runs, a table per workload, the geometric means,
the missing cases) and its output in each format (console, md, csv, json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console

from harness.present import tables
from harness.present.compare.comparison import MODES, Comparison, by_workload, group
from harness.present.tables import Table, number, tflops
from harness.store import runs as runs_mod

SHOWN_MISSING = 20  # missing case ids listed per run in tables; csv and json list them all
WITHIN_RUN_SUMMARY = ["workload", "backend", "cases", "geomean MFU", "geomean speedup"]
BETWEEN_RUNS_SUMMARY = ["workload", "backend", "run", "cases", "faster", "slower", "same", "inconclusive",
                        "failed", "geomean ×TFLOPS", "geomean ×MFU"]


def between_runs_tables(result: Comparison, by_case: list[dict], tags: list[str], modes: list[str],
                        params_of: dict[str, list[str]]) -> list[Table]:
    """The legend of runs, one table per workload, the geometric means and the missing cases."""
    legend = Table("Runs", ["run", "name", "device", "versions", "started", "compared with A"],
                   [[d["tag"], d["name"], d["device"], runs_mod.versions_text(d["versions"]), d["started"],
                     MODES.get(d["mode"], d["mode"])] for d in result.runs], notes=list(result.notes))
    out = [legend] + _pair_tables(result.records, by_case, tags, modes, params_of)
    if result.summary:  # runs with no case in common have nothing to average
        out.append(summary_table(result.summary, BETWEEN_RUNS_SUMMARY))
    for what, ids in result.missing.items():
        shown = ids[:SHOWN_MISSING] + ([f"... and {len(ids) - SHOWN_MISSING} more"] if len(ids) > SHOWN_MISSING else [])
        out.append(Table(f"{len(ids)} cases {what}", [], [], notes=shown))
    return out


def _pair_tables(records: list[dict], by_case: list[dict], tags: list[str], modes: list[str],
                 params_of: dict[str, list[str]] | None = None) -> list[Table]:
    out = []
    metric = "tflops" if any(r.get("tflops") for cases in by_case for r in cases.values()) else "time_ms"
    unit = "TFLOPS" if metric == "tflops" else "ms"
    for wl, recs in by_workload(records).items():
        params = (params_of or {}).get(wl) or ["case_id"]
        headers = params + ["dtype", "backend", f"A {unit}"]
        for tag, mode in zip(tags[1:], modes[1:]):
            headers += [f"{tag} {unit}"] + ([f"{tag} ×TFLOPS", f"{tag} ×MFU"] if mode == "cross-device"
                                            else [f"{tag} Δ", f"{tag} verdict", f"{tag} evidence"])
        cells, hidden = [], 0
        for cid, per_run in group(recs, lambda r: r["run"], key=lambda r: r["case_id"]).items():
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


def summary_table(summary: list[dict], columns: list[str]) -> Table:
    def cell(row, c):
        v = row.get(c)
        if c.startswith("geomean"):
            return number(v, "{:.1%}" if "MFU" in c and "×" not in c else "{:.3f}")
        return str(v) if v not in (None, 0) or c == "cases" else ""

    return Table("Geometric means per workload and backend", columns,
                 [[cell(r, c) for c in columns] for r in summary])


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
