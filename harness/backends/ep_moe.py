"""ep-moe backends: the expert-parallel layer (harness/workloads/ep_moe.py) with each moe backend
that runs a top-1 problem on the rank's experts (torch-loop, torch-grouped, triton; not
dense-equivalent, which computes another function). The moe backend is reused as it is: build()
hands it the received rows as a local moe problem, once per chunk and once for all of them.

build() realizes every rank's routing on the CPU and makes every buffer and index: the send rows
(chunk-major; within a chunk in expert order, so by destination), the received rows (chunk, then
source rank), the experts' output rows, the rows returned, and `out`. Its phases:
- compute: gather the send rows, the experts on the received rows, the sum of each token's k
  returned rows; the exchange replaced by nothing (with ep = 1 the received rows ARE the send
  rows and the returned rows the experts' output, so this is the whole layer, and the only phase);
- comm: the dispatch and the combine, each one all_to_all_single over the whole buffers with the
  layer's split sizes (the rows are chunk-major, so the bytes each rank sends each other rank are
  the layer's, though not its rows' order: the communication alone does not read them);
- overlapped (the layer, checked): in `chunks` chunks of the source tokens, each collective issued
  with async_op=True right after the compute it depends on and waited just before the compute
  that reads it. Step s gathers and dispatches chunk s, runs the experts of chunk s−1 and issues
  its combine, and sums chunk s−2: chunk s's dispatch and chunk s−2's combine run while chunk s−1
  computes. On NCCL the collectives run in issue order on NCCL's stream, each waiting only for the
  work queued before it on the current stream, and work.wait() makes the current stream (not the
  host) wait; on gloo they run on gloo's threads while the host computes.
NCCL's kernels occupy SMs while they run, so the overlapped experts are slower than the compute
phase's: overlap_eff below 1 is partly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from harness import backends
from harness.backends import Backend, register
from harness.distributed import group
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DType
from harness.workloads.ep_moe import chunk_rows, chunk_tokens, exchange, local_problem

DESCRIPTIONS = {  # the moe backends reused, by name
    "torch-loop": "per-expert gather, matmul and index_add (moe's torch-loop) on each rank's experts",
    "torch-grouped": "torch's grouped GEMM (moe's torch-grouped) on each rank's experts",
    "triton": "ours: kernels/moe.py (moe's triton) on each rank's experts",
}


@dataclass(frozen=True)
class _Piece:
    """Some of the layer's source tokens (a chunk, or all of them): views of the layer's buffers
    and what its collectives and its local moe problem need."""

    gather: torch.Tensor  # x's row of each send row
    unsort: torch.Tensor  # the returned row of each (token, slot) pair, in pair order
    send: torch.Tensor
    recv: torch.Tensor
    experts_out: torch.Tensor
    back: torch.Tensor
    unsorted: torch.Tensor
    out: torch.Tensor
    send_splits: list[int]  # rows to each rank of the group
    recv_splits: list[int]  # rows from each rank
    experts: Callable[[], torch.Tensor] | None  # the moe backend on the received rows; None: none came

    def compute_gather(self, x: torch.Tensor) -> None:
        torch.index_select(x, 0, self.gather, out=self.send)

    def compute_experts(self) -> None:
        if self.experts is not None:
            self.experts()

    def compute_sum(self, top_k: int) -> None:
        torch.index_select(self.back, 0, self.unsort, out=self.unsorted)
        torch.sum(self.unsorted.view(self.out.shape[0], top_k, -1), dim=1, out=self.out)

    def dispatch(self, pg, async_op: bool = False):
        return dist.all_to_all_single(self.recv, self.send, self.recv_splits, self.send_splits, group=pg,
                                      async_op=async_op)

    def combine(self, pg, async_op: bool = False):
        return dist.all_to_all_single(self.back, self.experts_out, self.send_splits, self.recv_splits, group=pg,
                                      async_op=async_op)


def _unsupported(moe_name: str):
    def unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
        # (an ep that does not fit the run is the workload's placement_problem, checked before this)
        if p["ep"] > 1 and (reason := group.unavailable(dev.kind)):
            return reason
        busiest = local_problem(p, max(1, int(exchange(p).received.max())))
        return backends.get("moe", moe_name).unsupported(busiest, dtype, dev)
    return unsupported


def _build(moe_name: str):
    def build(inputs: dict, p: dict, dtype: DType) -> dict:
        return _phases(backends.get("moe", moe_name), inputs, p, dtype)
    return build


def _phases(moe: Backend, inputs: dict, p: dict, dtype: DType) -> dict:
    x, out, rank = inputs["x"], inputs["out"], inputs["rank"]
    device, ep, k, h = x.device, p["ep"], p["top_k"], p["hidden"]
    per_rank = p["experts"] // ep
    pg = None  # the default group, or this rank's ep group
    if ep > 1:
        group.ensure(device.type)
        pg = group.subgroup(ep)

    n = p["chunks"]
    mine = [chunk_rows(p, rank, c) for c in range(n)]
    starts = [chunk_tokens(p, c)[0] for c in range(n)] + [p["tokens"]]
    unsorts = [torch.argsort(rows.pairs) for rows in mine]
    # What each rank's chunk c sends here, in its send order: local expert ids and weights (rank
    # by rank, so that each rank's routing is realized once).
    arriving = list(zip(*([chunk_rows(p, s, c).to(rank, per_rank) for c in range(n)] for s in range(ep))))
    recv_ids = [torch.cat([ids for ids, _ in chunk]) for chunk in arriving]
    recv_weights = [torch.cat([weights for _, weights in chunk]) for chunk in arriving]
    recv_splits = [[len(ids) for ids, _ in chunk] for chunk in arriving]
    recv_starts = [0] + torch.tensor([len(ids) for ids in recv_ids]).cumsum(0).tolist()

    pairs, received = p["tokens"] * k, recv_starts[-1]
    send = torch.empty((pairs, h), dtype=dtype.storage, device=device)
    experts_out = torch.empty((received, h), dtype=dtype.output, device=device)
    # Zeros, not garbage: the compute phase may read them before any exchange filled them.
    recv = send if ep == 1 else torch.zeros((received, h), dtype=dtype.storage, device=device)
    back = experts_out if ep == 1 else torch.zeros((pairs, h), dtype=dtype.output, device=device)
    unsorted = torch.empty((pairs, h), dtype=dtype.output, device=device)

    def piece(t0, t1, r0, gather, unsort, send_splits, recv_splits, ids, weights) -> _Piece:
        rows, r1 = slice(t0 * k, t1 * k), r0 + len(ids)
        local = {"x": recv[r0:r1], "w_gate_up": inputs["w_gate_up"], "w_down": inputs["w_down"],
                 "topk_ids": ids[:, None].to(device), "topk_weights": weights[:, None].to(device),
                 "out": experts_out[r0:r1]}
        experts = moe.build(local, local_problem(p, len(ids)), dtype) if len(ids) else None
        return _Piece(gather.to(device), unsort.to(device), send[rows], recv[r0:r1], experts_out[r0:r1],
                      back[rows], unsorted[rows], out[t0:t1], send_splits, recv_splits, experts)

    # All the tokens at once: the chunks side by side (their rows are consecutive in every buffer).
    whole = piece(0, p["tokens"], 0, torch.cat([rows.tokens for rows in mine]),
                  torch.cat([unsort + t0 * k for unsort, t0 in zip(unsorts, starts)]),
                  _totals(rows.splits for rows in mine), _totals(recv_splits), torch.cat(recv_ids),
                  torch.cat(recv_weights))

    def compute():
        whole.compute_gather(x)
        whole.compute_experts()
        whole.compute_sum(k)
        return out

    if ep == 1:
        return {"compute": compute}
    chunks = [piece(starts[c], starts[c + 1], recv_starts[c], mine[c].tokens, unsorts[c], mine[c].splits,
                    recv_splits[c], recv_ids[c], recv_weights[c]) for c in range(n)]

    def comm():
        whole.dispatch(pg)
        whole.combine(pg)
        return back

    def overlapped():
        dispatched, combined = {}, {}
        for step in range(len(chunks) + 2):
            if step < len(chunks):
                chunks[step].compute_gather(x)
                dispatched[step] = chunks[step].dispatch(pg, async_op=True)
            if 0 <= step - 1 < len(chunks):
                dispatched.pop(step - 1).wait()
                chunks[step - 1].compute_experts()
                combined[step - 1] = chunks[step - 1].combine(pg, async_op=True)
            if step >= 2:
                combined.pop(step - 2).wait()
                chunks[step - 2].compute_sum(k)
        return out

    return {"overlapped": overlapped, "compute": compute, "comm": comm}


def _totals(splits) -> list[int]:
    """Per rank, the sum of the chunks' splits."""
    return [sum(column) for column in zip(*splits)]


for _name, _description in DESCRIPTIONS.items():
    register(Backend("ep-moe", _name, _description, _unsupported(_name), _build(_name)))
