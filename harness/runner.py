"""Run a suite: every case (once per pass with --repeat), recorded as it finishes.

Each row is appended to cases.jsonl and its samples to samples.jsonl the moment the case ends
(harness/case.py runs one case). Ctrl-C stops the loop; the tables are still written, and
`--resume` continues where it stopped. With `--repeat N` the passes are interleaved (all cases,
then all again), so slow drift (clocks, temperature) shows up as differences between passes; the
final row pools the passes' samples and reports `drift`, the spread of the pass medians.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import ceilings, environment, report, summary, workloads
from harness.case import Context, context, finish_row, run_case
from harness.config import Case, Suite
from harness.results import FAILED, RunDir

EXIT_INTERRUPTED = 130
WORST_FIRST = ("error", "mismatch", "suspect", "skipped", "ok")


def run(suite: Suite, device: str, out: Path, console: Console, resume: bool = False, repeat: int = 1) -> int:
    """Run the suite into `out` (continuing it when resume is set); return the exit code."""
    run_dir = RunDir(out)
    ctx = context(device, suite.timing)
    previous = run_dir.read_meta() if resume else {}
    repeat = previous.get("repeat", repeat)
    done = {(r["case_id"], r.get("pass", 0)) for r in run_dir.rows() if r["status"] != "error"} if resume else set()
    meta = _meta(suite, ctx, previous, repeat)
    run_dir.write_meta(meta)

    todo = [(i, c) for i in range(repeat) for c in suite.cases if (c.case_id, i) not in done]
    _announce(console, suite, ctx, out, repeat)
    if resume:
        console.print(f"resuming {out}: {len(suite.cases) * repeat - len(todo)} done, {len(todo)} to run")
    interrupted = False
    try:
        with _progress(console) as progress:
            task = progress.add_task("", total=len(todo))
            for pass_index, case in todo:
                progress.update(task, description=_short(case, pass_index, repeat))
                row, samples = run_case(case, ctx)
                if repeat > 1:
                    row["pass"] = pass_index
                if samples:
                    run_dir.append_samples(row["case_id"], samples, row.get("pass"))
                run_dir.append(row)
                progress.console.print(_line(row))
                progress.advance(task)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: writing what finished[/]")

    rows = _final_rows(suite, run_dir, ctx)
    meta.update(finished=None if interrupted else environment.now(), interrupted=interrupted)
    _finish(run_dir, suite, rows, meta)
    summary.print_console(rows, console)
    report.write(run_dir.path, console)  # never raises: a report is not worth losing a run over
    console.print(f"results: {out}")
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if any(r["status"] in FAILED for r in rows) else 0


def _announce(console: Console, suite: Suite, ctx: Context, out: Path, repeat: int) -> None:
    peak = f"{ctx.spec.name} ({ctx.spec.origin})" if ctx.spec else "none, so no MFU/MBU"
    passes = f" x {repeat} passes" if repeat > 1 else ""
    console.print(f"{suite.name}: {len(suite.cases)} cases{passes} on {ctx.facts.name} ({ctx.device}); "
                  f"peaks: {peak}; writing {out}")
    if ctx.ceilings:
        console.print(f"measured ceilings from {ctx.ceilings['measured']} ({ctx.ceilings['path']})")
    else:
        console.print("no measured ceilings for this device: run `mfu ceilings` once to get mfu_ceiling/mbu_ceiling")
    if ctx.sampler is None:
        console.print("telemetry: NVML cannot watch this device; clock, power and throttle columns stay empty")


def _final_rows(suite: Suite, run_dir: RunDir, ctx: Context) -> list[dict]:
    """One row per case in suite order; a case measured in several passes is pooled."""
    by_case: dict[str, list[dict]] = {}
    for row in run_dir.rows():
        by_case.setdefault(row["case_id"], []).append(row)
    samples = run_dir.samples()
    cases = {c.case_id: c for c in suite.cases}
    rows = []
    for case_id, passes in by_case.items():
        rows.append(passes[0] if len(passes) == 1 else _pool(passes, samples.get(case_id), cases[case_id], ctx))
    order = {c.case_id: i for i, c in enumerate(suite.cases)}
    return ceilings.rerate(sorted(rows, key=lambda r: order.get(r["case_id"], len(order))), ctx, run_dir.path)


def _pool(passes: list[dict], samples: list[float] | None, case: Case, ctx: Context) -> dict:
    """Several passes of one case as one row: pooled samples, the worst status, and the drift."""
    worst = min(passes, key=lambda r: WORST_FIRST.index(r["status"]))
    timed = [r for r in passes if r.get("time_ms") is not None]
    if worst["status"] not in ("ok", "suspect") or not samples:
        return {**worst, "passes": len(passes)}
    row = finish_row({k: v for k, v in worst.items() if k != "pass"}, samples, case, ctx)
    medians = [r["time_ms"] for r in timed]
    row.update(passes=len(passes), drift=(max(medians) - min(medians)) / row["time_ms"],
               **_pooled_telemetry(timed))
    return row


def _pooled_telemetry(rows: list[dict]) -> dict:
    def values(key):
        return [r[key] for r in rows if r.get(key) is not None]

    pooled = {}
    if values("sm_clock_mhz"):
        pooled["sm_clock_mhz"] = min(values("sm_clock_mhz"))  # the slowest pass is the one to notice
    if values("power_w"):
        pooled["power_w"] = statistics.fmean(values("power_w"))
    if values("temp_c"):
        pooled["temp_c"] = max(values("temp_c"))
    if values("energy_j"):
        pooled["energy_j"] = sum(values("energy_j"))
    names = [n for r in rows for n in (r.get("throttle") or "").split(",") if n]
    if any("throttle" in r for r in rows):
        pooled["throttle"] = ",".join(dict.fromkeys(names))
    return pooled


def _finish(run_dir: RunDir, suite: Suite, rows: list[dict], meta: dict) -> None:
    run_dir.write_meta(meta)
    run_dir.write_csv(rows, param_columns(suite))
    (run_dir.path / "summary.md").write_text(summary.markdown(rows, meta))


def param_columns(suite: Suite) -> list[str]:
    names = [p.name for w in dict.fromkeys(c.workload for c in suite.cases)
             for p in workloads.REGISTRY[w].params]
    return list(dict.fromkeys(names))


def _meta(suite: Suite, ctx: Context, previous: dict, repeat: int) -> dict:
    return {
        "suite": suite.name, "suite_source": suite.source, "suite_text": suite.text,
        "timing": asdict(suite.timing), "repeat": repeat, "device_kind": ctx.device,
        "device": ctx.facts.to_dict(), "peak": ctx.spec.to_dict() if ctx.spec else None,
        "ceilings": ctx.ceilings, "telemetry": ctx.sampler is not None,
        "software": environment.software(), "started": previous.get("started") or environment.now(),
        "finished": None, "resumed": bool(previous),
    }


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=True)


def _short(case: Case, pass_index: int, repeat: int) -> str:
    text = f"{case.workload} {case.backend} {case.dtype} " + " ".join(
        f"{k}={v}" for k, v in case.params if k != "label" and v not in ("", None))
    return text + (f" (pass {pass_index + 1}/{repeat})" if repeat > 1 else "")


def _line(row: dict) -> str:
    status = row["status"]
    text = f"{status:<8} {row['case_id']}"
    if status == "ok":
        text += f"  {row['time_ms']:.4g} ms  {row['tflops']:.2f} TFLOPS  {row['gbps']:.0f} GB/s"
        if row.get("mfu") is not None:
            text += f"  MFU {row['mfu']:.1%}  MBU {row['mbu']:.1%}"
    if row.get("throttle"):
        text += f"  throttled: {row['throttle']}"
    if row.get("reason"):
        text += f"  ({row['reason']})"
    colour = {"ok": "green", "skipped": "dim", "suspect": "magenta"}.get(status, "red")
    return f"[{colour}]{escape(text)}[/]"
