"""Run a suite: every case (once per pass with --repeat), recorded as it finishes.

Cases run in a supervised worker process (harness/measure/supervisor.py, `isolate`): a case that crashes
the worker, hangs past `timing.case_timeout_s` or poisons the CUDA context is an `error` row, and
a fresh worker runs the next one. The parent never touches the device; it keeps the run directory.
Each row is appended to cases.jsonl and its samples to samples.jsonl the moment the case ends.
Ctrl-C or SIGTERM stops the loop (the case in flight gets no row); what finished is still written,
meta.json says `interrupted`, and `--resume` continues where it stopped. With `--repeat N` the
passes are interleaved (all cases, then all again), so slow drift (clocks, temperature) shows up as
differences between passes; the final row pools the passes' samples and reports `drift`, the
spread of the pass medians.
"""

from __future__ import annotations

import signal
import statistics
import threading
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness import workloads
from harness.distributed import group, reasons
from harness.distributed.control import Control, ControlLost
from harness.errors import UsageError
from harness.hardware import ceilings, environment
from harness.measure import faults, supervisor
from harness.measure.case import Context, finish_row
from harness.measure.config import Case, Suite
from harness.measure.dtypes import DTYPES
from harness.measure.timing import Timer
from harness.measure.worker import WorkerInfo, error_row
from harness.present import ranks, report, summary, tables
from harness.store import columns, schema
from harness.store.results import FAILED, RunDir

EXIT_INTERRUPTED = 130
WORST_FIRST = columns.WORST_FIRST
TAIL_SHOWN = 6  # lines of a failed worker's output shown on the console (the row's log_tail keeps more)


def run(suite: Suite, device: str, out: Path, console: Console, resume: bool = False, repeat: int = 1,
        isolate: str = "run", case_timeout_s: float | None = None, view: summary.View = summary.View(),
        control: Control | None = None, straggler_threshold: float = ranks.DEFAULT_THRESHOLD) -> int:
    """Run the suite into `out` (continuing it when resume is set); return the exit code.

    isolate: "run" (one worker, replaced after a fatal case), "case" (a fresh worker per case) or
    "none" (in this process). case_timeout_s overrides the suite's timing.case_timeout_s. With a
    distributed Control (under torchrun) every rank runs every case at once and rank 0 writes."""
    faults.check_environment()
    if case_timeout_s is not None:
        suite = replace(suite, timing=replace(suite.timing, case_timeout_s=case_timeout_s))
    control = control or Control(None)
    run_dir = RunDir(out)
    cases = supervisor.executor(isolate, device, suite.timing, run_dir.path, control.launch)
    with _StopOnSignals() as stop:
        try:
            return _run(suite, device, run_dir, console, resume, repeat, isolate, cases, stop, view, control,
                        straggler_threshold)
        finally:
            cases.close(kill=True)  # a no-op unless the run ended early


