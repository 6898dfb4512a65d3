"""The run's tables: summary.md (every column, markdown) and the console summary at the end of
`mfu run` (and `mfu compare RUN`): by default one row per problem with the backends side by side
(`side_by_side`), or one row per case with chosen columns (`long_table`).

Rows are grouped per problem so the backends of one problem sit together. Only `ok` rows show
numbers: a suspect, mismatched or failed case shows its status and reason instead, never a
figure that cannot be trusted.

A distributed run (more than one rank) has one row per rank of each single-GPU case: its tables
show one row per case, pooled over the ranks (harness/present/ranks.py `by_case`), followed by the
ranks table (median, slowest rank, spread, stragglers, and a line per straggler).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich.console import Console

from harness.present import layers, ranks, tables
from harness.present.ratios import speedup
from harness.present.tables import Footnotes, Table, number, tflops
from harness.store import columns
from harness.store.ids import problem
from harness.store.schema import Schema

# The columns the summary shows (name, header, format), in the registry's order: the measured ones
# (known only after timing) down to display priority 6, and of the formulas only `bound`.
MEASURED_KINDS = ("timing", "metric", "ceiling", "clock", "telemetry")
NUMBERS = [(c.name, c.title, c.fmt) for c in columns.COLUMNS
           if (c.kind in MEASURED_KINDS and c.priority <= 6) or c.name == "bound"]


def table(rows: list[dict], workload: str, notes: bool = True,
          schema: Schema | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for one workload's rows; columns empty in every row are left out.
    `schema` is the run's (harness/store/schema.py); without one, the workload code running now says."""
    declared = (schema or _live_schema(workload)).workload(workload)
    params, extras, baseline = declared["params"], list(declared["summary_columns"]), declared["baseline"]
    versus = _versus_baseline(rows, baseline)
    headers = (params + ["dtype", "backend", "status"] + [h for _, h, _ in NUMBERS] + extras
               + ([f"× {baseline}"] if baseline else []) + (["note"] if notes else []))
    cells = []
    for r in sorted(rows, key=problem):
        ok = r["status"] == "ok"
        numbers = [fmt(r.get(k), f) if ok else "" for k, _, f in NUMBERS]
        cells.append([fmt(r.get(p), "{}") for p in params] + [r["dtype"], r["backend"], r["status"]]
                     + numbers + [fmt(r.get(k), "{:.4g}" if isinstance(r.get(k), float) else "{}") for k in extras]
                     + ([fmt(versus.get(r["case_id"]), "{:.2f}")] if baseline else [])
                     + ([r.get("reason") or ""] if notes else []))
    keep = [i for i in range(len(headers)) if any(row[i] for row in cells)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in cells]


def _live_schema(workload: str) -> Schema:
    """The workload's declaration from the code itself: for the runner, which has it loaded."""
    from harness import workloads

    return Schema({"workloads": {workload: workloads.REGISTRY[workload].declaration()}})


def _versus_baseline(rows: list[dict], baseline: str | None) -> dict[str, float]:
    """Each row's speedup over the baseline backend's row of the same problem (ratios.speedup)."""
    base = {problem(r): r for r in rows if r["backend"] == baseline}
    return {r["case_id"]: speedup(base.get(problem(r)), r) for r in rows}


