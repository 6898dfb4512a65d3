"""One case, start to finish: skip what cannot run or fit, check, time, and turn samples into a row.

Per case: a `skipped` row when the backend cannot run it or it would not fit in free memory;
otherwise fresh inputs, one call checked against the reference (`mismatch` on failure, never
timed), then timing under the telemetry sampler, and metrics (`suspect` only when impossible:
above the datasheet, or shorter than a launch). Any exception becomes an `error` row; the
caller's run goes on.
"""

from __future__ import annotations

import gc
import math
import warnings
import zlib
from dataclasses import dataclass

import torch

from harness import backends, workloads
from harness.hardware import ceilings, specs
from harness.distributed import group, reasons
from harness.distributed.group import Ranks
from harness.distributed.launch import SOLO, World
from harness.hardware.device import DeviceFacts, detect
from harness.measure import faults, memory, metrics, stats, telemetry
from harness.measure.config import Case
from harness.measure.dtypes import DTYPES, matmul_precision
from harness.measure.timing import Timer, TimingSettings


@dataclass
class Context:
    """What every case of a run shares."""

    device: str
    facts: DeviceFacts
    spec: specs.PeakSpec | None
    timer: Timer | None = None  # None when only planning
    ceilings: dict | None = None  # ceilings.summary() of this device, when measured
    sampler: telemetry.Sampler | None = None
    world: World = SOLO  # the ranks a collective case runs over (harness/distributed)
    ranks: Ranks | None = None  # how this rank agrees with the others in a distributed run


def context(device: str, timing: TimingSettings, join=None) -> Context:
    """The shared state of a run on this device: facts, peaks, measured ceilings, timer, sampler.
    With a worker.Join, first the run's group, pinned to this rank's GPU (harness/distributed/group.py)."""
    ranks = group.join(join.launch, join.generation, device, join.timeout_s) if join else None
    facts = detect(device)
    with warnings.catch_warnings(record=True):  # callers say once, in words, that telemetry is missing
        sampler = telemetry.sampler_for(facts)
    timer = Timer(device, timing, facts.l2_bytes)
    timer.flush_buffer  # allocated now, once, rather than inside the first case
    return Context(device, facts, specs.resolve(facts), timer, ceilings.summary(ceilings.load(facts)), sampler,
                   world=ranks.world if ranks else SOLO, ranks=ranks)


def placed(case: Case, ctx: Context) -> dict:
    """The case's parameters on the run's ranks (Workload.placed: tp-linear's `tp: 0` is every rank)."""
    return workloads.REGISTRY[case.workload].placed(case.p, ctx.world)


def peaks(case: Case, ctx: Context) -> tuple[specs.PeakSpec | None, dict | None]:
    """The peak and the measured ceilings a case's rates are over: one GPU's; a layer group's (every
    rate times its GPUs: the row's flops and bytes are the whole layer's); none for a collective."""
    gpus = workloads.REGISTRY[case.workload].peak_gpus(placed(case, ctx), ctx.world)
    return metrics.over_gpus(ctx.spec, ctx.ceilings, gpus)


def base_row(case: Case, ctx: Context) -> dict:
    """The columns known without running: identity, parameters, formulas, roofline shape. A case
    whose parameters cannot be placed on the run's ranks is `skipped` here, without formulas."""
    wl = workloads.REGISTRY[case.workload]
    backend = backends.get(case.workload, case.backend)
    p, dtype = placed(case, ctx), DTYPES[case.dtype]
    identity = {"case_id": case.case_id, "workload": case.workload, "backend": case.backend,
                "dtype": case.dtype, **p}
    where = {"device": ctx.facts.name, "peak_source": ctx.spec.origin if ctx.spec else None}
    if problem := wl.placement_problem(p, ctx.world):
        return {**identity, "status": "skipped", "reason": problem, **where}
    flops, nbytes = wl.flops(p), (backend.bytes or wl.bytes)(p, dtype)
    spec, _ = peaks(case, ctx)
    return {**identity, "status": None, "reason": None, "flops": flops, "bytes": nbytes,
            **metrics.shape(flops, nbytes, spec, dtype.peak_key), **where, **wl.extra_columns(p, dtype)}


def run_case(case: Case, ctx: Context) -> tuple[dict, list[float]]:
    """The case's result row, and its raw sample times (empty when it was not timed).

    In a distributed run every rank says before timing whether it is ready; a rank that skipped,
    mismatched or failed stops the case on every rank (each row names it), since a collective, or
    a case meant to load every GPU at once, cannot be timed on some ranks only. A collective's
    ranks also agree before its first call (the check): none enters it while another skipped it."""
    row = base_row(case, ctx)
    if row["status"] == "skipped":  # the same on every rank: they all see the same world
        return row, []
    wl = workloads.REGISTRY[case.workload]
    inputs = phases = None
    timing = False
    try:
        with matmul_precision(None):  # whatever a backend sets globally ends with its case
            verdict = _runnable(case, ctx)
            if wl.collective:
                verdict = _agree(ctx.ranks, verdict)
            if verdict["status"] == "ready":
                inputs, phases, verdict = _prepare(case, ctx, row)
            verdict = _agree(ctx.ranks, verdict)
            if verdict["status"] != "ready":
                return {**row, **verdict}, []
            timing = True
            if ctx.sampler:
                with ctx.sampler:
                    samples, phases_ms = _measure(phases, ctx, align=wl.collective)
                row.update(ctx.sampler.columns())
            else:
                samples, phases_ms = _measure(phases, ctx, align=wl.collective)
    except Exception as exc:  # any failure of one case is that case's row, never the run's end
        if timing and ctx.ranks is not None and ctx.ranks.size > 1 and ctx.ranks.broken is None:
            # The others may be inside a collective or a vote this rank will never join.
            ctx.ranks.broken = f"failed while timing: {_one_line(exc)}"
        return {**row, "status": "error", "reason": _one_line(exc)}, []
    finally:
        del inputs, phases
        _clean_up(ctx.device)
    return finish_row(row, samples, case, ctx, phases_ms), samples


