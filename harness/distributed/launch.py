"""What torchrun told this process, read once from the environment it sets.

torchrun (torch.distributed.run, and the launchers above it: Slurm's `srun torchrun`, Kubernetes'
PyTorchJob) starts one process per GPU and sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. `Launch.from_environment()` is None when they are absent: a
single-process run. `run_torchrun` is `mfu run --nproc N`: torchrun on this node with N ranks,
each running the same `mfu run` command line. `World` is the part a formula needs (harness/workloads/comm.py's link
bandwidth: NVLink inside a node, the network across nodes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """torchrun (torch.distributed.run) on this node alone, N ranks each running `mfu ARGV`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "harness.cli", *argv]


EXIT_FILE = "MFU_EXIT_FILE"  # where the ranks of `--nproc` leave the run's exit code (see run_torchrun)


def run_torchrun(nproc: int, argv: list[str]) -> int:
    """Run torchrun and return the run's exit code. The ranks it starts exit 0 when they finished
    and leave the run's code (1 when a case failed, 130 when interrupted) in EXIT_FILE: torchrun
    reports any other exit, and any signal it gets itself, as a crash of the job, with a traceback.
    So torchrun runs in a session of its own, and Ctrl-C or SIGTERM here is passed to the ranks
    alone: they write what finished and exit, and torchrun ends quietly."""
    with tempfile.TemporaryDirectory(prefix="mfu-") as tmp:
        exit_file = Path(tmp) / "exit"
        proc = subprocess.Popen(torchrun_command(nproc, argv), env={**os.environ, EXIT_FILE: str(exit_file)},
                                start_new_session=True)

        def stop(signum, frame):
            for pid in _children(proc.pid) or [proc.pid]:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if code == 0 and exit_file.is_file():
            return int(exit_file.read_text())
        return code


def _children(pid: int) -> list[int]:
    """A process's children (Linux /proc); [] where that cannot be read."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def finish(code: int, writes: bool) -> int:
    """A rank's exit code: under `--nproc`, 0 with the run's code left for run_torchrun by rank 0."""
    exit_file = os.environ.get(EXIT_FILE)
    if not exit_file:
        return code
    if writes:
        Path(exit_file).write_text(str(code))
    return 0