def _run(suite: Suite, device: str, run_dir: RunDir, console: Console, resume: bool, repeat: int,
         isolate: str, cases, stop: _StopOnSignals, view: summary.View, control: Control,
         straggler_threshold: float) -> int:
    meta = None
    interrupted = False
    writes = control.writes
    try:
        try:
            info = cases.start()
        except supervisor.WorkerFailed as exc:
            console.print(f"[red]{escape(_rank_prefix(control))}{escape(exc.reason)}[/]")
            if exc.log_tail:
                console.print(escape(_head(exc.log_tail)), style="dim")
            console.print(f"(full output: {cases.log_path})")
            return 1
        ctx = _parent_context(device, suite, info, control)
        placed = control.gather({**control.placement(), "device": info.facts.to_dict()})
        if writes:
            previous = run_dir.read_meta() if resume else {}
            repeat = previous.get("repeat", repeat)
            done = {(r["case_id"], r.get("pass", 0)) for r in run_dir.rows() if r["status"] != "error"} if resume else set()
            meta = _meta(suite, ctx, info, previous, repeat, isolate, placed)
            run_dir.write_meta(meta)
            todo_ids = [(i, c.case_id) for i in range(repeat) for c in suite.cases if (c.case_id, i) not in done]
        repeat, todo_ids = control.share((repeat, todo_ids) if writes else None)
        todo = _cases_by_id(suite, todo_ids)
        if writes:
            _announce(console, suite, ctx, info, run_dir.path, repeat)
            if resume:
                console.print(f"resuming {run_dir.path}: {len(suite.cases) * repeat - len(todo)} done, {len(todo)} to run")
        else:
            unit = "GPU" if device == "cuda" else "local rank"
            console.print(f"rank {control.rank} of {control.size} on {control.host} ({unit} {control.placement()['local_rank']}: "
                          f"{info.facts.name}): {len(todo)} cases; rank 0 writes the run")
        results = cases.results(case for _, case in todo)
        with _progress(console, shown=writes) as progress:
            task = progress.add_task("", total=len(todo))
            for pass_index, case in todo:
                progress.update(task, description=_short(case, pass_index, repeat))
                result = next(results)
                row = result.row or error_row(case, ctx, result.failure)
                if result.row is None and control.launch:  # the others' workers stop waiting for ours
                    group.mark_gone(control.launch, cases.generation)
                row.update(control.placement())
                if result.log_tail:
                    row["log_tail"] = result.log_tail
                if repeat > 1:
                    row["pass"] = pass_index
                gathered = control.gather((row, result.samples))
                if not control.all(cases.alive):  # a group that lost a rank is rebuilt by all
                    cases.close(kill=True)
                    cases.generation += 1
                if writes:
                    for row, samples in _recorded(case, gathered):
                        if samples:
                            run_dir.append_samples(row["case_id"], samples, row.get("pass"), row["rank"])
                        run_dir.append(row)
                        progress.console.print(_line(row, tables.width(console), control.size))
                        if row.get("log_tail"):
                            progress.console.print(escape(_head(row["log_tail"])), style="dim")
                progress.advance(task)
        stop.ignore_further()  # from here on, writing what finished is never cut short
    except (KeyboardInterrupt, ControlLost) as exc:
        interrupted = True
        why = f"{exc}: " if isinstance(exc, ControlLost) else "interrupted: "
        if not writes:
            console.print(f"[yellow]{escape(_rank_prefix(control) + why)}stopping[/]")
            return EXIT_INTERRUPTED
        if meta is None:
            console.print(f"[yellow]{escape(why)}stopped before any case ran[/]")
            return EXIT_INTERRUPTED
        console.print(f"[yellow]{escape(why)}writing what finished[/]")
    cases.close(kill=interrupted)
    if not writes:
        return control.share(None)  # rank 0's exit code, once it has written the run

    rows = ranks.mark_stragglers(_final_rows(suite, run_dir, ctx, control), straggler_threshold)
    meta.update(finished=None if interrupted else environment.now(), interrupted=interrupted,
                straggler_threshold=straggler_threshold)
    _finish(run_dir, suite, rows, meta)
    summary.print_console(rows, console, view)
    report.write(run_dir.path, console)  # never raises: a report is not worth losing a run over
    console.print(f"results: {run_dir.path}")
    if interrupted:
        code = EXIT_INTERRUPTED
    else:
        code = 1 if any(r["status"] in FAILED for r in rows) else 0
    return control.share(code) if not interrupted else code


def _rank_prefix(control: Control) -> str:
    return f"rank {control.rank}: " if control.size > 1 else ""


def _cases_by_id(suite: Suite, todo_ids: list) -> list[tuple[int, Case]]:
    """Rank 0's list of (pass, case_id) as this rank's cases: every rank must run the same suite."""
    by_id = {c.case_id: c for c in suite.cases}
    missing = [cid for _, cid in todo_ids if cid not in by_id]
    if missing:
        raise UsageError(f"{suite.source}: rank 0 runs case {missing[0]}, which this rank's suite does not "
                         "have: give every rank the same suite file")
    return [(i, by_id[cid]) for i, cid in todo_ids]


def _recorded(case: Case, gathered: list[tuple[dict, list[float]]]) -> list[tuple[dict, list[float]]]:
    """What rank 0 records of one case: every rank's row of a single-GPU case; one row of a
    collective, its slowest rank's, or when it failed, the row of the rank that failed."""
    if len(gathered) == 1 or not workloads.REGISTRY[case.workload].collective:
        return gathered
    failed = [(row, s) for row, s in gathered if row["status"] not in ("ok", "suspect")]
    if failed:
        own = [(row, s) for row, s in failed if not reasons.blames_another_rank(row.get("reason"))]
        row, samples = (own or failed)[0]
        if f"rank {row['rank']}" not in (row.get("reason") or ""):
            row = {**row, "reason": f"rank {row['rank']}: {row.get('reason')}"}
        return [(row, samples)]
    return [max(gathered, key=lambda g: g[0]["time_ms"])]


