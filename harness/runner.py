"""Run a suite's cases one by one: skip what cannot run or fit, check, time, and record each.

Per case: a `skipped` row when the backend cannot run it or it would not fit in free memory;
otherwise fresh inputs, one call checked against the reference (`mismatch` on failure, never
timed), then timing and metrics (`suspect` when above a physical limit). Any exception becomes an
`error` row and the run goes on. Every row is appended to cases.jsonl as it finishes; Ctrl-C
stops the loop and the tables are still written.
"""

from __future__ import annotations

import gc
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import backends, environment, memory, metrics, specs, summary, workloads
from harness.config import Case, Suite
from harness.device import DeviceFacts, detect
from harness.dtypes import DTYPES, matmul_precision
from harness.results import FAILED, RunDir
from harness.timing import Timer

EXIT_INTERRUPTED = 130


@dataclass
class Context:
    """What every case of a run shares."""

    device: str
    facts: DeviceFacts
    spec: specs.PeakSpec | None
    timer: Timer | None  # None when only planning


def base_row(case: Case, ctx: Context) -> dict:
    """The columns known without running: identity, parameters, formulas, roofline shape."""
    wl = workloads.REGISTRY[case.workload]
    p, dtype = case.p, DTYPES[case.dtype]
    flops, nbytes = wl.flops(p), wl.bytes(p, dtype)
    return {
        "case_id": case.case_id, "workload": case.workload, "backend": case.backend,
        "dtype": case.dtype, **p, "status": None, "reason": None, "flops": flops, "bytes": nbytes,
        **metrics.shape(flops, nbytes, ctx.spec, dtype.peak_key),
        "device": ctx.facts.name, "peak_source": ctx.spec.origin if ctx.spec else None,
        **wl.extra_columns(p, dtype),
    }


def run_case(case: Case, ctx: Context) -> tuple[dict, list[float]]:
    """The case's result row, and its raw sample times (empty when it was not timed)."""
    row = base_row(case, ctx)
    wl = workloads.REGISTRY[case.workload]
    backend = backends.get(case.workload, case.backend)
    p, dtype = case.p, DTYPES[case.dtype]

    reason = backend.unsupported(p, dtype, ctx.facts)
    if reason is None:
        reason = memory.shortfall(wl.memory_bytes(p, dtype), ctx.device)
    if reason:
        return {**row, "status": "skipped", "reason": reason}, []

    inputs = fn = None
    try:
        with matmul_precision(None):  # whatever a backend sets globally ends with its case
            gen = torch.Generator(device=ctx.device).manual_seed(zlib.crc32(case.problem_id.encode()))
            inputs = wl.make_inputs(p, dtype, ctx.device, gen)
            fn = backend.build(inputs, p, dtype)
            if backend.columns:
                row.update(backend.columns(inputs, p, dtype))
            out = fn()
            _sync(ctx.device)
            problem = wl.check(inputs, out, p, dtype)
            if problem:
                return {**row, "status": "mismatch", "reason": problem}, []
            del out
            m = ctx.timer.measure(fn)
    except Exception as exc:  # any failure of one case is that case's row, never the run's end
        return {**row, "status": "error", "reason": _one_line(exc)}, []
    finally:
        del inputs, fn
        _clean_up(ctx.device)

    s = m.summary
    row.update(time_ms=s.median, time_ms_q1=s.q1, time_ms_q3=s.q3, samples=s.n, noise=s.rel_ci,
               **metrics.achieved(row["flops"], row["bytes"], s.median, ctx.spec, dtype.peak_key))
    suspect = metrics.sanity(row, ctx.spec)
    if suspect:
        return {**row, "status": "suspect", "reason": suspect}, m.samples_ms
    reason = None if m.converged else _not_converged(m, ctx.timer.settings)
    return {**row, "status": "ok", "reason": reason}, m.samples_ms


def _not_converged(m, settings) -> str:
    s = m.summary
    if not math.isfinite(s.rel_ci):
        return f"only {s.n} samples within max_time_s: too few for a confidence interval"
    return f"noisy: median known to ±{s.rel_ci:.1%}, above rel_ci {settings.rel_ci:.1%}, at max_time_s"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _clean_up(device: str) -> None:
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except RuntimeError:
            pass  # a broken CUDA context: the next case will report it as its own error


