"""The `comm` workload's backend `torch`: torch.distributed collectives on the run's default group
(NCCL on CUDA, gloo on CPU; harness/distributed/group.py).

build() makes every buffer and the send/recv op list; the closure is the op alone, with no barrier
and no synchronize: the timer aligns the ranks before each sample and brackets the call with CUDA
events (an NCCL op joins the current stream on return, so the events see it whole). send_recv is
nccl-tests' sendrecv: a ring in which every rank sends to rank+1 and receives from rank−1 at once.
fp8 moves as bytes (uint8 views of the same memory); fp8 sums are not offered (see _unsupported).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from harness.backends import Backend, register
from harness.distributed import group
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DType
from harness.workloads.comm import placement
from harness.workloads.comm_model import REDUCTIONS, size_problem

# torch 2.10+ names them *_single and deprecates *_into_tensor / *_tensor; older releases have only those.
all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    op, size = p["op"], p["size"]
    if reason := group.unavailable(dev.kind):
        return reason
    _, n = placement()
    if op == "send_recv" and n < 2:
        return "send_recv needs at least 2 ranks: a single rank has no peer (run under torchrun or with --nproc 2)"
    if dtype.name == "fp8" and op in REDUCTIONS:
        return ("fp8 sums are not measured: NCCL adds fp8 only from 2.24 and on sm90+, torch's use of it is "
                "unverified here, and gloo has none (fp8 runs in the data-movement ops)")
    return size_problem(op, size, dtype.size, n)


def _build(inputs: dict, p: dict, dtype: DType):
    group.ensure(inputs["out"].device.type)
    op, result = p["op"], inputs["out"]
    send, out = _wire(inputs["send"]), _wire(result)

    if op == "all_reduce":
        def run():
            dist.all_reduce(out)  # sum, in place
            return result
    elif op == "broadcast":
        def run():
            dist.broadcast(out, src=0)  # in place
            return result
    elif op == "all_gather":
        def run():
            all_gather(out, send)
            return result
    elif op == "reduce_scatter":
        def run():
            reduce_scatter(out, send)
            return result
    elif op == "all_to_all":
        def run():
            dist.all_to_all_single(out, send)
            return result
    elif op == "send_recv":
        rank, n = dist.get_rank(), dist.get_world_size()
        ring = [dist.P2POp(dist.isend, send, (rank + 1) % n), dist.P2POp(dist.irecv, out, (rank - 1) % n)]

        def run():
            for work in dist.batch_isend_irecv(ring):
                work.wait()  # NCCL: the current stream waits (the host does not); gloo: the host waits
            return result
    else:
        raise ValueError(f"unknown collective {op!r}")
    return run


def _wire(t: torch.Tensor) -> torch.Tensor:
    """What the process group is given: fp8 as its bytes (NCCL before 2.24 and gloo have no fp8 type)."""
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


register(Backend("comm", "torch", "torch.distributed on the run's group (NCCL on CUDA, gloo on CPU)",
                 _unsupported, _build))
