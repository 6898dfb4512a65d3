"""The data plane: the torch.distributed process group that a worker's cases run their collectives on.

Inside the process that runs cases, torch.distributed's default group is the run's group: in a
distributed run the worker joins it before its first case (NCCL on CUDA, gloo on CPU, one rank per
GPU); in a single-process run `ensure()` makes a group of one on first use, so a collective
workload runs there too (NCCL with world size 1 measures no interconnect, and says so).
"""

from __future__ import annotations

import torch.distributed as dist

from harness.distributed.launch import SOLO, World


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def ensure(device: str) -> None:
    """A process group exists: the run's, or else one of this process alone."""
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)


def world() -> World:
    """The group this process's cases run on (SOLO before any group exists)."""
    if not dist.is_initialized():
        return SOLO
    return _world


_world = SOLO  # set by join() in a distributed run
