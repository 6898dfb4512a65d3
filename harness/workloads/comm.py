"""Collectives over every rank of the run (`comm`): all_reduce, all_gather, reduce_scatter,
all_to_all, broadcast and send_recv of an array of `size` bytes, as nccl-tests measures them.

`size` is nccl-tests' "size": the whole array (all_gather's gathered output, reduce_scatter's input,
each rank's all_to_all send buffer, the broadcast buffer, each rank's send_recv message). The rates
are in comm_model.py beside this file: algbw, busbw (nccl-tests' factors) and link_util. flops = 0;
bytes = size.

Correct before timed: every input is a known integer pattern of the rank and the element index,
exact in the dtype, so each rank knows its output exactly and compares it bit for bit:
- data movement: element j of rank r holds ((j + B·r + seed) mod M), shifted to be centred on 0
  (M = 251 for bf16 and fp8, 65521 for fp32): a chunk from the wrong rank or the wrong place differs;
  fp8 moves as bytes (uint8 views), so its pattern is raw bytes, never 0xFF, the poison;
- sums: x_r[j] = ((j + r + seed) mod K) + 1 on the first m ranks (0 on the others), with m·K at most
  the dtype's largest exactly summed integer (bf16 256, fp32 2^24): every partial sum, in any order
  NCCL or gloo takes, is exact, and Σ_r has the closed form `_sum_pattern` computes.
Outputs start poisoned (NaN, or 0xFF bytes for fp8), so an element nothing wrote fails. all_reduce
and broadcast work in place: the check sees the first call's result, and the timed calls that follow
keep adding into the buffer (sums grow, to inf at worst), which changes no collective's speed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from harness.measure.dtypes import DType
from harness.workloads import LABEL, Param, Workload, comm_model
from harness.workloads.comm_model import OPS, REDUCTIONS

CHUNK = 1 << 24  # elements made or compared at a time: inputs and check in bounded memory
CHUNK_INT64 = 3  # int64 temporaries per element of a chunk (index, and two steps of a pattern)
MOVE_MODULUS = {"bf16": 251, "fp8": 251, "fp32": 65521}  # primes; bf16 and fp32 hold them exactly
RANK_STRIDE = 97  # B: shifts each rank's pattern, prime to the moduli
SUM_EXACT = {"bf16": 256, "fp32": 2**24}  # integers summed exactly: 2^(significand bits)
SUM_CYCLE = {"bf16": 8, "fp32": 64}  # K: per-rank summands are 1..K
FP8_POISON = 0xFF  # a NaN byte in float8_e4m3fn, outside the pattern's 0..250


def placement() -> tuple[int, int]:
    """(rank, world size) of this process in the run's group (harness/distributed/group.py); (0, 1)
    in a single-process run before the group of one exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shapes(op: str, elements: int, n: int) -> tuple[int, int]:
    """(send, output) element counts per rank for `elements` elements of the whole array."""
    chunk = elements // n
    if op == "all_gather":
        return chunk, elements
    if op == "reduce_scatter":
        return elements, chunk
    return elements, elements


