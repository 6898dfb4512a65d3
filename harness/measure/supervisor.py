"""Where `mfu run` runs its cases: in a supervised worker process, so that no case can end the run.

`executor(isolate, ...)` gives one of:

- `Supervisor` (isolate "run", the default, or "case"): cases run in a worker process
  (harness/measure/worker.py). With "run" one worker serves the whole run, so start-up and compile caches
  are paid once; with "case" every case gets a fresh worker. When a worker dies (any signal, an
  abort, a segfault), gives no result within `timing.case_timeout_s` (set-up, compile, autotune
  and timing included), or reports its CUDA context lost, that case is a failed Result carrying
  the reason and the worker's last output lines, and a fresh worker runs the next case. The
  parent creates no CUDA context and allocates nothing on the device: the worker sends back the
  device facts, peaks and ceilings it resolved. Its stdout and stderr go to `worker.log` in the
  run directory, a `--- case CASE_ID` line before each case's own output.
- `InProcess` (isolate "none"): cases run in this process, unprotected: for a debugger, and for
  tests that patch this process.
"""

from __future__ import annotations

import os
import select
import signal
import site
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing import Pipe
from pathlib import Path

import harness
from harness.measure.timing import TimingSettings
from harness.measure.worker import (
    CASE_MARK,
    STACK_DUMP_SIGNAL,
    Result,
    Join,
    WorkerInfo,
    describe,
    run_guarded,
)
from harness.store.results import worker_log

ISOLATION = ("run", "case", "none")
TAIL_LINES = 20
TAIL_BYTES = 1 << 16  # how far back the log is read for them
NOISE = ("Extension modules:",)  # faulthandler's list of loaded C extensions: long, and never the cause
START_LIMIT_S = 300.0  # for a worker to import torch and set up the device (not a case: no case_timeout_s)
POLL_S = 0.25  # how often a silent worker is checked for being alive (a result wakes us at once)
DUMP_WAIT_S = 1.0  # for a hung worker to write its stacks
STOP_WAIT_S = 10.0  # for a worker to exit once asked or killed; one stuck in the driver is left behind


class WorkerFailed(Exception):
    """The worker could not start."""

    def __init__(self, reason: str, log_tail: str | None):
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail


def executor(isolate: str, device: str, timing: TimingSettings, run_path: Path, launch=None):
    """Where cases run; with a Launch (a distributed run) the worker joins the ranks' group."""
    if isolate not in ISOLATION:
        raise ValueError(f"isolate must be one of {', '.join(ISOLATION)} (got {isolate!r})")
    if isolate == "none":
        return InProcess(device, timing)
    log = Path(run_path) / worker_log(launch.rank if launch else 0)
    return Supervisor(device, timing, log, fresh_per_case=isolate == "case", launch=launch)


class InProcess:
    """Cases in this process: what `--isolate none` and tests that patch this process use."""

    def __init__(self, device: str, timing: TimingSettings):
        self.device, self.timing, self.ctx = device, timing, None

    def start(self) -> WorkerInfo:
        from harness.measure.case import context

        self.ctx = context(self.device, self.timing)
        return describe(self.ctx)

    def results(self, cases: Iterable) -> Iterator[Result]:
        for case in cases:
            yield run_guarded(case, self.ctx)

    alive = True
    generation = 0

    def close(self, kill: bool = False) -> None:
        pass


