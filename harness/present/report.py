"""`mfu report RUN`: a run's report as markdown and as one self-contained HTML page, with its roofline.

Written into the run directory (or `--out DIR`): report.md, report.html (tables and the roofline
chart inlined as SVG: one file to mail or attach), roofline.png and roofline.svg. The content:
device, peaks and measured ceilings, software, case counts; the roofline chart; the backends side
by side with speedups and geometric means (harness/present/compare/within_run.py); every case
(harness/present/summary.py), with each case's reason (suspect, skipped, ...) listed under its table
rather than in a column, and the parameter columns that hold one value in every row said once in a
note; for a distributed run, one row per case pooled over its ranks and the ranks table
(harness/present/ranks.py). In the HTML,
each roofline point shows its case on hover; the tables fit a 1280 px window
(tests/test_browser.py checks this in headless Chromium).

`write(run_dir)` is what the runner calls at the end of a run: it never raises, since a report is
a by-product that must not fail the measurement it describes.
"""

from __future__ import annotations

import html
import re
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness.errors import UsageError
from harness.present import ranks, roofline, summary, tables
from harness.present.compare import within_run
from harness.present.tables import Table
from harness.store import ids, runs

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
p,li{max-width:70em}table{border-collapse:collapse;margin:.5em 0 .5em;font-size:12px}
th,td{border:1px solid #ccc;padding:2px 4px;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.faster{color:#1a7f37}td.slower,td.failed{color:#c62828}table+ul{font-size:13px;margin-bottom:1.5em}
svg{width:100%;max-width:1100px;height:auto}svg g[id^="point-"]{cursor:help}"""


def add_command(sub) -> None:
    p = sub.add_parser("report", help="write a run's markdown and HTML report with its roofline chart",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: the run directory)")
    p.set_defaults(command=_command)


def _command(args, console: Console) -> int:
    for path in build(Path(args.run), args.out):
        console.print(f"written: {path}")
    return 0


def write(run_dir: Path, console: Console | None = None) -> list[Path]:
    """The report files in the run directory, or [] with a warning if anything went wrong."""
    try:
        return build(Path(run_dir))
    except Exception as exc:  # a report must never fail the run it describes
        message = f"report not written: {type(exc).__name__}: {exc}"
        if console is not None:
            console.print(f"[yellow]{escape(message)}[/]")
        else:
            print(message, file=sys.stderr)
        return []


def build(run_dir: Path, out: Path | None = None) -> list[Path]:
    run = runs.load(run_dir)
    if run.meta.get("source") == "pytest-benchmark":
        raise UsageError(f"{run_dir}: a report needs a run directory, not a pytest-benchmark file")
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = roofline.figure(run.rows, run.meta)
    png, svg = roofline.save(fig, out, hover=[roofline.hover_text(r) for r in roofline.points(run.rows)])
    facts, sections = _facts(run), _sections(run)
    title = f"{run.meta.get('suite', 'run')} on {run.device_name}"
    chart_note = _chart_note(run)

    md = [f"# {title}", ""] + [f"- {f}" for f in facts] + ["", "## Roofline", "", f"![roofline]({png.name})", ""]
    md += [chart_note, "", tables.markdown(sections)]
    (out / "report.md").write_text("\n".join(md))

    svg_text = re.sub(r"^.*?(?=<svg)", "", svg.read_text(), flags=re.S)  # drop the XML prolog
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
            "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
            "<h2>Roofline</h2>", svg_text, f"<p>{html.escape(chart_note)}</p>", tables.to_html(sections),
            "</body></html>"]
    (out / "report.html").write_text("\n".join(page))
    return [out / "report.md", out / "report.html", png, svg]


def _facts(run: runs.Run) -> list[str]:
    meta, peak, ceilings = run.meta, run.meta.get("peak"), run.meta.get("ceilings")
    cases = ranks.by_case(run.rows)  # a distributed run has a row per rank of a case
    counts = Counter(r["status"] for r in cases)
    facts = [f"run: {run.path.name}", f"cases: {len(cases)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
             f"started {run.started or '?'}, finished {meta.get('finished') or 'not (interrupted)'}",
             "software: " + (runs.versions_text(run.versions()) or "not recorded")]
    if peak:
        peaks = ", ".join(f"{d} {v:g}" for d, v in (peak.get("peaks_tflops") or {}).items())
        facts.append(f"datasheet peaks ({peak.get('name')}, {peak.get('origin')}): {peaks} TFLOPS; "
                     f"{peak.get('bandwidth_tbs')} TB/s")
    else:
        facts.append("datasheet peaks: none for this device, so MFU and MBU stay empty")
    if ceilings:
        matmul = ", ".join(f"{d} {v:.4g}" for d, v in (ceilings.get("matmul_tflops") or {}).items())
        bandwidth = ceilings.get("bandwidth_gbps")
        facts.append(f"measured ceilings: {matmul} TFLOPS" + (f"; {bandwidth:.0f} GB/s" if bandwidth else ""))
    else:
        facts.append("measured ceilings: none recorded (run `mfu ceilings` on this device)")
    return facts


def _chart_note(run: runs.Run) -> str:
    shown = len(roofline.points(run.rows))
    if not (run.meta.get("peak") or run.meta.get("ceilings")):
        return (f"{shown} measured cases, coloured by backend and shaped by dtype. This device has no "
                "datasheet peak, so the chart shows the points without roofs.")
    return (f"{shown} measured cases, coloured by backend and shaped by dtype, under each dtype's roof: "
            "solid from the datasheet, dashed from measured ceilings. In report.html, hover over a point "
            "to see its case.")


def _sections(run: runs.Run) -> list[Table]:
    side_by_side = within_run.single(run).tables
    rows = ranks.by_case(run.rows)  # one row per case
    every = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == wl]
        headers, cells = summary.table(mine, wl, notes=False, schema=run.schema)  # reasons go below: a long column is unreadable
        every.append(Table(f"{wl}: every case", headers, cells, [_reason(r) for r in mine if r.get("reason")]))
    keys = set().union(*(r.keys() for r in run.rows))
    by_rank = ranks.table(run.rows)  # None for a single-process run
    return [_constant_columns_as_note(t, keys) for t in side_by_side + every] + ([by_rank] if by_rank else [])


def _constant_columns_as_note(t: Table, keys: set[str]) -> Table:
    """A table whose identity columns (a case's parameters, dtype, backend, status: headers that are
    row keys) holding one value in every row become a note under it: 'same in every row: experts
    128, top_k 8'. Fewer columns, and a table that fits a page."""
    same = [i for i, h in enumerate(t.headers)
            if h in keys and len(t.rows) > 1 and t.rows[0][i] and all(row[i] == t.rows[0][i] for row in t.rows)]
    if not same:
        return t
    keep = [i for i in range(len(t.headers)) if i not in same]
    note = "same in every row: " + ", ".join(f"{t.headers[i]} {t.rows[0][i]}" for i in same)
    return Table(t.title, [t.headers[i] for i in keep], [[row[i] for i in keep] for row in t.rows], [note, *t.notes])


def _reason(row: dict) -> str:
    """A case's note under its table: 'm=4096, n=4096, k=4096 tf32 torch: suspect: 106% of ...'."""
    problem = ids.params(row).replace(",", ", ")
    return f"{problem} {row['dtype']} {row['backend']}: {row['status']}: {row['reason']}"