class _StopOnSignals:
    """SIGINT and SIGTERM (what schedulers send) both stop the run as KeyboardInterrupt, once: any
    later one is ignored, so that writing what finished is never cut short by a second Ctrl-C."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.stopping = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def ignore_further(self) -> None:
        self.stopping = True


def _parent_context(device: str, suite: Suite, info: WorkerInfo, control: Control) -> Context:
    """What the parent needs of the worker's context to build and pool rows: facts, peaks,
    ceilings, the ranks and the timing settings (a Timer that never allocates here: it never measures)."""
    return Context(device, info.facts, info.spec, Timer(device, suite.timing, info.facts.l2_bytes), info.ceilings,
                   world=control.world)


def _head(log_tail: str) -> str:
    """The first lines of a worker's last output, indented: where a crash report starts."""
    lines = log_tail.splitlines()
    more = f"\n    ... (the row's log_tail has {len(lines) - TAIL_SHOWN} more lines)" if len(lines) > TAIL_SHOWN else ""
    return "\n".join("    " + line for line in lines[:TAIL_SHOWN]) + more


def _announce(console: Console, suite: Suite, ctx: Context, info: WorkerInfo, out: Path, repeat: int) -> None:
    peak = f"{ctx.spec.name} ({ctx.spec.origin})" if ctx.spec else "none, so no MFU/MBU"
    passes = f" x {repeat} passes" if repeat > 1 else ""
    if ctx.world.size > 1:
        passes += f", each on {ctx.world.size} ranks at once ({ctx.world.nodes} node{'s' if ctx.world.nodes > 1 else ''})"
    console.print(f"{suite.name}: {len(suite.cases)} cases{passes} on {ctx.facts.name} ({ctx.device}); "
                  f"peaks: {peak}; writing {out}")
    if ctx.ceilings:
        console.print(f"measured ceilings from {ctx.ceilings['measured']} ({ctx.ceilings['path']})")
    else:
        console.print("no measured ceilings for this device: run `mfu ceilings` once to get mfu_ceiling/mbu_ceiling")
    if not info.telemetry:
        console.print("telemetry: NVML cannot watch this device; clock, power and throttle columns stay empty")


def _final_rows(suite: Suite, run_dir: RunDir, ctx: Context, control: Control) -> list[dict]:
    """One row per case and rank, in suite then rank order; a case measured in several passes is pooled."""
    by_case: dict[tuple, list[dict]] = {}
    for row in run_dir.rows():
        by_case.setdefault((row["case_id"], row.get("rank", 0)), []).append(row)
    samples = run_dir.samples(by_rank=True)
    cases = {c.case_id: c for c in suite.cases}
    rows = []
    for key, passes in by_case.items():
        rows.append(passes[0] if len(passes) == 1 else _pool(passes, samples.get(key), cases[key[0]], ctx))
    order = {c.case_id: i for i, c in enumerate(suite.cases)}
    rows.sort(key=lambda r: (order.get(r["case_id"], len(order)), r.get("rank", 0)))
    # Only cold-cache runs set records: with l2_flush off, a case may read from L2 what the
    # ceilings (measured cold) had to fetch from memory. Only a single GPU's: the stored ceilings
    # are this GPU's, and other ranks' rows ran on other GPUs.
    return ceilings.rerate(rows, ctx, run_dir.path, raise_records=suite.timing.l2_flush and control.size == 1)


def _pool(passes: list[dict], samples: list[float] | None, case: Case, ctx: Context) -> dict:
    """Several passes of one case as one row: pooled samples, the worst status, and the drift."""
    worst = min(passes, key=lambda r: WORST_FIRST.index(r["status"]))
    timed = [r for r in passes if r.get("time_ms") is not None]
    if worst["status"] not in ("ok", "suspect") or not samples:
        return {**worst, "passes": len(passes)}
    # A layer's phases (other than the first, whose samples are pooled) by their passes' mean medians.
    phases = {ph: statistics.mean(r[f"{ph}_ms"] for r in timed)
              for ph in workloads.REGISTRY[case.workload].phases if all(r.get(f"{ph}_ms") is not None for r in timed)}
    row = finish_row({k: v for k, v in worst.items() if k != "pass"}, samples, case, ctx, phases)
    medians = [r["time_ms"] for r in timed]
    row.update(passes=len(passes), drift=(max(medians) - min(medians)) / row["time_ms"],
               **_pooled_telemetry(timed))
    return row


def _pooled_telemetry(rows: list[dict]) -> dict:
    """The passes' telemetry pooled as the column registry says (the slowest SM clock, the mean
    power, the hottest temperature, the total energy, every throttle reason seen)."""
    return columns.pooled(rows, "telemetry")


