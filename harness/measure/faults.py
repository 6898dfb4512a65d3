"""Fault injection, to test that a run survives a case that crashes, hangs or poisons the GPU.

    MFU_INJECT_FAULT="REGEX=KIND[@RANK][;REGEX=KIND[@RANK]...]"    (pairs separated by `;` or `,`)

makes every case whose case_id matches REGEX (re.search) fail in the worker that runs it (with
@RANK, only on that rank of a distributed run), after its inputs are built and before its first
call:

- `abort`: os.abort(), the worker dies from SIGABRT;
- `segfault`: a read of address 0, the worker dies from SIGSEGV;
- `hang`: sleeps forever, until the case's time limit (timing.case_timeout_s) ends it;
- `raise`: a RuntimeError, an ordinary failure of one case;
- `cuda`: on a GPU, a real device-side assert (an out-of-bounds index), which poisons the CUDA
  context; on a CPU, what a CUDA call then raises (torch.AcceleratorError), after which the
  worker's context probe reports the context lost. Either way the worker is replaced as after
  any real one;
- `slow`: no failure; every call of the case takes SLOW_MS longer (a straggler, for the tests of
  a distributed run's straggler detection).

Unset or empty, nothing happens. A malformed value is a usage error. The KIND follows the last
`=`; a REGEX may not contain `;` or `,` (write `.` for the comma of a case_id).
"""

from __future__ import annotations

import ctypes
import os
import re
import time

import torch

from harness.errors import UsageError

VARIABLE = "MFU_INJECT_FAULT"
ACCELERATOR_ERROR = getattr(torch, "AcceleratorError", RuntimeError)  # torch < 2.8 raises RuntimeError
KINDS = ("abort", "segfault", "hang", "raise", "cuda", "slow")
SLOW_MS = 2.0

# Set once an injected `cuda` fault fired: the context probe (harness/measure/worker.py) then fails, as it
# would after a real device-side assert.
context_poisoned = False


def parse(text: str | None) -> list[tuple[re.Pattern, str, int | None]]:
    """The (regex, kind, rank or None) of an MFU_INJECT_FAULT value; UsageError when malformed."""
    pairs = []
    for item in re.split(r"[;,]", text or ""):
        if not item.strip():
            continue
        pattern, sep, target = item.strip().rpartition("=")
        kind, at, rank = target.partition("@")
        if not sep or not pattern or kind not in KINDS or (at and not rank.isdigit()):
            raise UsageError(f"{VARIABLE}: {item.strip()!r} is not REGEX=KIND[@RANK] with KIND one of "
                             f"{', '.join(KINDS)} (pairs separated by ';' or ',')")
        try:
            pairs.append((re.compile(pattern), kind, int(rank) if at else None))
        except re.error as exc:
            raise UsageError(f"{VARIABLE}: {pattern!r} is not a regular expression ({exc})") from None
    return pairs


def check_environment() -> None:
    """Raise UsageError now, in the parent, if MFU_INJECT_FAULT is set but malformed."""
    parse(os.environ.get(VARIABLE))


def _kind(case_id: str) -> str | None:
    """The fault MFU_INJECT_FAULT names for this case on this rank, if any."""
    text = os.environ.get(VARIABLE)
    if not text:
        return None
    rank = int(os.environ.get("RANK", 0))
    return next((k for pattern, k, r in parse(text) if pattern.search(case_id) and r in (None, rank)), None)


def slowed(case_id: str, device: str, fn):
    """fn, or fn made SLOW_MS slower per call when MFU_INJECT_FAULT says `slow` for this case."""
    if _kind(case_id) != "slow":
        return fn

    def slow_fn():
        out = fn()
        if device == "cuda":
            torch.cuda._sleep(int(SLOW_MS * 1e-3 * 1.98e9))  # GPU clock cycles, in stream order
        else:
            time.sleep(SLOW_MS / 1e3)
        return out

    return slow_fn


def inject(case_id: str, device: str) -> None:
    """Fail the way MFU_INJECT_FAULT says when it names this case; nothing otherwise."""
    global context_poisoned
    kind = _kind(case_id)
    if kind == "abort":
        os.abort()
    elif kind == "segfault":
        ctypes.string_at(0)
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "raise":
        raise RuntimeError(f"fault injected by {VARIABLE}")
    elif kind == "cuda" and device == "cuda":
        index = torch.ones(1, dtype=torch.long, device="cuda")
        torch.zeros(1, device="cuda")[index].item()  # index 1 of 1 element: the kernel asserts
    elif kind == "cuda":
        context_poisoned = True
        raise ACCELERATOR_ERROR(f"CUDA error: device-side assert triggered (injected by {VARIABLE})")
