"""The worker: the process that runs a suite's cases for `mfu run`, supervised by harness/measure/supervisor.py.

Started as `python -u -m harness.measure.worker FD PARENT_PID`, with stdout and stderr going to the run's
worker.log. It talks to the parent over the socket FD, one pickled message at a time:

    parent -> worker   (device, TimingSettings, Join or None)      once, first
    worker -> parent   ("ready", WorkerInfo) or ("failed", text)
    parent -> worker   a Case, or None to stop
    worker -> parent   its Result

After every case it probes the CUDA context (a synchronize and a tiny kernel). A case that left the
context unusable (device-side assert, illegal address, launch failure: errors that stick to the
context, whatever their message) becomes an `error` row, and the worker exits after sending it so
that a fresh one runs the next case. The worker ignores SIGINT and SIGTERM, which a terminal or a
scheduler sends to the whole process group: the parent decides what happens, and stops the worker.
On Linux it also dies with its parent. SIGUSR1 writes its Python stacks to the log: where it hangs.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

STACK_DUMP_SIGNAL = signal.SIGUSR1
CASE_MARK = "--- case "  # the log line before each case's own output
RANKS_WAIT_SHARE = 0.9  # of case_timeout_s that a rank waits for the others within a case


@dataclass
class WorkerInfo:
    """What the worker resolved at start-up that the parent needs: it never touches the device."""

    facts: object  # harness.hardware.device.DeviceFacts
    spec: object  # harness.hardware.specs.PeakSpec, or None
    ceilings: dict | None
    telemetry: bool  # whether NVML can watch the device


@dataclass(frozen=True)
class Join:
    """A distributed run: the worker joins the ranks' group (harness/distributed/group.py) as this
    launch's rank, in the generation-th group of the run (a new one whenever workers are replaced)."""

    launch: object  # harness.distributed.launch.Launch
    generation: int
    timeout_s: float  # of the group's own collectives; exchanges end at each case's deadline


@dataclass
class Result:
    """One case's outcome. `row` is None when the worker gave no result (it died, or hung)."""

    row: dict | None
    samples: list[float] = field(default_factory=list)
    seconds: float | None = None  # what run_case took (the rest of a case's wall time is isolation's cost)
    context_lost: bool = False  # the worker is unusable after this case
    failure: str | None = None  # why there is no row
    log_tail: str | None = None  # the worker's last output lines, when it died or lost its context


def describe(ctx) -> WorkerInfo:
    return WorkerInfo(ctx.facts, ctx.spec, ctx.ceilings, ctx.sampler is not None)


def run_guarded(case, ctx) -> Result:
    """Run one case; whatever happens short of the process dying, there is a row."""
    from harness.measure.case import _one_line, run_case

    started = time.perf_counter()
    try:
        row, samples = run_case(case, ctx)
    except Exception as exc:  # run_case keeps a case's failures in its row; this is what escapes it
        traceback.print_exc()  # into worker.log
        row, samples = error_row(case, ctx, _one_line(exc)), []
    seconds = time.perf_counter() - started
    lost = context_lost(ctx.device)
    if lost:
        first = row["reason"] if row["status"] == "error" else lost
        row, samples = error_row(case, ctx, f"{first}; the CUDA context is lost, a fresh worker runs the next case"), []
    # A group some rank never came back to may hold half-done collectives: every rank starts afresh.
    broken = ctx.ranks is not None and ctx.ranks.broken is not None
    return Result(row, samples, seconds, context_lost=lost is not None or broken)


def context_lost(device: str) -> str | None:
    """None while the device still runs work; otherwise the error that says it does not."""
    from harness.measure import faults
    from harness.measure.case import _one_line

    if faults.context_poisoned:
        return f"CUDA error: device-side assert triggered (injected by {faults.VARIABLE})"
    if device != "cuda":
        return None
    import torch

    try:  # an error that sticks to the context fails every call after it, this one included
        torch.cuda.synchronize()
        (torch.ones(1, device="cuda") + 1).item()
        return None
    except Exception as exc:
        return _one_line(exc)


def error_row(case, ctx, reason: str) -> dict:
    """An `error` row for a case: its identity and formulas when they can be computed."""
    from harness.measure.case import base_row

    try:
        row = base_row(case, ctx)
    except Exception:  # e.g. a backend this process does not know: identity and parameters only
        row = {"case_id": case.case_id, "workload": case.workload, "backend": case.backend,
               "dtype": case.dtype, **case.p}
    return {**row, "status": "error", "reason": reason}


def serve(conn) -> int:
    """The worker's loop; returns its exit code."""
    try:
        device, timing, join = conn.recv()
    except EOFError:
        return 0
    from harness.measure import stats
    from harness.measure.case import _one_line, context

    try:
        ctx = context(device, timing, join)
        stats.summarize([1.0] * 5)  # its lazy imports (scipy) are start-up, not the first case's time
    except Exception as exc:
        traceback.print_exc()
        conn.send(("failed", _one_line(exc)))
        return 1
    # What exists now (torch, every module, the context) lives as long as the worker: frozen, it is
    # out of reach of the garbage collector, so the gc.collect() after each case scans only what
    # the case left (about 100 ms less per case, with torch's objects).
    gc.freeze()
    print(f"worker {os.getpid()} ready on {ctx.facts.name} ({device})")
    conn.send(("ready", describe(ctx)))
    while True:
        try:
            case = conn.recv()
        except EOFError:  # the parent is gone
            return 0
        if case is None:
            return 0
        print(CASE_MARK + case.case_id)
        if ctx.ranks is not None:  # exchanges give up on a missing rank before the parent gives up on us
            ctx.ranks.start_case(timing.case_timeout_s * RANKS_WAIT_SHARE)
        result = run_guarded(case, ctx)
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(result)
        if result.context_lost:  # exit now: destructors would only call into the broken context
            os._exit(3)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, parent_pid = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    faulthandler.enable()  # a crash writes the Python stack of every thread to worker.log
    faulthandler.register(STACK_DUMP_SIGNAL)  # and so does the parent, before killing a hung worker
    from multiprocessing.connection import Connection

    return serve(Connection(fd))


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a parent killed with SIGKILL: it may hold the GPU, or hang."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(1)


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: pickled Results must name harness.measure.worker.
    from harness.measure import worker

    sys.exit(worker.main(sys.argv[1:]))