class Supervisor:
    """Cases in a worker process, replaced whenever a case kills it, hangs it or breaks its GPU context."""

    def __init__(self, device: str, timing: TimingSettings, log_path: Path, fresh_per_case: bool = False,
                 launch=None):
        self.device, self.timing, self.log_path = device, timing, log_path
        self.fresh_per_case = fresh_per_case
        # A distributed run: workers join the ranks' group, the generation-th one; the runner
        # replaces every rank's worker together, with the next generation, when any is lost.
        self.launch, self.generation = launch, 0
        self.limit_s = timing.case_timeout_s
        self.proc = self.conn = self.log = self.readable = None

    def start(self) -> WorkerInfo:
        """Start a worker; WorkerFailed when it does not come up (within START_LIMIT_S)."""
        self.close()
        self.log = self.log_path.open("ab")
        self.log.write(f"=== worker starting {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.log.flush()
        self.worker_log_offset = self.log.tell()
        ours, theirs = Pipe()  # a socket pair: a closed end wakes the other one up
        self.conn = ours
        self.readable = select.poll()  # cheaper than Connection.poll, which builds a selector per call
        self.readable.register(ours.fileno(), select.POLLIN)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "harness.measure.worker", str(theirs.fileno()), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            pass_fds=(theirs.fileno(),), env=_worker_environment())
        theirs.close()
        join = Join(self.launch, self.generation, self.limit_s) if self.launch else None
        self.conn.send((self.device, self.timing, join))
        message, failure = self._receive(time.monotonic() + START_LIMIT_S, f"no worker ready after {START_LIMIT_S:g} s")
        if failure is None and message[0] == "failed":
            failure = f"start-up failed: {message[1]}"
        if failure:
            self.close(kill=True)
            raise WorkerFailed(f"the worker could not start ({failure})", self._tail())
        return message[1]

    def results(self, cases: Iterable) -> Iterator[Result]:
        """Each case's Result, in order; a failed one (row None) when the worker died or hung on it.

        One case waits in the worker's pipe behind the running one (not with fresh_per_case, nor in a
        distributed run, where the ranks decide together between cases), so the worker goes on to it
        without waiting for the parent to record the last."""
        queued: deque = deque()  # sent to the current worker, or waiting for a fresh one
        upcoming = iter(cases)
        depth = 1 if self.fresh_per_case or self.launch else 2
        while True:
            while len(queued) < depth and (case := next(upcoming, None)) is not None:
                if self.proc is not None:
                    if not queued:
                        self.case_started = time.monotonic()  # an idle worker starts on it now
                    self._send(case)
                queued.append(case)
            if not queued:
                return
            if self.proc is None:
                try:
                    self.start()
                except WorkerFailed as exc:
                    queued.popleft()
                    yield Result(None, failure=exc.reason, log_tail=exc.log_tail)
                    continue
                for case in queued:
                    self._send(case)
                self.case_started = time.monotonic()
            queued.popleft()
            yield self._result()

    def _result(self) -> Result:
        """The running case's Result (see results)."""
        deadline = self.case_started + self.limit_s
        result, failure = self._receive(deadline, f"no result after {self.limit_s:g} s (timing.case_timeout_s)")
        if failure and failure.startswith("the worker died"):
            failure += " during this case"
        self.case_started = time.monotonic()  # the worker is on to the next queued case
        if failure:
            self._dump_stacks()
            self.close(kill=True)
            return Result(None, failure=failure, log_tail=self._tail())
        if result.context_lost:
            result.log_tail = self._tail()
        if result.context_lost or self.fresh_per_case:
            self.close()
        return result

    @property
    def alive(self) -> bool:
        """Whether a worker is up (a lost one is replaced before the next case)."""
        return self.proc is not None

    def _send(self, case) -> None:
        try:
            self.conn.send(case)
        except OSError:
            pass  # the worker is gone: waiting for its result says how

    def close(self, kill: bool = False) -> None:
        """Stop the worker: ask it to exit, or kill it (a hung or poisoned one, or on Ctrl-C)."""
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    pass  # already gone
            _wait(self.proc)
            self.conn.close()
            self.log.close()
        self.proc = self.conn = self.log = self.readable = None

    def _receive(self, deadline: float, too_late: str):
        """(message, None), or (None, why there is none): the worker died, or the deadline passed."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, too_late
            # Readable on a message, and on the worker's end closing; a worker whose grandchildren
            # keep that end open is caught by proc.poll().
            readable = self.readable.poll(min(left, POLL_S) * 1e3)
            if readable or self.proc.poll() is not None:
                try:  # a message sent just before the worker exited is still read
                    if readable or self.readable.poll(0):
                        return self.conn.recv(), None
                except (EOFError, OSError):
                    pass
                _wait(self.proc)
                return None, f"the worker died ({_exit_status(self.proc.returncode)})"

    def _dump_stacks(self) -> None:
        """Have a hung worker write where it is stuck into the log, before it is killed."""
        if self.proc.poll() is not None:
            return
        size = self.log_path.stat().st_size
        self.proc.send_signal(STACK_DUMP_SIGNAL)
        deadline = time.monotonic() + DUMP_WAIT_S
        while self.log_path.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # the rest of the dump

    def _tail(self) -> str | None:
        """The worker's last output lines: since it began its last case, or since it started."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(self.worker_log_offset, f.seek(0, os.SEEK_END) - TAIL_BYTES))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        marks = [i for i, line in enumerate(lines) if line.startswith(CASE_MARK)]
        lines = [line for line in lines[marks[-1] + 1 if marks else 0:]
                 if line.strip() and not line.startswith(NOISE)]
        return "\n".join(lines[-TAIL_LINES:]) or None


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _wait(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass  # stuck in the driver: the run goes on without waiting for it


def _worker_environment() -> dict:
    """This environment, with this process's copy of harness first on the worker's path: the worker
    must run the same code (a checkout, not an installed copy that may differ)."""
    root = str(Path(harness.__file__).resolve().parent.parent)
    env = dict(os.environ)
    if root not in site.getsitepackages():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
