"""Will a case fit? Free device (or host) memory against a workload's estimate, before allocating.

A case that does not fit is skipped with "needs X GiB, Y GiB free", so a large preset never
crashes the run or wakes the OOM killer. The estimate gets a margin for allocator rounding,
library workspaces and temporaries the formula does not see.
"""

from __future__ import annotations

import torch

MARGIN = 1.10
HEADROOM = 512 << 20  # kept free for workspaces (cuBLAS, Triton) and the interpreter


def free_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return free + cached  # memory torch holds but does not use is free for the next case
    return _host_available()


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def required_bytes(need: int) -> int:
    """What a case needs free to start: the workload's estimate with margin and headroom. `mfu plan`
    shows this same figure, so plan and run agree on what a case needs."""
    return int(need * MARGIN) + HEADROOM


def gib(nbytes: float) -> str:
    """Bytes as GiB text, the one format plan and run use: '372,531.2'."""
    return f"{nbytes / 2**30:,.1f}"


def shortfall(need: int, device: str) -> str | None:
    """None if `need` bytes fit with margin, else the skip reason."""
    want = required_bytes(need)
    free = free_bytes(device)
    if want <= free:
        return None
    where = "device" if device == "cuda" else "host"
    return f"needs {gib(want)} GiB, {gib(free)} GiB {where} memory free"
