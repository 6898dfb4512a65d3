"""What torchrun told this process, read once from the environment it sets.

torchrun (torch.distributed.run, and the launchers above it: Slurm's `srun torchrun`, Kubernetes'
PyTorchJob) starts one process per GPU and sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. `Launch.from_environment()` is None when they are absent: a
single-process run. `World` is the part a formula needs (harness/workloads/comm.py's link
bandwidth: NVLink inside a node, the network across nodes).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """How many ranks take part, and how many of them share a node."""

    size: int = 1
    local_size: int = 1

    @property
    def nodes(self) -> int:
        return max(1, -(-self.size // self.local_size))

    @property
    def crosses_nodes(self) -> bool:
        """Whether a collective over every rank has to leave the node (the network, not NVLink)."""
        return self.size > self.local_size


SOLO = World()


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job."""

    rank: int
    local_rank: int
    world: World
    master_addr: str
    master_port: int
    host: str

    @classmethod
    def from_environment(cls, environ=None) -> Launch | None:
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        missing = [v for v in VARIABLES if v not in env and v != "LOCAL_WORLD_SIZE"]
        if missing:
            raise ValueError(f"a torchrun environment without {', '.join(missing)}: start `mfu run` "
                             "with torchrun (or `mfu run --nproc N`)")
        size = int(env["WORLD_SIZE"])
        world = World(size, int(env.get("LOCAL_WORLD_SIZE", size)))
        return cls(int(env["RANK"]), int(env["LOCAL_RANK"]), world, env["MASTER_ADDR"],
                   int(env["MASTER_PORT"]), socket.gethostname())
