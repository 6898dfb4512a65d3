"""One `mfu run` per run directory, and never a run written over another run or other files.

`locked(DIR)` holds an exclusive flock on DIR/.mfu-lock (which records the holder's pid) for the
whole run; the kernel releases it when the process exits, crash or not, so a stale lock file never
blocks anyone. A second run (or `--resume`) on the same directory is refused while it is held.
`claim_new(DIR, force)` checks that a fresh run's directory is empty; `--force` deletes a previous
run's files (results.RUN_FILES) and nothing else.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UsageError
from harness.store.results import is_run_file

LOCK_NAME = ".mfu-lock"


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold DIR's lock (creating DIR) for the block, or raise UsageError naming the holder's pid."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise UsageError(f"{directory} is in use by {who} (an mfu run writing it): wait for it to end, "
                             f"or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the pid means nothing once the lock is let go
    finally:
        os.close(fd)  # releases the lock


def claim_new(directory: Path, force: bool) -> list[str]:
    """Check that DIR (locked) is free for a new run; with `force`, delete a previous run's files
    there. Returns what to tell the user; raises UsageError when DIR holds anything without force."""
    names = sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME)
    if not names:
        return []
    if not force:
        if "cases.jsonl" in names or "meta.json" in names:
            raise UsageError(f"{directory} already holds a run: continue it with --resume {directory}, choose "
                             f"another --out, or give --force to delete that run's files and start over")
        raise UsageError(f"{directory} is not empty ({_listed(names)}): choose another --out, or give --force "
                         f"to write the run beside these files")
    ours = [n for n in names if is_run_file(n)]
    others = [n for n in names if not is_run_file(n)]
    for name in ours:
        (directory / name).unlink()
    told = []
    if ours:
        told.append(f"--force: deleted the previous run's files in {directory}: {_listed(ours)}")
    if others:
        told.append(f"--force: kept {len(others)} other file{'s' if len(others) > 1 else ''} there: {_listed(others)}")
    return told


def _listed(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
