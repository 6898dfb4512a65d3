"""A tensor-parallel linear layer (`tp-linear`), Y[T,N] = X[T,K] · W^T with W an nn.Linear weight
[N,K], split over a group of `tp` consecutive ranks (harness/distributed/group.py subgroup), timed in
three phases: compute alone, communication alone, both overlapped (workloads/overlap_model.py).

- row-parallel (`parallel: row`, Megatron's RowParallelLinear, where attention's o and the MLP's
  down projection run): rank r holds X[:, K-shard r] ([T, K/tp]) and W[:, K-shard r]; its GEMM gives
  a partial Y [T, N], and an all_reduce (sum) over the group gives Y on every rank.
- column-parallel (`parallel: column`, the all-gather + GEMM of sequence-parallel TP and of async
  TP): rank r holds token rows [r·T/tp, (r+1)·T/tp) of X ([T/tp, K]) and W[N-shard r] ([N/tp, K]);
  an all_gather of the rows gives X [T, K] on every rank, whose GEMM gives Y[:, N-shard r].
Overlapped, the work is split into `chunks` blocks of token rows (of X for row, of each rank's
rows for column), chunk i's collective running while another chunk computes (backends/tp_linear.py).

Formulas (the whole layer, all tp ranks together: its rates are over the group's peaks):
    flops = 2·T·K·N
    bytes = the GEMMs' operands, each moved once on each rank that moves it:
            row:    (T·K + K·N)·s + tp·T·N·s_out   (every rank writes its partial Y)
            column: tp·T·K·s + K·N·s + T·N·s_out   (every rank reads the gathered X)
            The collectives' own memory traffic is not counted: it depends on NCCL's algorithm
            (ring, tree, NVLS), and their bytes are measured over links (comm_bytes, busbw).
    comm_ops: row [("all_reduce", T·N·s_out)], column [("all_gather", T·K·s)] per rank per call,
            in nccl-tests' sizes (comm_model.py); none for tp = 1.
s is the input element size, s_out the output's. On one rank (tp = 1) both are the plain GEMM.

Inputs: every rank draws the whole X and W from the same generator (the case seeds it from the
problem, not the rank) and keeps its shards, so the ranks' shards are of one layer; the whole X and
W stay in `inputs` for the check, which compares this rank's output with a higher-precision
single-process reference (the whole X·W^T, or its column shard). Row-parallel's output is tp partial
sums, each rounded to the output dtype, then added by the all_reduce in the output dtype (tp − 1
more roundings): its tolerance counts 2·tp − 1 roundings (check.py), a bound, since the partials are
smaller than Y. The output starts poisoned (NaN).
"""

from __future__ import annotations

import itertools

import torch

from harness.measure import models
from harness.measure.check import Comparison, rows_from, tolerance
from harness.measure.dtypes import DType, matmul_precision
from harness.workloads import LABEL, Param, Workload
from harness.workloads.comm import placement
from harness.workloads.gemm import CHUNK_BYTES, random_operand, reference_dtype
from harness.workloads.overlap_model import PHASES

PARALLEL = ("row", "column")
PRESET_MODELS = ("llama3-8b", "llama3-70b")
PRESET_PROJECTIONS = ("o", "mlp_down")  # the row-parallel projections of Megatron-style TP


def _preset_rows(model: str):
    def rows() -> list[dict]:
        spec = models.get(model)
        return [{"in_features": k, "out_features": n, "label": f"{model}.{proj}"}
                for proj, n, k in spec.projections() if proj in PRESET_PROJECTIONS]

    return rows