def run(suite: Suite, device: str, out: Path, console: Console, resume: bool = False) -> int:
    """Run the suite into `out` (continuing it when resume is set); return the exit code."""
    run_dir = RunDir(out)
    facts = detect(device)
    ctx = Context(device, facts, specs.resolve(facts), Timer(device, suite.timing, facts.l2_bytes))
    previous = run_dir.rows() if resume else []
    done = {r["case_id"] for r in previous if r["status"] != "error"}  # errors get another try
    meta = _meta(suite, ctx, run_dir.read_meta() if resume else {})
    run_dir.write_meta(meta)

    todo = [c for c in suite.cases if c.case_id not in done]
    peak = f"{ctx.spec.name} ({ctx.spec.origin})" if ctx.spec else "none, so no MFU/MBU"
    console.print(f"{suite.name}: {len(suite.cases)} cases on {facts.name} ({device}); peaks: {peak}; "
                  f"writing {out}")
    if resume:
        console.print(f"resuming {out}: {len(suite.cases) - len(todo)} cases done, {len(todo)} to run")
    interrupted = False
    try:
        with _progress(console) as progress:
            task = progress.add_task("", total=len(todo))
            for case in todo:
                progress.update(task, description=_short(case))
                row, samples = run_case(case, ctx)
                if samples:
                    run_dir.append_samples(row["case_id"], samples)
                run_dir.append(row)
                progress.console.print(_line(row))
                progress.advance(task)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: writing what finished[/]")

    rows = _in_suite_order(suite, run_dir.rows())
    meta.update(finished=None if interrupted else environment.now(), interrupted=interrupted)
    _finish(run_dir, suite, rows, meta)
    summary.print_console(rows, console)
    console.print(f"results: {out}")
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if any(r["status"] in FAILED for r in rows) else 0


def _finish(run_dir: RunDir, suite: Suite, rows: list[dict], meta: dict) -> None:
    run_dir.write_meta(meta)
    run_dir.write_csv(rows, param_columns(suite))
    (run_dir.path / "summary.md").write_text(summary.markdown(rows, meta))


def param_columns(suite: Suite) -> list[str]:
    names = [p.name for w in dict.fromkeys(c.workload for c in suite.cases)
             for p in workloads.REGISTRY[w].params]
    return list(dict.fromkeys(names))


def _in_suite_order(suite: Suite, rows: list[dict]) -> list[dict]:
    order = {c.case_id: i for i, c in enumerate(suite.cases)}
    return sorted(rows, key=lambda r: order.get(r["case_id"], len(order)))


def _meta(suite: Suite, ctx: Context, previous: dict) -> dict:
    return {
        "suite": suite.name, "suite_source": suite.source, "suite_text": suite.text,
        "timing": asdict(suite.timing), "device_kind": ctx.device, "device": ctx.facts.to_dict(),
        "peak": ctx.spec.to_dict() if ctx.spec else None, "software": environment.software(),
        "started": previous.get("started") or environment.now(), "finished": None,
        "resumed": bool(previous),
    }


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=True)


def _short(case: Case) -> str:
    return f"{case.workload} {case.backend} {case.dtype} " + " ".join(
        f"{k}={v}" for k, v in case.params if k != "label" and v not in ("", None))


def _line(row: dict) -> str:
    status = row["status"]
    text = f"{status:<8} {row['case_id']}"
    if status == "ok":
        text += f"  {row['time_ms']:.4g} ms  {row['tflops']:.2f} TFLOPS  {row['gbps']:.0f} GB/s"
        if row.get("mfu") is not None:
            text += f"  MFU {row['mfu']:.1%}  MBU {row['mbu']:.1%}"
    if row.get("reason"):
        text += f"  ({row['reason']})"
    colour = {"ok": "green", "skipped": "dim", "suspect": "magenta"}.get(status, "red")
    return f"[{colour}]{escape(text)}[/]"
