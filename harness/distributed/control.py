"""The control plane: the `mfu run` processes of a distributed run, one per rank, acting as one run.

Each rank's `mfu run` process supervises its own case worker (harness/measure/supervisor.py) and
never touches the GPU; these processes coordinate over a gloo group of their own (TCP, host
side), through the store torchrun set up. Rank 0 writes the run directory: it shares the list of
cases every rank runs, gathers every rank's rows after each case, and the ranks decide together
whether their workers go on or are all replaced (a group that lost a rank is unusable).

A single-process run gets `Control(None)`: rank 0 of one, every method trivial, so the runner has
one path.
"""

from __future__ import annotations

import socket
from datetime import timedelta

from harness.distributed.launch import SOLO, Launch


class ControlLost(RuntimeError):
    """Another rank's `mfu run` process is gone (killed, or its host lost): the run stops."""


def _guarded(call):
    """Run a collective of the control group; ControlLost instead of whatever it raised."""
    try:
        return call()
    except Exception as exc:
        raise ControlLost(f"lost contact with the other ranks ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc


class Control:
    def __init__(self, launch: Launch | None, timeout_s: float = 1800.0):
        self.launch = launch
        self.rank = launch.rank if launch else 0
        self.world = launch.world if launch else SOLO
        self.host = launch.host if launch else socket.gethostname()
        if launch:
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method="env://", rank=launch.rank,
                                    world_size=launch.world.size, timeout=timedelta(seconds=timeout_s))

    @property
    def size(self) -> int:
        return self.world.size

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory and prints the run (rank 0)."""
        return self.rank == 0

    def placement(self) -> dict:
        """The columns saying where a row ran (harness/store/columns.py, kind placement)."""
        local = self.launch.local_rank if self.launch else 0
        return {"rank": self.rank, "local_rank": local, "host": self.host, "world_size": self.size}

    def share(self, value):
        """Rank 0's value, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        _guarded(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def gather(self, value) -> list | None:
        """Every rank's value in rank order on rank 0; None elsewhere."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.size if self.writes else None
        _guarded(lambda: dist.gather_object(value, out, dst=0))
        return out

    def all(self, flag: bool) -> bool:
        """Whether the flag holds on every rank."""
        if self.size == 1:
            return bool(flag)
        import torch.distributed as dist

        out = [None] * self.size
        _guarded(lambda: dist.all_gather_object(out, bool(flag)))
        return all(out)

    def close(self) -> None:
        if self.launch:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
