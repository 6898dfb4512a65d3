"""tp-linear backends: for each GEMM backend offered here (`torch`: cuBLAS; `triton`: ours), one of
the same name whose local GEMMs are that backend's, built once per chunk through
backends.get("gemm", name).build on the workload's gemm layout ({"a": rows, "b": W shard^T, "out":
a row block of the output}). The collectives run on the layer's group (group.subgroup(tp); the
default group when tp is every rank). build() returns the phases of workloads/overlap_model.py:

- compute: the local GEMM, unchunked (column-parallel: on the whole X, which is what the gather
  delivers and which every rank holds for the check); its output is the layer's only for tp = 1,
  where it is the one phase;
- comm: the layer's collective, unchunked, the same bytes: row an in-place all_reduce of the output
  (repeated calls keep adding into it, which changes no collective's speed), column an all_gather of
  this rank's rows into a staging buffer;
- overlapped: `chunks` blocks of token rows. Row: chunk i's GEMM, then its all_reduce issued with
  async_op=True, so it runs while chunk i+1 computes; every handle waited before returning.
  Column: every chunk's all_gather issued at once (each into its own staging block, none depends on
  a GEMM), then chunk by chunk: wait for its gather, GEMM it, so chunk i's GEMM runs while the
  later chunks gather. A gathered chunk holds chunk i's rows of every rank, rank-major, so its
  GEMM result is tp row blocks that belong tp places apart in Y: it is computed into a chunk
  buffer and copied into place (T·N/tp output elements read and written once more per call).
On NCCL an async collective runs on NCCL's own stream after the work queued before it on the
current stream, and wait() makes the current stream, not the host, wait; on gloo it runs on gloo's
thread while this thread computes. Communication kernels take SMs from compute (NCCL's kernels
occupy SMs while they run), so overlapped compute is slower than compute alone. Every buffer is
made in build, never in a closure.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from harness.backends import Backend, get, register
from harness.backends.comm import all_gather
from harness.distributed import group
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DType
from harness.workloads.tp_linear import row_blocks

GEMM_BACKENDS = {"torch": "cuBLAS GEMMs (torch.matmul)", "triton": "our GEMMs (kernels/gemm.py)"}


def local_problems(p: dict) -> list[dict]:
    """The gemm problems ({m, n, k}) one rank runs: the whole local GEMM, and (tp > 1) its chunks'."""
    t, k, n, tp = p["tokens"], p["in_features"], p["out_features"], p["tp"]
    if p["parallel"] == "row":
        whole, per_chunk = {"m": t, "n": n, "k": k // tp}, [s.stop - s.start for s in row_blocks(t, p["chunks"])]
    else:
        whole = {"m": t, "n": n // tp, "k": k}
        per_chunk = [tp * (s.stop - s.start) for s in row_blocks(t // tp, p["chunks"])]
    if tp == 1:
        return [whole]
    return [whole] + [{**whole, "m": m} for m in sorted(set(per_chunk))]


def _unsupported_with(gemm_name: str):
    def unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
        # (a tp that does not fit the run is the workload's placement_problem, checked before this)
        if p["tp"] > 1 and (reason := group.unavailable(dev.kind)):
            return reason
        gemm = get("gemm", gemm_name)
        for problem in local_problems(p):
            reason = gemm.unsupported({**problem, "label": ""}, dtype, dev)
            if reason:
                return reason
        return None

    return unsupported


def _build_with(gemm_name: str):
    def build(inputs: dict, p: dict, dtype: DType) -> dict:
        gemm = get("gemm", gemm_name)

        def local(a: torch.Tensor, out: torch.Tensor):
            """The gemm backend's closure for out = a · b, b this rank's W shard (transposed)."""
            problem = {"m": a.shape[0], "n": out.shape[1], "k": a.shape[1], "label": ""}
            return gemm.build({"a": a, "b": inputs["b"], "out": out}, problem, dtype)

        group.ensure(inputs["out"].device.type)
        tp = p["tp"]
        sub = group.subgroup(tp) if tp > 1 else None
        if p["parallel"] == "row":
            return _row(inputs, p, local, sub)
        return _column(inputs, p, local, sub)

    return build


def _row(inputs: dict, p: dict, local, sub) -> dict:
    a, out = inputs["a"], inputs["out"]
    compute = local(a, out)
    if p["tp"] == 1:
        return {"compute": compute}
    blocks = row_blocks(p["tokens"], p["chunks"])
    chunk_gemms = [local(a[rows], out[rows]) for rows in blocks]
    pieces = [out[rows] for rows in blocks]  # row blocks of a contiguous output: contiguous

    def overlapped():
        works = []
        for chunk_gemm, piece in zip(chunk_gemms, pieces):
            chunk_gemm()
            works.append(dist.all_reduce(piece, group=sub, async_op=True))
        for work in works:
            work.wait()
        return out

    def comm():
        dist.all_reduce(out, group=sub)
        return out

    return {"overlapped": overlapped, "compute": compute, "comm": comm}


def _column(inputs: dict, p: dict, local, sub) -> dict:
    x, a, out = inputs["x"], inputs["a"], inputs["out"]
    compute = local(x, out)
    tp = p["tp"]
    if tp == 1:
        return {"compute": compute}
    t, k = x.shape
    rows, n_out = t // tp, out.shape[1]
    blocks = row_blocks(rows, p["chunks"])
    staging = torch.empty(t * k, dtype=x.dtype, device=x.device)
    gathered = [staging[tp * b.start * k:tp * b.stop * k].view(tp * (b.stop - b.start), k) for b in blocks]
    result = torch.empty(tp * max(b.stop - b.start for b in blocks), n_out, dtype=out.dtype, device=out.device)
    results = [result[:tp * (b.stop - b.start)] for b in blocks]  # one buffer, reused chunk after chunk
    chunk_gemms = [local(g, r) for g, r in zip(gathered, results)]
    by_rank = out.view(tp, rows, n_out)  # Y's rows as [source rank, its row, column]
    places = [(by_rank[:, b], r.view(tp, b.stop - b.start, n_out)) for b, r in zip(blocks, results)]
    sends = [a[b] for b in blocks]
    whole = staging.view(t, k)

    def overlapped():
        works = [all_gather(g, send, group=sub, async_op=True) for g, send in zip(gathered, sends)]
        for work, chunk_gemm, (place, result) in zip(works, chunk_gemms, places):
            work.wait()
            chunk_gemm()
            place.copy_(result)
        return out

    def comm():
        all_gather(whole, a, group=sub)
        return whole

    return {"overlapped": overlapped, "compute": compute, "comm": comm}


for _name, _what in GEMM_BACKENDS.items():
    register(Backend("tp-linear", _name, f"tensor-parallel linear layer: {_what} per chunk, torch.distributed "
                                         "collectives on the layer's group (NCCL on CUDA, gloo on CPU)",
                     _unsupported_with(_name), _build_with(_name)))