class Comm(Workload):
    name = "comm"
    params = (
        Param("op", str, "the collective: " + ", ".join(OPS), required=True, choices=OPS),
        Param("size", int, "bytes of the whole array, as nccl-tests' size", required=True, minimum=1),
        LABEL,
    )
    dtypes = ("bf16", "fp32", "fp8")
    default_dtype = "bf16"
    summary_columns = ("algbw_gbps", "busbw_gbps", "link_util")
    collective = True

    def flops(self, p: dict) -> int:
        return 0

    def bytes(self, p: dict, dtype: DType) -> int:
        return p["size"]

    def peak_gpus(self, p: dict, world) -> None:
        return None  # its bytes cross links: FLOP and memory peaks do not apply

    def timed_columns(self, p: dict, dtype: DType, times_ms: dict, world, spec) -> dict:
        return comm_model.link_columns(p["op"], p["size"], times_ms["time"], world, spec)

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        # send + output are at most the whole array each; making the inputs and checking the output
        # hold one chunk's int64 temporaries and encoded values.
        elements = p["size"] // dtype.size
        return 2 * p["size"] + min(elements, CHUNK) * (8 * CHUNK_INT64 + dtype.size)

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        op = p["op"]
        rank, n = placement()
        # The same seed on every rank: the generator is seeded from the problem, not the rank.
        seed = int(torch.randint(0, 1 << 20, (1,), generator=gen, device=gen.device))
        send_count, out_count = shapes(op, p["size"] // dtype.size, n)
        base = {"rank": rank, "world": n, "seed": seed}
        if op in REDUCTIONS:
            send = _filled(send_count, dtype, device, lambda index: _sum_summand(index, rank, n, seed, dtype))
        elif op == "broadcast" and rank != 0:
            send = _poison(send_count, dtype, device)
        else:
            send = _filled(send_count, dtype, device, lambda index: _move_pattern(index, rank, seed, dtype))
        if op in ("all_reduce", "broadcast"):  # in place: the buffer is the output
            return {**base, "send": send, "out": send}
        return {**base, "send": send, "out": _poison(out_count, dtype, device)}

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        op, rank, n, seed = p["op"], inputs["rank"], inputs["world"], inputs["seed"]
        elements = p["size"] // dtype.size
        _, want = shapes(op, elements, n)
        if out.dtype != dtype.storage or out.numel() != want:
            return f"{op}: output is {out.numel()} {out.dtype}, expected {want} {dtype.storage}"
        flat = out.reshape(-1)
        for start in range(0, want, CHUNK):
            index = torch.arange(start, min(start + CHUNK, want), device=out.device)
            expected = _encode(_expected(op, index, rank, n, seed, elements // n, dtype), dtype)
            wrong = _bits(flat[start:start + len(index)]) != _bits(expected)
            if wrong.any():
                at = int(wrong.nonzero()[0])
                return (f"{op} on rank {rank} of {n}: element {start + at} is {_show(flat[start + at], dtype)}, "
                        f"expected {_show(expected[at], dtype)} ({int(wrong.sum())} wrong among elements "
                        f"{start}-{start + len(index) - 1} of {want})")
        return None


def _expected(op: str, index: torch.Tensor, rank: int, n: int, seed: int, chunk: int, dtype: DType) -> torch.Tensor:
    """The exact integer values of this rank's output elements at `index`."""
    if op == "all_reduce":
        return _sum_pattern(index, n, seed, dtype)
    if op == "reduce_scatter":  # this rank's chunk of the sum
        return _sum_pattern(rank * chunk + index, n, seed, dtype)
    if op == "all_gather":  # chunk s is rank s's send buffer
        return _move_pattern(index % chunk, index // chunk, seed, dtype)
    if op == "all_to_all":  # chunk s is rank s's chunk number `rank`
        return _move_pattern(rank * chunk + index % chunk, index // chunk, seed, dtype)
    if op == "broadcast":
        return _move_pattern(index, 0, seed, dtype)
    if op == "send_recv":  # from the previous rank of the ring
        return _move_pattern(index, (rank - 1) % n, seed, dtype)
    raise ValueError(op)


def _move_pattern(index: torch.Tensor, rank, seed: int, dtype: DType) -> torch.Tensor:
    """Data-movement values (int64), distinct across ranks and positions; exact in the dtype."""
    m = MOVE_MODULUS[dtype.name]
    q = (index + RANK_STRIDE * rank + seed) % m
    return q if dtype.name == "fp8" else q - m // 2


def _sum_terms(n: int, dtype: DType) -> tuple[int, int]:
    """(K, m): per-rank summands 1..K on the first m ranks, so that m·K is summed exactly."""
    k = SUM_CYCLE[dtype.name]
    return k, min(n, SUM_EXACT[dtype.name] // k)


def _sum_summand(index: torch.Tensor, rank: int, n: int, seed: int, dtype: DType) -> torch.Tensor:
    k, m = _sum_terms(n, dtype)
    if rank >= m:
        return torch.zeros_like(index)
    return (index + rank + seed) % k + 1


def _sum_pattern(index: torch.Tensor, n: int, seed: int, dtype: DType) -> torch.Tensor:
    """Σ over ranks r < m of ((j + r + seed) mod K) + 1, in closed form: m = qK + s ranks give q full
    cycles (each 0 + 1 + … + K−1) and s more residues from a = (j + seed) mod K on."""
    k, m = _sum_terms(n, dtype)
    q, s = divmod(m, k)
    partial = torch.tensor([sum((a + t) % k for t in range(s)) for a in range(k)], device=index.device)
    return m + q * k * (k - 1) // 2 + partial[(index + seed) % k]


def _filled(count: int, dtype: DType, device: str, values) -> torch.Tensor:
    """A tensor of `count` elements holding values(index) (int64 pattern values), made a chunk at a time."""
    t = torch.empty(count, dtype=dtype.storage, device=device)
    for start in range(0, count, CHUNK):
        t[start:start + CHUNK] = _encode(values(torch.arange(start, min(start + CHUNK, count), device=device)), dtype)
    return t


def _encode(values: torch.Tensor, dtype: DType) -> torch.Tensor:
    """int64 pattern values as the dtype's storage (fp8: the values are its raw bytes)."""
    if dtype.name == "fp8":
        return values.to(torch.uint8).view(dtype.storage)
    return values.to(dtype.storage)


def _poison(count: int, dtype: DType, device: str) -> torch.Tensor:
    if dtype.name == "fp8":
        return torch.full((count,), FP8_POISON, dtype=torch.uint8, device=device).view(dtype.storage)
    return torch.full((count,), float("nan"), dtype=dtype.storage, device=device)


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers of the same size: compare exactly, NaN poison included."""
    return t.view(_SAME_SIZE_INT[t.element_size()])


def _show(value: torch.Tensor, dtype: DType) -> str:
    if dtype.name == "fp8":
        return f"byte 0x{int(value.view(torch.uint8)):02x}"
    return f"{float(value):g}"


COMM = WORKLOAD = Comm()
