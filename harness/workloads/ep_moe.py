"""Expert-parallel MoE layer (`ep-moe`): the moe workload's layer split over a group of `ep` ranks.

Each rank holds `tokens` tokens (T) of width H; the E routed experts are split evenly, rank j owning
experts [j·E/ep, (j+1)·E/ep). Rank r's tokens are the moe workload's problem with the routing
seed rank_seed(p, r) (harness/workloads/moe.py: realize, the presets, SwiGLU experts), so every
rank can compute every rank's routing on the CPU and knows what it will receive without asking. A
real layer first exchanges those counts (a small all_to_all of E integers per rank); that is not
timed here.

One call of the layer on rank r (harness/backends/ep_moe.py runs it):
1. dispatch: one row per routed (token, slot) pair, gathered in expert order (so by destination
   rank) and sent with all_to_all_single to the rank owning its expert. Per pair, as Megatron's
   all-to-all token dispatcher does: the received rows are then a plain top-1 MoE problem the moe
   backends run unchanged. DeepEP sends a token once per destination rank instead (fewer bytes
   when a token has several experts on one rank) and reduces its k outputs there before the
   combine; that needs a top-k-within-rank local problem, which no moe backend here runs.
2. experts: the received rows through the rank's own experts, each row's routing weight applied
   (a moe backend on the local problem: tokens = rows received, top_k = 1, E/ep experts);
3. combine: the rows sent back with the reverse splits, and out[t] = the sum of token t's k rows.

Formulas (the WHOLE layer, all ep ranks together; its rates are over ep GPUs' peaks):
    flops = 6·(ep·T)·k·H·I                       (useful FLOPs, as moe's)
    bytes = E_act·3·H·I·s + ep·T·H·(s + s_out)   (moe's minimum over all ep·T tokens: each
            expert active anywhere read once by its owner, every token read once and written
            once; the exchanged rows' trips through HBM are communication: comm_bytes, busbw)
    comm_ops(rank r) = [("all_to_all", T·k·H·s), ("all_to_all", R_r·H·s_out)]
            (nccl-tests' all_to_all size is the rank's send buffer: dispatch sends all T·k of its
            rows, its own included; the combine sends back the R_r rows it received; rank None:
            the busiest rank's R)
R_r comes from the realized routing; rows_received_max and load_imbalance (R_max / (T·k), 1 when
every rank's experts receive the same rows) say how uneven it is.

Timed in three phases (workloads/overlap_model.py), chunks over each rank's source tokens; with
ep = 1 only the compute (the whole layer on one rank, nothing to exchange). Inputs: rank r's x,
and the weights of its own experts, each expert's from a generator seeded by the case's first draw
and the expert's id, so that check() can regenerate any expert one at a time: rank r's output is
compared with moe's single-process fp32 reference of its tokens through all E experts, with moe's
tolerance. bf16 and fp16 only: fp8 would need the per-expert scales of every rank's experts in the
reference and e4m3 rows on the wire, not built here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from harness.measure.dtypes import DType
from harness.workloads import LABEL, Param, Workload, overlap_model
from harness.workloads.comm import placement
from harness.workloads.moe import MOE, ROUTINGS, Routing, by_expert, random_weights, realize, rows_flops

RANK_BITS = 20  # rank r's routing seed is seed · 2^20 + r
_X, _EXPERT = 0, 1  # the two kinds of inputs made from the case's first draw


def rank_seed(p: dict, r: int) -> int:
    return (p["seed"] << RANK_BITS) | r


def rank_problem(p: dict, r: int) -> dict:
    """Rank r's tokens as a moe problem (its routing, the whole layer's experts)."""
    return {**p, "seed": rank_seed(p, r)}


def rank_routing(p: dict, r: int) -> Routing:
    return realize(p["tokens"], p["experts"], p["top_k"], p["routing"], rank_seed(p, r))


def chunk_tokens(p: dict, c: int) -> tuple[int, int]:
    """Chunk c's tokens [t0, t1) of a rank's T (near-equal, none empty since chunks <= T)."""
    t, n = p["tokens"], p["chunks"]
    return c * t // n, (c + 1) * t // n


@dataclass(frozen=True)
class ChunkRows:
    """One rank's chunk as it is dispatched: its (token, slot) pairs in send order, sorted by
    expert (hence by destination rank), stably so that each expert keeps token order."""

    pairs: torch.Tensor  # [n] the pair (t·k + slot, t counted from the chunk's first token) of each row
    tokens: torch.Tensor  # [n] its token, counted from the rank's first
    experts: torch.Tensor  # [n] its expert
    weights: torch.Tensor  # [n] float32 routing weight
    splits: list[int]  # rows sent to each rank of the group

    def to(self, rank: int, per_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(local expert ids, weights) of the rows sent to `rank`, in send order."""
        mine = self.experts // per_rank == rank
        return self.experts[mine] - rank * per_rank, self.weights[mine]