def fmt(value, pattern: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    return "" if value is None or value == "" else pattern.format(value)


def markdown(rows: list[dict], meta: dict) -> str:
    rank_rows, rows = _one_row_per_case(rows)
    counts = Counter(r["status"] for r in rows)
    dev = meta.get("device", {})
    peak = meta.get("peak") or {}
    lines = [
        f"# {meta.get('suite', 'run')} on {dev.get('name', '?')}",
        "",
        f"- cases: {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
        *([_ranks_line(rank_rows)] if rank_rows else []),
        f"- peaks: {peak.get('name', 'none (MFU and MBU left empty)')}"
        + (f" ({peak.get('origin')}; {peak.get('reason')})" if peak else ""),
        f"- measured ceilings: {_ceilings_line(meta.get('ceilings'))}",
        f"- started {meta.get('started', '?')}, finished {meta.get('finished') or 'not (interrupted)'}",
        "",
    ]
    schema = Schema(meta["schema"]) if meta.get("schema") else None
    lines += callouts(rows)
    for wl in dict.fromkeys(r["workload"] for r in rows):
        headers, cells = table([r for r in rows if r["workload"] == wl], wl, schema=schema)
        lines += [f"## {wl}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        lines.append("")
    if rank_rows and (ranks_table := ranks.table(rank_rows)):
        lines.append(tables.markdown([ranks_table]))
    return "\n".join(lines)


def _one_row_per_case(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """A distributed run's rank rows (empty for a single-process run) and its rows with one row
    per case."""
    return (rows if ranks.distributed(rows) else []), ranks.by_case(rows)


def _ranks_line(rank_rows: list[dict]) -> str:
    """'- ranks: 16 GPUs on 2 host(s) (node-a: 8, node-b: 8); ...'."""
    gpus = {(r.get("host"), r.get("rank")) for r in rank_rows if r.get("rank") is not None}
    world = max(r.get("world_size") or 1 for r in rank_rows)
    hosts = Counter(h for h, _ in gpus)
    where = ", ".join(f"{h or '?'}: {n}" for h, n in hosts.items())
    return f"- ranks: {world} GPUs on {len(hosts)} host(s) ({where}); each single-GPU case ran on all at once"


def _ceilings_line(ceilings: dict | None) -> str:
    if not ceilings:
        return "none (run `mfu ceilings` on this device for mfu_ceiling and mbu_ceiling)"
    matmul = ", ".join(f"{d} {v:.1f} TFLOPS" for d, v in ceilings["matmul_tflops"].items())
    bandwidth = ceilings.get("bandwidth_gbps")
    return f"{matmul}; {bandwidth:.0f} GB/s; measured {ceilings['measured']}" if bandwidth else matmul


CALLOUTS = [
    ("New best: a case beat a stored ceiling, which now stands at its rate (the rows are rated against it)",
     lambda r: r.get("new_best"), lambda r: r["new_best"]),
    ("Suspect: above a physical limit, so no number is reported",
     lambda r: r["status"] == "suspect", lambda r: r["reason"]),
    ("Noisy: the median's confidence interval stayed wider than rel_ci",
     lambda r: r["status"] == "ok" and r.get("reason"), lambda r: r["reason"]),
    ("Compute only: a layer on a group of one rank, so no communication was measured",
     lambda r: r["status"] == "ok" and r.get("compute_ms") is not None and r.get("comm_ms") is None,
     lambda r: r.get("link_note") or "no communication phase"),
    ("Drift between passes larger than the noise within them",
     lambda r: r.get("drift") is not None and r.get("noise") is not None and r["drift"] > 2 * r["noise"],
     lambda r: f"drift {r['drift']:.1%}, noise ±{r['noise']:.1%}"),
]
WORST_THROTTLED = 5  # the call-out names this many throttled cases, lowest clock first, and counts the rest


def callouts(rows: list[dict]) -> list[str]:
    """Markdown sections naming the cases a reader must not take at face value."""
    lines = []
    for title, picks, says in CALLOUTS:
        chosen = [r for r in rows if picks(r)]
        if chosen:
            lines += [f"**{title}:**", ""] + [f"- `{r['case_id']}`: {says(r)}" for r in chosen] + [""]
    return lines + _throttled(rows)


def _throttled(rows: list[dict]) -> list[str]:
    """The worst throttled cases, and counts for the rest and for the power cap that cost nothing."""
    ok = [r for r in rows if r["status"] == "ok"]
    hit = sorted((r for r in ok if r.get("throttled")), key=_clock_share)
    capped = [r for r in ok if not r.get("throttled") and "sw_power_cap" in (r.get("throttle") or "")]
    lines = []
    if hit:
        lines += ["**Throttled: the clock fell more than 10% under the one the peak assumes, or a thermal "
                  "or hardware slowdown acted (MFU@clock is the share of the chip at the clock it ran):**", ""]
        lines += [f"- `{r['case_id']}`: {_throttle_says(r)}" for r in hit[:WORST_THROTTLED]]
        if len(hit) > WORST_THROTTLED:
            lines.append(f"- and {len(hit) - WORST_THROTTLED} more (the `throttled` column)")
        lines.append("")
    if capped:
        lines += [f"{len(capped)} more case(s) ran at the power cap (sw_power_cap) with their clock within 10% "
                  "of the peak's: normal under dense GEMMs, not called throttled.", ""]
    return lines


def _clock_share(r: dict) -> float:
    clock, ref = r.get("sm_clock_mhz"), r.get("peak_clock_mhz")
    return clock / ref if clock and ref else 1.0


def _throttle_says(r: dict) -> str:
    parts = []
    if r.get("sm_clock_mhz") and r.get("peak_clock_mhz"):
        parts.append(f"SM clock {r['sm_clock_mhz']:.0f} MHz, {_clock_share(r):.0%} of the peak's "
                     f"{r['peak_clock_mhz']:.0f} MHz")
    if r.get("mfu") is not None and r.get("mfu_at_clock") is not None:
        parts.append(f"MFU {r['mfu']:.1%}, {r['mfu_at_clock']:.1%} at that clock")
    if r.get("throttle"):
        parts.append(f"reasons: {r['throttle']}")
    return "; ".join(parts) or "throttled"


@dataclass(frozen=True)
class View:
    """How the console shows a run: `side` (one row per problem, backends side by side) or `long`
    (one row per case, columns chosen by `columns`/`wide`); and in which format."""

    form: str = "side"
    columns: str | None = None  # --columns spec, e.g. "+power_w,-gbps"
    wide: bool = False
    fmt: str = "console"


# The long table's compact default, after the problem's parameters and before one workload column.
COMPACT = ["dtype", "backend", "status", "time_ms", "tflops", "gbps", "mfu", "mbu"]
NOT_SHOWN = {"case_id", "workload", "reason", "log_tail", "pass"}  # in the row, not a table column


def console_tables(rows: list[dict], view: View = View()) -> list[Table]:
    """The run's summary as Tables: per workload, side by side or long; skipped rows only counted
    when a whole problem was skipped on every backend. A distributed run's tables have one row per
    case, and the ranks table follows them."""
    rank_rows, rows = _one_row_per_case(rows)
    out = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == wl]
        declared = _live_schema(wl).workload(wl)
        if view.form == "side" and declared.get("phases"):
            out.append(layers.table(mine, wl, declared["params"]))
        elif view.form == "side":
            out.append(side_by_side(mine, wl))
        else:
            out.append(long_table(mine, wl, view.columns, view.wide))
    if rank_rows and (ranks_table := ranks.table(rank_rows)):
        out.append(ranks_table)
    return out


def print_console(rows: list[dict], console: Console, view: View = View()) -> None:
    """The measured rows at the end of a run, in the view's form and format."""
    tables.emit(console_tables(rows, view), view.fmt, console, records=rows)


def identity_columns(rows: list[dict], params: list[str]) -> tuple[list[str], list[int]]:
    """The problem's parameter columns and their priorities: a parameter that a preset's label
    determines (a model's width, say) is dropped early when narrow; the label stays."""
    params = list(params)
    labels = [r.get("label") for r in rows]
    priorities = []
    for p in params:
        seen: dict = {}
        determined = p != "label" and all(labels) and all(seen.setdefault(l, r.get(p)) == r.get(p)
                                                         for l, r in zip(labels, rows))
        priorities.append(4 if determined else 1)
    return params, priorities


def side_by_side(rows: list[dict], workload: str, baseline: str | None = None,
                 schema: Schema | None = None) -> Table:
    """One row per problem: each backend's throughput (TFLOPS, or GB/s when the problem is memory
    bound) and its speedup over the baseline backend; a case that is not ok shows its status, with
    the reason as a numbered note. `schema`: the run's (without one, the workload code says)."""
    declared = (schema or _live_schema(workload)).workload(workload)
    params, priorities = identity_columns(rows, declared["params"])
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    base = baseline or declared["baseline"]
    if base in backends:
        backends = [base] + [b for b in backends if b != base]
    else:
        base = None
    problems: dict[str, dict[str, dict]] = {}
    for r in rows:
        problems.setdefault(problem(r), {})[r["backend"]] = r
    notes = Footnotes()
    headers = params + ["dtype", "unit"]
    short = list(headers)
    prios = priorities + [1, 0]
    for k, b in enumerate(backends):
        headers.append(b)
        short.append(chr(ord("A") + k) if k < 26 else b)
        prios.append(0)
        if base and b != base:
            headers.append(f"×{base}" if len(backends) == 2 else "×")
            short.append("×")
            prios.append(2)
    cells, all_skipped = [], 0
    for by_backend in problems.values():
        if all(r["status"] == "skipped" for r in by_backend.values()):
            all_skipped += 1
            continue
        first = next(iter(by_backend.values()))
        memory = first.get("bound") == "memory"
        # a collective (workloads/comm.py): bus bandwidth, or with one rank (no bus) algbw; a layer's
        # rates are its communication phase's, so it shows TFLOPS like any kernel
        link = next((c for c in ("busbw_gbps", "algbw_gbps") if any(r.get(c) is not None and r.get("compute_ms") is None
                                                                    for r in by_backend.values())), None)
        unit = columns.get(link).title if link else "GB/s" if memory else "TFLOPS"
        line = [param_cell(p, first.get(p)) for p in params] + [first.get("dtype") or "", unit]
        for b in backends:
            r = by_backend.get(b)
            if r is None:
                line.append("")
            elif r["status"] != "ok":
                line.append(r["status"] + notes.mark(r.get("reason")))
            elif link:
                line.append(number(r.get(link), "{:.4g}"))
            else:
                line.append(number(r.get("gbps"), "{:.4g}") if memory else tflops(r.get("tflops")))
            if base and b != base:
                line.append(number(speedup(by_backend.get(base), r), "{:.2f}×"))
        cells.append(line)
    title = workload + (f": throughput by backend, × = speedup over {base}" if base else ": throughput by backend")
    extra = [f"{all_skipped} problems skipped on every backend (reasons in summary.md)"] if all_skipped else []
    return Table(title, headers, cells, extra + notes.notes(), priorities=prios, keys=len(params) + 1,
                 short_headers=short)


def long_table(rows: list[dict], workload: str, spec: str | None = None, wide: bool = False,
               schema: Schema | None = None) -> Table:
    """One row per case: the problem, then the columns chosen from the compact default, --columns
    and --wide; a reason is a numbered note on the status."""
    declared = (schema or _live_schema(workload)).workload(workload)
    params, param_priorities = identity_columns(rows, declared["params"])
    extras = list(declared["summary_columns"])
    present = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in NOT_SHOWN and k not in params]
    available = [c for c in COMPACT + extras if c in present or c in COMPACT] + \
        [c for c in present if c not in COMPACT and c not in extras]
    chosen = tables.choose(available, COMPACT + extras[:1], spec, wide)
    notes = Footnotes()
    headers = params + [columns.get(c).title for c in chosen]
    prios = param_priorities + [min(columns.get(c).priority, 1) if c in ("dtype",) else columns.get(c).priority
                                for c in chosen]
    cells = []
    order = {p: i for i, p in enumerate(dict.fromkeys(map(problem, rows)))}
    for r in sorted(rows, key=lambda r: order[problem(r)]):
        ok = r["status"] == "ok"
        line = [param_cell(p, r.get(p)) for p in params]
        for c in chosen:
            if c == "status":
                line.append(r["status"] + notes.mark(r.get("reason")))
            elif columns.get(c).kind in ("timing", "metric", "ceiling", "clock", "telemetry") and not ok:
                line.append("")
            else:
                line.append(tflops(r.get(c)) if c == "tflops" else columns.get(c).cell(r.get(c)))
        cells.append(line)
    identity = len(params) + sum(1 for c in chosen if c in ("dtype", "backend"))
    return Table(workload, headers, cells, notes.notes(), priorities=prios, keys=identity)


def param_cell(name: str, value) -> str:
    return columns.param(name).cell(value)
