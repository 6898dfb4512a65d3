"""The software a run was measured with, for meta.json: versions, git commit, host, command line.

A number without its GPU, driver, library versions and time is not evidence; this module gathers
everything except the device itself (harness/hardware/device.py does that).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import harness


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def software() -> dict:
    return {
        "harness": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda,
        "hip_runtime": torch.version.hip,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "host": platform.node(),
        "os": platform.platform(),
        "argv": sys.argv,
    }


def git_commit() -> str | None:
    """The harness checkout's commit (with '-dirty' if it has changes), or None if not a checkout."""
    root = Path(harness.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or fails to import on this platform
        return None