def row_blocks(rows: int, chunks: int) -> list[slice]:
    """`rows` split into `chunks` contiguous blocks, as even as integers allow (sizes differ by 1)."""
    bounds = [rows * i // chunks for i in range(chunks + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def split_problem(p: dict) -> tuple[str, str] | None:
    """(key, why) when the layer cannot be split over p["tp"] ranks (a resolved tp, not 0), else None."""
    tp, chunks = p["tp"], p["chunks"]
    if tp == 1:
        return None  # one rank: the whole GEMM, nothing split, chunks unused
    if p["parallel"] == "row":
        if p["in_features"] % tp:
            return "in_features", f"row-parallel splits in_features over tp={tp} ranks: {p['in_features']} is not a multiple"
        if chunks > p["tokens"]:
            return "chunks", f"chunks={chunks} exceeds the {p['tokens']} token rows"
        return None
    for key in ("tokens", "out_features"):
        if p[key] % tp:
            return key, f"column-parallel splits {key} over tp={tp} ranks: {p[key]} is not a multiple"
    if chunks > p["tokens"] // tp:
        return "chunks", f"chunks={chunks} exceeds the {p['tokens'] // tp} token rows each of the tp={tp} ranks holds"
    return None


class TpLinear(Workload):
    name = "tp-linear"
    params = (
        Param("tokens", int, "T: token rows of X (the suite gives it; presets do not)", required=True, minimum=1),
        Param("in_features", int, "K: the reduction dimension", required=True, minimum=1),
        Param("out_features", int, "N: output features", required=True, minimum=1),
        Param("tp", int, "ranks in the tensor-parallel group (consecutive ranks); 0 = every rank of the run",
              default=0, minimum=0),
        Param("parallel", str, "row: K split, all_reduce of partial outputs; column: N split, all_gather of token rows",
              default="row", choices=PARALLEL),
        Param("chunks", int, "blocks of token rows the overlapped phase pipelines", default=4, minimum=1),
        LABEL,
    )
    dtypes = ("bf16", "fp16", "fp32", "tf32")
    default_dtype = "bf16"
    baseline = "torch"
    presets = {name: _preset_rows(name) for name in PRESET_MODELS}
    summary_columns = ("compute_ms", "comm_ms", "compute_comm_ratio", "overlap_eff")
    collective = True
    phases = PHASES

    def validate(self, p: dict) -> tuple[str, str] | None:
        # tp 0 is resolved on the run's ranks (placed); the backend refuses a bad split then.
        return split_problem(p) if p["tp"] else None

    def placed(self, p: dict, world) -> dict:
        return {**p, "tp": p["tp"] or world.size}

    def placement_problem(self, p: dict, world) -> str | None:
        tp = p["tp"]
        if tp > world.size:
            return f"tp={tp} needs {tp} ranks; the run has {world.size}"
        if world.size % tp:
            return f"tp={tp} does not divide the {world.size} ranks of the run into groups"
        split = split_problem(p)
        return split[1] if split else None

    def peak_gpus(self, p: dict, world) -> int:
        return p["tp"]

    def flops(self, p: dict) -> int:
        return 2 * p["tokens"] * p["in_features"] * p["out_features"]

    def bytes(self, p: dict, dtype: DType) -> int:
        t, k, n, tp = p["tokens"], p["in_features"], p["out_features"], p["tp"]
        if p["parallel"] == "row":
            return (t * k + k * n) * dtype.size + tp * t * n * dtype.out_size
        return tp * t * k * dtype.size + k * n * dtype.size + t * n * dtype.out_size

    def comm_ops(self, p: dict, dtype: DType, world, rank: int | None = None) -> list[tuple[str, int]]:
        if p["tp"] == 1:
            return []
        if p["parallel"] == "row":
            return [("all_reduce", p["tokens"] * p["out_features"] * dtype.out_size)]
        return [("all_gather", p["tokens"] * p["in_features"] * dtype.size)]

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        t, k, n = p["tokens"], p["in_features"], p["out_features"]
        tp = p["tp"] or 1  # unplaced (tp 0): counted as one rank's whole layer
        s, s_out = dtype.size, dtype.out_size
        ref = torch.empty((), dtype=reference_dtype(dtype)).element_size()
        held = (t * k + n * k) * s  # the whole X and W, for the check
        if p["parallel"] == "row":
            n_out = n
            if tp > 1:
                held += (t * k + k * n) // tp * s  # the contiguous K shards of X and W
            held += t * n * s_out  # the output
        else:
            n_out = n // tp  # the shards are views of X's rows and W's rows
            held += t * n_out * s_out
            if tp > 1:  # the gather's staging, the whole X, and one chunk's GEMM result
                largest = -(-(t // tp) // p["chunks"])
                held += t * k * s + tp * largest * n_out * s_out
        rows = self._check_rows(t, n_out, dtype)
        return held + k * n_out * ref + rows * (k + 3 * n_out) * ref  # upcast W, a block of X, ref and error

    def _check_rows(self, t: int, n_out: int, dtype: DType) -> int:
        ref = torch.empty((), dtype=reference_dtype(dtype)).element_size()
        return max(1, min(t, CHUNK_BYTES // (n_out * ref)))

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        t, k, n, tp = p["tokens"], p["in_features"], p["out_features"], p["tp"]
        x, w = random_operand((t, k), dtype, device, gen), random_operand((n, k), dtype, device, gen)
        rank = placement()[0] % tp  # the rank inside its group of consecutive ranks
        if p["parallel"] == "row":
            shard = slice(rank * k // tp, (rank + 1) * k // tp)
            a, b, n_out = x[:, shard].contiguous(), w[:, shard].contiguous().t(), n
        else:
            rows, cols = slice(rank * t // tp, (rank + 1) * t // tp), slice(rank * n // tp, (rank + 1) * n // tp)
            a, b, n_out = x[rows], w[cols].t(), n // tp
        out = torch.full((t, n_out), float("nan"), dtype=dtype.output, device=device)
        return {"x": x, "w": w, "a": a, "b": b, "out": out, "rank": rank}

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        t, n, tp, rank = p["tokens"], p["out_features"], p["tp"], inputs["rank"]
        row = p["parallel"] == "row"
        want = (t, n if row else n // tp)
        where = f"{dtype.name} rank {rank} of tp={tp}"
        if tuple(out.shape) != want or out.dtype != dtype.output:
            return f"{where}: output is {tuple(out.shape)} {out.dtype}, expected {want} {dtype.output}"
        ref_dtype = reference_dtype(dtype)
        comparison = Comparison(tolerance_for(p, dtype))
        b = (inputs["w"].t() if row else inputs["b"]).to(ref_dtype)  # all of W, or this rank's columns
        block = self._check_rows(t, want[1], dtype)
        with matmul_precision("highest"):  # the reference never runs on TF32
            for start in range(0, t, block):
                ref = inputs["x"][start:start + block].to(ref_dtype) @ b
                wrong = comparison.add(out[start:start + block].to(ref_dtype), ref, rows_from(start))
                if wrong:
                    return f"{where}: {wrong}"
        wrong = comparison.finish()
        return f"{where}: {wrong}" if wrong else None


def tolerance_for(p: dict, dtype: DType):
    """check.py's rule for a K-long reduction; row-parallel's output is rounded 2·tp − 1 times (the
    tp partials, then the all_reduce's tp − 1 additions), column-parallel's once."""
    roundings = 2 * p["tp"] - 1 if p["parallel"] == "row" else 1
    return tolerance(dtype, p["in_features"], roundings=roundings)


TP_LINEAR = WORKLOAD = TpLinear()
