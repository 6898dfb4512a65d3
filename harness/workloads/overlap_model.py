"""Compute against communication, one place for its formulas: the three timings of a layer split
over ranks (tp-linear, ep-moe), what is derived from them, and how `mfu plan` predicts them.

A layer is timed in three phases on every rank (the backend builds one closure per phase):
- compute_ms: the compute alone, its communication replaced by nothing (the layer's own kernels);
- comm_ms: the communication alone, with the same bytes (the layer's own collectives);
- overlapped_ms: both, the work split into `chunks` so that chunk i's communication runs while
  chunk i+1 computes (on NCCL the collectives run on NCCL's own stream; on gloo on its thread).
The row's time_ms is overlapped_ms: the layer as it would run.

    compute_comm_ratio = compute_ms / comm_ms
    overlap_eff        = (compute_ms + comm_ms − overlapped_ms) / min(compute_ms, comm_ms)
    exposed_comm_ms    = overlapped_ms − compute_ms

compute_comm_ratio is the figure infrastructure must keep from falling as clusters grow: below 1
the layer waits on its links however well it overlaps. overlap_eff is the share of the shorter
phase that overlap hides: 1 when overlapped_ms = max(compute_ms, comm_ms), 0 when it is their sum
(no overlap), below 0 when chunking costs more than it hides (small chunks run GEMMs less
efficiently, and every chunk pays the collective's latency again). Communication kernels take SMs
from compute while they run (NCCL's ring kernels occupy a few SMs each, and copy engines share
memory bandwidth), so overlapped compute is slower than compute alone and overlap_eff rarely
reaches 1: async tensor parallelism (Wang et al., "Overlap Communication with Dependent
Computation via Decomposition", ASPLOS 2023; PyTorch's async-TP, 2024) and DeepEP's SM-free
all-to-all exist to win that back. The communication phase's rates follow nccl-tests: algbw =
the bytes the rank sends / comm_ms, busbw = algbw × the op's factor (comm_model.py), link_util =
busbw / the link's bandwidth.

The plan's prediction: compute from the roofline (the layer's FLOPs and bytes over its ranks'
peaks), communication from comm_model's α-β time of each collective, and an ideal pipeline of c
chunks in which nothing contends: overlapped = max(C, M_c) + min(C, M_c) / c, where M_c = c ×
(the α-β time of one chunk's collectives): the first chunk's compute and the last chunk's
communication cannot hide behind anything, and each chunk pays the latency α again.
"""

from __future__ import annotations

from harness.distributed.launch import World
from harness.workloads import comm_model

PHASES = ("overlapped", "compute", "comm")
NO_COMM = ("one rank in the layer's group: compute only, nothing crosses a link "
           "(run on several GPUs, e.g. `mfu run --nproc 8`, to measure the communication)")


def derived(compute_ms: float | None, comm_ms: float | None, overlapped_ms: float | None) -> dict:
    """compute_comm_ratio, overlap_eff and exposed_comm_ms; None where a term is missing or zero."""
    ratio = compute_ms / comm_ms if compute_ms is not None and comm_ms else None
    shorter = min(compute_ms, comm_ms) if compute_ms is not None and comm_ms is not None else None
    eff = ((compute_ms + comm_ms - overlapped_ms) / shorter
           if shorter and overlapped_ms is not None else None)
    exposed = overlapped_ms - compute_ms if overlapped_ms is not None and compute_ms is not None else None
    return {"compute_comm_ratio": ratio, "overlap_eff": eff, "exposed_comm_ms": exposed}


def layer_world(size: int, world: World) -> World:
    """The World of one layer group: `size` consecutive ranks of `world` (harness/distributed/group.py
    subgroup), on one node when they fit in one."""
    return World(size, min(size, world.local_size))


def comm_rates(ops: list[tuple[str, int]], comm_ms: float | None, group: World, spec) -> dict:
    """comm_bytes, and the communication phase's algbw_gbps, busbw_gbps, link_util and link_note:
    over every byte the rank sends in `ops`; busbw only when they are all the same op (its factor)."""
    nbytes = sum(size for _, size in ops)
    if not ops or group.size < 2:
        return {"link_note": NO_COMM}
    if not comm_ms:
        return {"comm_bytes": nbytes}
    if len({op for op, _ in ops}) > 1:
        return {"comm_bytes": nbytes, "algbw_gbps": comm_model.algbw_gbps(nbytes, comm_ms),
                "link_note": "collectives of different kinds: no single bus factor, so no busbw"}
    return {"comm_bytes": nbytes, **comm_model.link_columns(ops[0][0], nbytes, comm_ms, group, spec)}


def layer_columns(times_ms: dict, ops: list[tuple[str, int]], group: World, spec) -> dict:
    """Every column a layer derives from its measured phases (times_ms: phase -> median ms)."""
    phases = {f"{phase}_ms": times_ms.get(phase) for phase in PHASES}
    return {**phases, **derived(times_ms.get("compute"), times_ms.get("comm"), times_ms.get("overlapped")),
            **comm_rates(ops, times_ms.get("comm"), group, spec)}


def predicted_comm_ms(ops: list[tuple[str, int]], group: World, spec, chunks: int = 1) -> tuple[float | None, str | None]:
    """The α-β time of a layer's collectives, each split into `chunks` calls; or None and why."""
    if group.size < 2:
        return None, NO_COMM
    total = 0.0
    for op, size in ops:
        p = comm_model.predict(op, size // chunks, group, spec)
        if p.time_ms is None:
            return None, p.note
        total += chunks * p.time_ms
    return total, None


def predicted_overlap_ms(compute_ms: float, comm_chunked_ms: float, chunks: int) -> float:
    """An ideal pipeline of `chunks` chunks: max(C, M) + min(C, M) / chunks."""
    return max(compute_ms, comm_chunked_ms) + min(compute_ms, comm_chunked_ms) / chunks