def chunk_rows(p: dict, r: int, c: int) -> ChunkRows:
    t0, t1 = chunk_tokens(p, c)
    routing = rank_routing(p, r)
    ids = routing.ids[t0:t1]
    order, _ = by_expert(ids, p["experts"])
    experts = ids.flatten()[order]
    splits = torch.bincount(experts // (p["experts"] // p["ep"]), minlength=p["ep"]).tolist()
    return ChunkRows(order, order // p["top_k"] + t0, experts, routing.weights[t0:t1].flatten()[order], splits)


@dataclass(frozen=True)
class Exchange:
    """The realized traffic of a layer: rows[s, c, d] = rows rank s's chunk c sends to rank d."""

    rows: torch.Tensor  # [ep, chunks, ep] int64
    experts_active: int  # experts that receive a row from any rank

    @property
    def received(self) -> torch.Tensor:
        """[ep] rows each rank's experts receive."""
        return self.rows.sum(dim=(0, 1))


@functools.lru_cache(maxsize=16)
def _exchange(tokens: int, experts: int, top_k: int, routing: str, seed: int, ep: int, chunks: int) -> Exchange:
    p = {"tokens": tokens, "experts": experts, "top_k": top_k, "routing": routing, "seed": seed, "ep": ep,
         "chunks": chunks}
    rows = torch.tensor([[chunk_rows(p, s, c).splits for c in range(chunks)] for s in range(ep)])
    counts = sum(rank_routing(p, s).counts for s in range(ep))
    return Exchange(rows, int((counts > 0).sum()))


def exchange(p: dict) -> Exchange:
    return _exchange(*(p[n] for n in ("tokens", "experts", "top_k", "routing", "seed", "ep", "chunks")))


def local_problem(p: dict, rows: int) -> dict:
    """The moe problem of `rows` received rows on one rank: top-1 over its E/ep experts."""
    return {"tokens": rows, "experts": p["experts"] // p["ep"], "top_k": 1, "hidden": p["hidden"],
            "intermediate": p["intermediate"]}


def group_problem(p: dict, world_size: int) -> str | None:
    """Why the placed layer cannot run on a run of world_size ranks, or None."""
    ep, e = p["ep"], p["experts"]
    if ep > world_size:
        return f"ep={ep} needs {ep} ranks; the run has {world_size}"
    if world_size % ep:
        return f"ep={ep} does not divide the {world_size} ranks of the run into groups"
    if e % ep:
        return f"experts={e} do not split evenly over ep={ep} ranks"
    return None


def ep_rank(p: dict) -> int:
    """This process's rank in its ep group (groups are consecutive ranks: group.subgroup)."""
    return placement()[0] % p["ep"]


def expert(p: dict, dtype: DType, device, seed: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's (W_gate_up [2I, H], W_down [H, I]) in the dtype, the same on every rank."""
    h, i = p["hidden"], p["intermediate"]
    gen = _generator(device, seed, _EXPERT, e)
    return random_weights((1, 2 * i, h), dtype, device, gen)[0][0], random_weights((1, h, i), dtype, device, gen)[0][0]


def _generator(device, seed: int, kind: int, index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed << 32) | (kind << 24) | index)


class EpMoe(Workload):
    name = "ep-moe"
    params = (
        Param("tokens", int, "tokens per rank (T)", required=True, minimum=1),
        *(q for q in MOE.params if q.name in ("experts", "top_k", "hidden", "intermediate")),  # presets fill them
        Param("routing", str, f"how tokens pick experts: {ROUTINGS}", default="balanced"),
        Param("seed", int, "seed of the routing (rank r's is seed·2^20 + r; the inputs have the case's own)",
              default=0, minimum=0),
        Param("ep", int, "ranks the experts are split over; 0: every rank of the run", default=0, minimum=0),
        Param("chunks", int, "chunks of each rank's tokens whose exchange overlaps the experts", default=4,
              minimum=1),
        LABEL,
    )
    dtypes = ("bf16", "fp16")
    default_dtype = "bf16"
    summary_columns = ("rows_received_max", "load_imbalance")
    presets = MOE.presets
    collective = True
    phases = overlap_model.PHASES

    def validate(self, p: dict) -> tuple[str, str] | None:
        if broken := MOE.validate(p):
            return broken
        if p["chunks"] > p["tokens"]:
            return "chunks", f"must be at most tokens ({p['tokens']}): a chunk is some of a rank's tokens (got {p['chunks']})"
        return None

    def placed(self, p: dict, world) -> dict:
        return {**p, "ep": p["ep"] or world.size}

    def placement_problem(self, p: dict, world) -> str | None:
        return group_problem(p, world.size)

    def peak_gpus(self, p: dict, world) -> int:
        return p["ep"]

    def flops(self, p: dict) -> int:
        return rows_flops(p, p["ep"] * p["tokens"] * p["top_k"])

    def bytes(self, p: dict, dtype: DType) -> int:
        h, i, s = p["hidden"], p["intermediate"], dtype.size
        return exchange(p).experts_active * 3 * h * i * s + p["ep"] * p["tokens"] * h * (s + dtype.out_size)

    def comm_ops(self, p: dict, dtype: DType, world, rank: int | None = None) -> list[tuple[str, int]]:
        if p["ep"] == 1:
            return []  # nothing leaves the rank
        received = exchange(p).received
        rows = int(received.max() if rank is None else received[rank])
        return [("all_to_all", p["tokens"] * p["top_k"] * p["hidden"] * dtype.size),
                ("all_to_all", rows * p["hidden"] * dtype.out_size)]

    def extra_columns(self, p: dict, dtype: DType) -> dict:
        most = int(exchange(p).received.max())
        return {"rows_received_max": most, "load_imbalance": most / (p["tokens"] * p["top_k"])}

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        # The busiest rank's local moe problem (its experts, received rows and their outputs, the
        # hungriest backend's work, a reference's worth of check), twice but for the shared weights:
        # the chunks' moe builds together hold at most what the whole one does (triton's padded h,
        # the sort orders). Plus its own tokens: x, out and the fp32 reference; the send, returned
        # and unsorted rows; and the gather and unsort indices of the chunks and of the whole.
        t, k, h, s = p["tokens"], p["top_k"], p["hidden"], dtype.size
        weights = p["experts"] // p["ep"] * 3 * h * p["intermediate"] * s
        local = MOE.memory_bytes(local_problem(p, int(exchange(p).received.max())), dtype)
        return 2 * local - weights + t * h * (s + dtype.out_size + 4) + t * k * (3 * h * s + 4 * 8)

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        rank, per_rank = ep_rank(p), p["experts"] // p["ep"]
        # The case's generator is seeded from the problem, so this draw is the same on every rank.
        seed = int(torch.randint(0, 1 << 30, (1,), generator=gen, device=gen.device))
        x = torch.randn((p["tokens"], p["hidden"]), dtype=dtype.storage, device=device,
                        generator=_generator(device, seed, _X, rank))
        w_gate_up = torch.empty((per_rank, 2 * p["intermediate"], p["hidden"]), dtype=dtype.storage, device=device)
        w_down = torch.empty((per_rank, p["hidden"], p["intermediate"]), dtype=dtype.storage, device=device)
        for j in range(per_rank):
            w_gate_up[j], w_down[j] = expert(p, dtype, device, seed, rank * per_rank + j)
        return {"x": x, "w_gate_up": w_gate_up, "w_down": w_down, "rank": rank, "seed": seed,
                "out": torch.full((p["tokens"], p["hidden"]), float("nan"), dtype=dtype.output, device=device)}

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        rank, x = inputs["rank"], inputs["x"]

        def weights(e: int) -> tuple[torch.Tensor, torch.Tensor]:
            w_gate_up, w_down = expert(p, dtype, x.device, inputs["seed"], e)
            return w_gate_up.float(), w_down.float()

        wrong = MOE.check({"x": x}, out, rank_problem(p, rank), dtype, weights_of=weights)
        return f"rank {rank} of ep={p['ep']}: {wrong}" if wrong else None


EP_MOE = WORKLOAD = EpMoe()
