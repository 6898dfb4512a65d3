"""The data plane: the process group a worker's cases run on, and how its ranks agree.

Inside the process that runs cases, torch.distributed's default group is the run's group. In a
distributed run the worker `join`s it before its first case: NCCL on CUDA, gloo on CPU, one rank per
GPU, through the rendezvous store torchrun set up (MASTER_ADDR:MASTER_PORT), under a prefix of its
own per worker generation: when any rank's worker has to be replaced, every rank starts a fresh one
and they form a new group. In a single-process run `ensure()` makes a group of one on first use,
so a collective workload runs there too (with world size 1 it measures no interconnect).

`Ranks` is how the ranks of a case agree, through the store (host side, so a rank that died or hung
is named instead of hanging the others in a device collective):
- `exchange`: every rank posts a value and reads everyone's, e.g. its verdict before timing;
- `agree_*`: the same warm-up count, batch sizes and stop for all ranks (a collective must be
  called the same number of times everywhere);
- `align`: a device-side barrier (an all_reduce of one element, in stream order) before each
  timed sample of a collective, so every rank's events bracket the same operation.
A rank missing past the case's deadline raises `RanksMissing` naming it; the group is unusable
after that (`broken`), and the worker is replaced.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.distributed.launch import SOLO, Launch, World

STORE_PREFIX = "mfu"
GONE = "gone/"  # a key per rank whose worker died during the current generation (mark_gone)
WAIT_SLICE_S = 1.0


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def unavailable(device: str) -> str | None:
    """Why this torch build cannot run collectives on this kind of device (NCCL on CUDA, gloo on a
    CPU), or None."""
    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if device == "cuda" and not dist.is_nccl_available():
        return "this torch build has no NCCL"
    if device != "cuda" and not dist.is_gloo_available():
        return "this torch build has no gloo"
    return None


def ensure(device: str) -> None:
    """A process group exists: the run's, or else one of this process alone."""
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)


class RanksMissing(RuntimeError):
    """Some ranks did not reach an exchange before the case's deadline."""

    def __init__(self, what: str, missing: list[int], waited_s: float, gone: bool = False):
        names = ", ".join(map(str, missing))
        why = "its worker is gone" if gone else f"within {waited_s:.0f} s (died, hung, or still busy)"
        super().__init__(f"rank{'s' if len(missing) > 1 else ''} {names} did not reach {what}: {why}; "
                         "the group is rebuilt for the next case")
        self.missing = missing


class Ranks:
    """The ranks of the run as one worker sees them (see the module docstring)."""

    def __init__(self, store, rank: int, world: World, device: str):
        self.store, self.rank, self.world, self.device = store, rank, world, device
        self.deadline = float("inf")  # of the current case (monotonic seconds)
        self.broken: str | None = None
        self._case = self._step = 0
        self._token = None

    @property
    def size(self) -> int:
        return self.world.size

    def start_case(self, limit_s: float) -> None:
        """A new case: fresh keys, and exchanges wait at most until limit_s from now."""
        self._case += 1
        self._step = 0
        self.deadline = time.monotonic() + limit_s

    def exchange(self, what: str, value) -> list:
        """Every rank's value (JSON-able), in rank order; RanksMissing past the deadline."""
        if self.size == 1:
            return [value]
        self._step += 1
        prefix = f"case{self._case}/{self._step}/"
        keys = [f"{prefix}{r}" for r in range(self.size)]
        self.store.set(keys[self.rank], json.dumps(value))
        started = time.monotonic()
        while True:  # in slices, to hear at once of a rank whose worker is gone (mark_gone)
            left = self.deadline - time.monotonic()
            try:
                self.store.wait(keys, timedelta(seconds=max(0.001, min(left, WAIT_SLICE_S))))
                break
            except Exception as exc:  # DistStoreError (a timeout) or a store that went away
                gone = [r for r in range(self.size) if _has(self.store, f"{GONE}{r}")]
                if not gone and left > WAIT_SLICE_S:
                    continue
                missing = gone or [r for r, key in enumerate(keys) if not _has(self.store, key)]
                if not missing:
                    raise
                self.broken = f"{what}: ranks {missing} missing"
                raise RanksMissing(what, missing, time.monotonic() - started, bool(gone)) from exc
        return [json.loads(v) for v in self.store.multi_get(keys)]

    def agree_max(self, what: str, value: float) -> float:
        return max(self.exchange(what, value))

    def agree_min(self, what: str, value: float) -> float:
        return min(self.exchange(what, value))

    def align(self) -> None:
        """A barrier in stream order: no rank's next sample starts before every rank got here."""
        if self.size == 1:
            return
        if self._token is None:
            self._token = torch.zeros(1, device=self.device)
        dist.all_reduce(self._token)


ALONE = Ranks(None, 0, SOLO, "cpu")  # a single-process run: every exchange returns the own value


def _has(store, key: str) -> bool:
    try:
        return store.check([key])
    except Exception:
        return False


def _generation_store(launch: Launch, generation: int, timeout: timedelta):
    client = dist.TCPStore(launch.master_addr, launch.master_port, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"{STORE_PREFIX}/{generation}/", client)


def mark_gone(launch: Launch, generation: int) -> None:
    """Tell the other ranks' workers that this rank's worker died or was killed in this generation,
    so they stop waiting for it now rather than at the case's deadline. Best effort."""
    try:
        store = _generation_store(launch, generation, timedelta(seconds=10))
        dist.PrefixStore("agree/", store).set(f"{GONE}{launch.rank}", "1")
    except Exception:
        pass  # the others still stop at their deadline


def join(launch: Launch, generation: int, device: str, timeout_s: float) -> Ranks:
    """Join the run's group as this launch's rank (the worker's generation-th group), pinned to its
    local GPU; the Ranks object agrees through the same store."""
    if device == "cuda":
        torch.cuda.set_device(launch.local_rank)
    timeout = timedelta(seconds=timeout_s)
    store = _generation_store(launch, generation, timeout)
    extra = {"device_id": torch.device("cuda", launch.local_rank)} if device == "cuda" else {}
    dist.init_process_group(backend_for(device), store=dist.PrefixStore("pg/", store), rank=launch.rank,
                            world_size=launch.world.size, timeout=timeout, **extra)
    for size in range(2, launch.world.size):  # every layer group a case may ask for, made now
        if launch.world.size % size == 0:
            subgroup(size)
    return Ranks(dist.PrefixStore("agree/", store), launch.rank, launch.world, device)


_SUBGROUPS: dict[int, dist.ProcessGroup] = {}


def subgroup(size: int) -> dist.ProcessGroup | None:
    """This rank's group of `size` consecutive ranks (a layer's tensor- or expert-parallel group:
    ranks r - r % size onwards), or None when that is every rank (the default group). Every rank
    makes every group of a size together; `join` makes them all up front, so that no rank waits in
    a group's creation for one that skipped the case."""
    if size == dist.get_world_size():
        return None
    if size not in _SUBGROUPS:
        _SUBGROUPS[size] = dist.new_subgroups(group_size=size)[0]
    return _SUBGROUPS[size]


def leave() -> None:
    _SUBGROUPS.clear()
    if dist.is_initialized():
        dist.destroy_process_group()