def _finish(run_dir: RunDir, suite: Suite, rows: list[dict], meta: dict) -> None:
    meta["schema"] = schema_for(suite, rows)  # now with the extras the rows brought
    run_dir.write_meta(meta)
    run_dir.write_csv(rows, param_columns(suite))
    (run_dir.path / "summary.md").write_text(summary.markdown(rows, meta))


def param_columns(suite: Suite) -> list[str]:
    names = [p.name for w in dict.fromkeys(c.workload for c in suite.cases)
             for p in workloads.REGISTRY[w].params]
    return list(dict.fromkeys(names))


def schema_for(suite: Suite, rows: list[dict] = ()) -> dict:
    """meta.json's column schema (harness/store/schema.py) for the suite's workloads and dtypes, so that
    reading the run later needs neither torch nor the workload code."""
    declared = {w: workloads.REGISTRY[w].declaration() for w in dict.fromkeys(c.workload for c in suite.cases)}
    peak_keys = {d: DTYPES[d].peak_key for d in dict.fromkeys(c.dtype for c in suite.cases)}
    return schema.build(declared, peak_keys, rows)


def _meta(suite: Suite, ctx: Context, info: WorkerInfo, previous: dict, repeat: int, isolate: str,
          placed: list[dict]) -> dict:
    return {
        "suite": suite.name, "suite_source": suite.source, "suite_text": suite.text,
        "timing": asdict(suite.timing), "repeat": repeat, "isolate": isolate, "device_kind": ctx.device,
        "device": ctx.facts.to_dict(), "peak": ctx.spec.to_dict() if ctx.spec else None,
        "ceilings": ctx.ceilings, "telemetry": info.telemetry,
        "software": environment.software(), "started": previous.get("started") or environment.now(),
        "finished": None, "resumed": bool(previous), "schema": schema_for(suite),
        "world_size": len(placed), "ranks": placed,  # where each rank ran, with its device's facts
    }


def _progress(console: Console, shown: bool = True) -> Progress:
    """The progress bar; not shown by ranks other than 0 (rank 0 prints the run)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=True, disable=not shown)


def _short(case: Case, pass_index: int, repeat: int) -> str:
    text = f"{case.workload} {case.backend} {case.dtype} " + " ".join(
        f"{k}={v}" for k, v in case.params if k != "label" and v not in ("", None))
    return text + (f" (pass {pass_index + 1}/{repeat})" if repeat > 1 else "")


def _line(row: dict, width: int = 10_000, world_size: int = 1) -> str:
    """One finished case: status and numbers first (never cut), then the case id and any reason,
    shortened in the middle so the line fits the terminal."""
    status = row["status"]
    head = f"{status:<8}"
    if world_size > 1:
        head = f"rank {row.get('rank', 0):<3} " + head
    if status == "ok" and row.get("compute_ms") is not None:  # a layer split over ranks
        head += f" {row['time_ms']:.4g} ms  compute {row['compute_ms']:.4g}"
        if row.get("comm_ms") is not None:
            head += (f"  comm {row['comm_ms']:.4g}  ratio {row['compute_comm_ratio']:.3g}"
                     f"  overlap {columns.get('overlap_eff').cell(row.get('overlap_eff'))}")
        if row.get("mfu") is not None:
            head += f"  MFU {row['mfu']:.1%}"
    elif status == "ok" and row.get("algbw_gbps") is not None:  # a collective
        busbw = columns.get("busbw_gbps").cell(row.get("busbw_gbps")) or "-"  # none on one rank: no bus
        head += f" {row['time_ms']:.4g} ms  algbw {row['algbw_gbps']:.4g} GB/s  busbw {busbw} GB/s"
        if row.get("link_util") is not None:
            head += f"  link {row['link_util']:.1%}"
    elif status == "ok":
        head += f" {row['time_ms']:.4g} ms  {row['tflops']:.2f} TFLOPS  {row['gbps']:.0f} GB/s"
        if row.get("mfu") is not None:
            head += f"  MFU {row['mfu']:.1%}  MBU {row['mbu']:.1%}"
    if row.get("throttled"):
        head += f"  throttled: SM clock {row['sm_clock_mhz']:.0f} MHz"
    room = max(width - len(head) - 2, 20)
    tail = row["case_id"] + "".join(f"  ({row[k]})" for k in ("throttle", "reason")
                                    if row.get(k) and (k == "reason" or row.get("throttled")))
    text = f"{head}  {tables.shorten(tail, room)}"
    colour = {"ok": "green", "skipped": "dim", "suspect": "magenta"}.get(status, "red")
    return f"[{colour}]{escape(text)}[/]"
