"""The run's comparison table, built once and rendered to markdown (summary.md) or the console.

Rows are grouped per problem so the backends of one problem sit together. Only `ok` rows show
numbers: a suspect, mismatched or failed case shows its status and reason instead, never a
figure that cannot be trusted.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from harness import columns
from harness.schema import Schema

# The columns the summary shows (name, header, format), in the registry's order: the measured ones
# (known only after timing) down to display priority 6, and of the formulas only `bound`.
MEASURED_KINDS = ("timing", "metric", "ceiling", "clock", "telemetry")
NUMBERS = [(c.name, c.title, c.fmt) for c in columns.COLUMNS
           if (c.kind in MEASURED_KINDS and c.priority <= 6) or c.name == "bound"]


def table(rows: list[dict], workload: str, notes: bool = True,
          schema: Schema | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for one workload's rows; columns empty in every row are left out.
    `schema` is the run's (harness/schema.py); without one, the workload code running now says."""
    declared = (schema or _live_schema(workload)).workload(workload)
    params, extras, baseline = declared["params"], list(declared["summary_columns"]), declared["baseline"]
    versus = _versus_baseline(rows, baseline)
    headers = (params + ["dtype", "backend", "status"] + [h for _, h, _ in NUMBERS] + extras
               + ([f"× {baseline}"] if baseline else []) + (["note"] if notes else []))
    cells = []
    for r in sorted(rows, key=lambda r: r["case_id"].rsplit(":", 1)[0]):
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
    """Each ok row's throughput over the baseline backend's on the same problem."""
    problem = lambda r: r["case_id"].rsplit(":", 1)[0]  # noqa: E731
    base = {problem(r): r["tflops"] for r in rows
            if r["backend"] == baseline and r["status"] == "ok" and r.get("tflops")}
    return {r["case_id"]: r["tflops"] / base[problem(r)] for r in rows
            if r["status"] == "ok" and problem(r) in base and r.get("tflops")}


def fmt(value, pattern: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    return "" if value is None or value == "" else pattern.format(value)


def markdown(rows: list[dict], meta: dict) -> str:
    counts = Counter(r["status"] for r in rows)
    dev = meta.get("device", {})
    peak = meta.get("peak") or {}
    lines = [
        f"# {meta.get('suite', 'run')} on {dev.get('name', '?')}",
        "",
        f"- cases: {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
        f"- peaks: {peak.get('name', 'none (MFU and MBU left empty)')}"
        + (f" ({peak.get('origin')}; {peak.get('reason')})" if peak else ""),
        f"- measured ceilings: {_ceilings_line(meta.get('ceilings'))}",
        f"- started {meta.get('started', '?')}, finished {meta.get('finished') or 'not (interrupted)'}",
        "",
    ]
    lines += callouts(rows)
    schema = Schema(meta["schema"]) if meta.get("schema") else None
    for wl in dict.fromkeys(r["workload"] for r in rows):
        headers, cells = table([r for r in rows if r["workload"] == wl], wl, schema=schema)
        lines += [f"## {wl}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        lines.append("")
    return "\n".join(lines)


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


def print_console(rows: list[dict], console: Console) -> None:
    """The measured rows as a table; skipped rows are only counted (summary.md lists them)."""
    for wl in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == wl]
        shown = [r for r in mine if r["status"] != "skipped"]
        if shown:
            headers, cells = table(shown, wl)
            numeric = {h for _, h, _ in NUMBERS}
            t = Table(title=wl)
            for h in headers:
                t.add_column(h, justify="right" if h in numeric else "left", overflow="fold")
            for row in cells:
                t.add_row(*row)
            console.print(t)
        skipped = len(mine) - len(shown)
        if skipped:
            console.print(f"{wl}: {skipped} skipped (reasons in summary.md)")