def _measure(phases: dict, ctx: Context, align: bool) -> tuple[list[float], dict]:
    """Time every phase in turn: the first phase's samples, and each named phase's median."""
    measured = {name: ctx.timer.measure(fn, ctx.ranks, align=align) for name, fn in phases.items()}
    first = next(iter(measured.values()))
    return first.samples_ms, {name: m.summary.median for name, m in measured.items() if name}


def _runnable(case: Case, ctx: Context) -> dict:
    """{"status": "ready"}, or `skipped` with why: the backend cannot run it, or it would not fit."""
    wl = workloads.REGISTRY[case.workload]
    backend = backends.get(case.workload, case.backend)
    p, dtype = placed(case, ctx), DTYPES[case.dtype]
    reason = backend.unsupported(p, dtype, ctx.facts)
    if reason is None:
        reason = memory.shortfall(wl.memory_bytes(p, dtype), ctx.device)
    return {"status": "skipped", "reason": reason} if reason else {"status": "ready"}


def _prepare(case: Case, ctx: Context, row: dict) -> tuple[dict | None, dict | None, dict]:
    """Inputs, the backend's closures ({phase: closure}; one, unnamed, for most workloads), the
    first checked against the reference, and this rank's verdict: {"status": "ready"}, or the
    status and reason of a case that will not be timed."""
    wl = workloads.REGISTRY[case.workload]
    backend = backends.get(case.workload, case.backend)
    p, dtype = placed(case, ctx), DTYPES[case.dtype]
    try:
        gen = torch.Generator(device=ctx.device).manual_seed(zlib.crc32(case.problem_id.encode()))
        inputs = wl.make_inputs(p, dtype, ctx.device, gen)
        built = backend.build(inputs, p, dtype)
        phases = built if isinstance(built, dict) else {None: built}
        faults.inject(case.case_id, ctx.device)  # MFU_INJECT_FAULT, for tests of the run's isolation
        phases = {name: faults.slowed(case.case_id, ctx.device, fn) for name, fn in phases.items()}
        if backend.columns:
            row.update(backend.columns(inputs, p, dtype))
        out = next(iter(phases.values()))()
        _sync(ctx.device)
        problem = wl.check(inputs, out, p, dtype, backend.problem)
    except Exception as exc:
        return None, None, {"status": "error", "reason": _one_line(exc)}
    if problem:
        return None, None, {"status": "mismatch", "reason": problem}
    return inputs, phases, {"status": "ready"}


def _agree(ranks, verdict: dict) -> dict:
    """This rank's verdict; when it is ready and others are not, theirs, naming the first: skipped
    when they all skipped it, else an error."""
    if ranks is None:
        return verdict
    verdicts = ranks.exchange("the check before timing", verdict)
    if verdict["status"] != "ready":
        return verdict
    others = [(r, v) for r, v in enumerate(verdicts) if v["status"] != "ready"]
    if not others:
        return verdict
    r, v = others[0]
    more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
    status = "skipped" if all(v["status"] == "skipped" for _, v in others) else "error"
    return {"status": status, "reason": f"{reasons.NOT_TIMED} {r}{more} was {v['status']} ({v['reason']})"}


def finish_row(row: dict, samples_ms: list[float], case: Case, ctx: Context, phases_ms: dict | None = None) -> dict:
    """Statistics, metrics, clock columns and the sanity verdict for a row, from its samples (and a
    layer's phase medians: phase -> ms)."""
    s = stats.summarize(samples_ms)
    wl, dtype, p = workloads.REGISTRY[case.workload], DTYPES[case.dtype], placed(case, ctx)
    exps = wl.exps(p)
    spec, measured = peaks(case, ctx)
    times_ms = {**(phases_ms or {}), "time": s.median}
    row = {**row, "time_ms": s.median, "time_ms_q1": s.q1, "time_ms_q3": s.q3, "samples": s.n,
           "noise": s.rel_ci if math.isfinite(s.rel_ci) else None,
           **({"exps": exps} if exps else {}),
           **metrics.achieved(row["flops"], row["bytes"], s.median, spec, dtype.peak_key, measured, exps),
           **wl.timed_columns(p, dtype, times_ms, ctx.world, ctx.spec)}
    if wl.peak_gpus(p, ctx.world) is None:  # its bytes cross links, not memory: never a memory rate
        row.update(tflops=None, gbps=None)
    row.update(metrics.clock_columns(row, ctx.spec, ctx.facts, dtype.peak_key))
    suspect = metrics.sanity(row, ctx.spec, peak_key=dtype.peak_key, facts=ctx.facts,
                             floor=metrics.launch_floor_ms(ctx.ceilings, ctx.device))
    if suspect:
        return {**row, "status": "suspect", "reason": suspect}
    return {**row, "status": "ok", "reason": _noise_note(s, ctx.timer.settings.rel_ci)}


def _noise_note(s: stats.Summary, rel_ci: float) -> str | None:
    if not math.isfinite(s.rel_ci):
        return f"only {s.n} samples within max_time_s: too few for a confidence interval"
    if s.rel_ci > rel_ci:
        return f"noisy: median known to ±{s.rel_ci:.1%}, above rel_ci {rel_ci:.1%}, at max_time_s"
    return None


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
