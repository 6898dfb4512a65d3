"""Fault injection, to test that a run survives a case that crashes, hangs or poisons the GPU.

    MFU_INJECT_FAULT="REGEX=KIND[;REGEX=KIND...]"    (pairs separated by `;` or `,`)

makes every case whose case_id matches REGEX (re.search) fail in the worker that runs it, after
its inputs are built and before its first call:

- `abort`: os.abort(), the worker dies from SIGABRT;
- `segfault`: a read of address 0, the worker dies from SIGSEGV;
- `hang`: sleeps forever, until the case's time limit (timing.case_timeout_s) ends it;
- `raise`: a RuntimeError, an ordinary failure of one case;
- `cuda`: on a GPU, a real device-side assert (an out-of-bounds index), which poisons the CUDA
  context; on a CPU, what a CUDA call then raises (torch.AcceleratorError), after which the
  worker's context probe reports the context lost. Either way the worker is replaced as after
  any real one.

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
KINDS = ("abort", "segfault", "hang", "raise", "cuda")

# Set once an injected `cuda` fault fired: the context probe (harness/measure/worker.py) then fails, as it
# would after a real device-side assert.
context_poisoned = False


def parse(text: str | None) -> list[tuple[re.Pattern, str]]:
    """The (regex, kind) pairs of an MFU_INJECT_FAULT value; UsageError when malformed."""
    pairs = []
    for item in re.split(r"[;,]", text or ""):
        if not item.strip():
            continue
        pattern, sep, kind = item.strip().rpartition("=")
        if not sep or not pattern or kind not in KINDS:
            raise UsageError(f"{VARIABLE}: {item.strip()!r} is not REGEX=KIND with KIND one of "
                             f"{', '.join(KINDS)} (pairs separated by ';' or ',')")
        try:
            pairs.append((re.compile(pattern), kind))
        except re.error as exc:
            raise UsageError(f"{VARIABLE}: {pattern!r} is not a regular expression ({exc})") from None
    return pairs


def check_environment() -> None:
    """Raise UsageError now, in the parent, if MFU_INJECT_FAULT is set but malformed."""
    parse(os.environ.get(VARIABLE))


def inject(case_id: str, device: str) -> None:
    """Fail the way MFU_INJECT_FAULT says when it names this case; nothing otherwise."""
    global context_poisoned
    text = os.environ.get(VARIABLE)
    if not text:
        return
    kind = next((k for pattern, k in parse(text) if pattern.search(case_id)), None)
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
