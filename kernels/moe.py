"""Our fused MoE expert layer (SwiGLU experts) in Triton, checked against torch in tests/test_moe_kernel.py.

Inputs: x[T, H]; topk_ids and topk_weights [T, k]; w_gate_up [E, 2I, H] (gate rows, then up
rows); w_down [E, H, I]; out[T, H]. Pair p = t·k + j is token t's j-th expert choice.

Sorting, in prepare() (outside the timed region): the pairs are sorted by expert and each
expert's run is padded to a multiple of BLOCK_M, so every block of BLOCK_M rows belongs to one
expert (block_expert[b]); padding rows hold the pair id P = T·k and are masked. An expert without
tokens gets no block, so its weights are never read. BLOCK_M follows the rows per active expert
(16 at decode sizes, up to 128); it is chosen on the host because the padding depends on it.

1. gate/up, fused: program (b, n) gathers block b's token rows of x and multiplies them by rows
   [n, n + BLOCK_N) of both W_gate_e and W_up_e: two fp32 accumulators share each x tile. The
   epilogue stores silu(g)·u to h[block rows, n : n + BLOCK_N] in the input dtype.
2. down: program (b, n) multiplies h's block rows by W_down_e[n : n + BLOCK_N, :]^T, scales row p
   by its routing weight and stores it to Y[p, n : n + BLOCK_N]: a scatter back to pair order.
3. top-k sum: out[t] = Σ_j Y[t·k + j], in fp32. With top_k = 1, Y is out and there is no sum.

Why a sorted scatter plus a sum rather than atomic adds into out: bf16 atomics round at every
add, so atomics need an fp32 buffer zeroed on every call and a final cast pass, about the traffic
of writing and reading Y; and atomics add in a different order on every run (results that change
bit for bit between runs) and are not idempotent, so autotuning, which runs a kernel many times,
would corrupt them. The scatter is deterministic and every launch can be rerun.

Programs of kernels 1 and 2 run in grouped order (GROUP_M blocks down one column of N tiles
before the next), so a wave of programs shares expert weight tiles in L2. Offsets into weights
are int64: DeepSeek-V3's w_gate_up has 7.5e9 elements. BLOCK_N, BLOCK_K, stages and warps are
autotuned per (blocks, N, K, BLOCK_M, dtype); configs overflowing shared memory are pruned.
`prepare(..., config=)` runs both GEMM kernels with one fixed triton.Config (BLOCK_N, BLOCK_K,
GROUP_M, stages, warps; `FIXED_CONFIG` fits every supported GPU) instead: see kernels/common.py.

fp8 (float8_e4m3fn x and weights, bf16 out): each expert's two weights carry a float32 scale
(x's is 1), applied to the fp32 accumulators; h is stored as e4m3 with a unit scale, saturated at
±448; Y is bf16. On Hopper, fp8 tensor-core partial sums are promoted into the fp32 accumulator
every 64 K elements (max_num_imprecise_acc), as the GEMM kernel does without fast accumulation.

Throughput: useful flops = 6·T·k·H·I; executed flops = 6·padded_rows·H·I (Prepared.padded_rows).
Under TRITON_INTERPRET=1 (CPU tests) autotuning has one small config per kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import common
from kernels.common import FP8, smem_bytes, tile_coords

MAX_BLOCK_M = 128
OUT_DTYPE = {torch.float32: torch.float32, torch.float16: torch.float16, torch.bfloat16: torch.bfloat16,
             FP8: torch.bfloat16}
FP8_MAX = 448.0
# fp8 partial sums go to the fp32 accumulator every this many K: at most the smallest BLOCK_K on a
# GPU (the interpreter ignores it, and its BLOCK_K is smaller).
FP8_PROMOTE_K = 64
SUM_BLOCK = 1024  # columns per program of the top-k sum

# (BLOCK_N, BLOCK_K, num_stages, num_warps). gate/up keeps two accumulators, so its BLOCK_N counts
# double; the narrow tiles give decode-sized problems (a few blocks) enough programs.
_GATE_UP_TILES = [(32, 128, 4, 4), (64, 64, 4, 4), (64, 128, 3, 4), (64, 64, 3, 8), (128, 64, 3, 8),
                  (128, 64, 4, 8)]
_DOWN_TILES = [(32, 128, 4, 4), (64, 64, 4, 4), (64, 128, 3, 4), (128, 64, 3, 8), (128, 64, 4, 4),
               (256, 64, 3, 8)]


# A fixed config for quick correctness checks (tests/, `config=`): two stages keep gate/up's
# BLOCK_M 128 rows and two weight tiles within the shared memory of every GPU we support. BLOCK_N 32
# and 8 warps: at BLOCK_M 128, 64-wide tiles or 4 warps spill registers on sm_90 (tools/sm90_compile.py);
# BLOCK_K stays >= FP8_PROMOTE_K, which fp8 needs.
FIXED_CONFIG = triton.Config({"BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4}, num_stages=2, num_warps=8)


def _configs(tiles):
    if common.INTERPRET:  # interpreted autotuning would run every config at numpy speed
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_stages=1, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bn, bk, s, w in tiles]


def _prune(configs, named_args, b_tiles, **kwargs):
    """Drop tiles far wider than N and pipelines that overflow shared memory."""
    a = named_args["a_ptr"]
    bm, cap_n = kwargs["BLOCK_M"], max(32, triton.next_power_of_2(named_args["N"]))
    keep = []
    for cfg in configs:
        bn, bk = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
        smem = cfg.num_stages * (bm + b_tiles * bn) * bk * a.element_size()
        if bn <= cap_n and smem <= smem_bytes(a.device.index):
            keep.append(cfg)
    return keep or configs[:1]


@triton.autotune(configs=_configs(_GATE_UP_TILES), key=["num_blocks", "N", "K", "BLOCK_M"],
                 prune_configs_by={"early_config_prune": functools.partial(_prune, b_tiles=2)})
@triton.jit
def _gate_up_kernel(a_ptr, w_ptr, scale_ptr, h_ptr, pairs_ptr, block_expert_ptr, num_blocks, N, K,
                    num_pairs, stride_am, stride_we, stride_wn, stride_hm, TOP_K: tl.constexpr,
                    PRECISION: tl.constexpr, MAX_IMPRECISE: tl.constexpr, H_MAX: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), num_blocks, tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(pairs_ptr + rows)
    valid = pairs < num_pairs
    tokens = tl.where(valid, pairs // TOP_K, 0).to(tl.int64)  # padding rows read token 0, unstored
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + tokens[:, None] * stride_am + rk[None, :]
    # Columns past N wrap back into range (loads need no N mask); the store drops them.
    g_ptrs = w_ptr + expert * stride_we + (rn % N).to(tl.int64)[None, :] * stride_wn + rk[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
        g = tl.load(g_ptrs, mask=rk[:, None] < k_left, other=0.0)
        u = tl.load(u_ptrs, mask=rk[:, None] < k_left, other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                       out_dtype=tl.float32)
        acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                       out_dtype=tl.float32)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    scale = tl.load(scale_ptr + expert)
    acc_g *= scale
    acc_u *= scale
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    if H_MAX > 0:  # fp8 h: saturate instead of overflowing to NaN
        h = tl.clamp(h, -H_MAX, H_MAX)
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_hm + rn[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=valid[:, None] & (rn[None, :] < N))


@triton.autotune(configs=_configs(_DOWN_TILES), key=["num_blocks", "N", "K", "BLOCK_M"],
                 prune_configs_by={"early_config_prune": functools.partial(_prune, b_tiles=1)})
@triton.jit
def _down_kernel(a_ptr, w_ptr, scale_ptr, y_ptr, pairs_ptr, block_expert_ptr, route_w_ptr, num_blocks, N,
                 K, num_pairs, stride_am, stride_we, stride_wn, stride_ym, PRECISION: tl.constexpr,
                 MAX_IMPRECISE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), num_blocks, tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(pairs_ptr + rows)
    valid = pairs < num_pairs
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # h's padding rows are zeros (prepare() zero-fills h once; kernel 1 never writes them).
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + rk[None, :]
    b_ptrs = w_ptr + expert * stride_we + (rn % N).to(tl.int64)[None, :] * stride_wn + rk[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                     out_dtype=tl.float32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    route_w = tl.load(route_w_ptr + pairs, mask=valid, other=0.0) * tl.load(scale_ptr + expert)
    acc = acc * route_w[:, None]
    y_ptrs = y_ptr + pairs.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=valid[:, None] & (rn[None, :] < N))


@triton.jit
def _topk_sum_kernel(y_ptr, out_ptr, N, stride_ym, stride_om, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + (token * TOP_K + j) * stride_ym + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * stride_om + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass
class Prepared:
    """A launcher ready to run: calling it computes out and returns it (launches only)."""

    launch: Callable[[], torch.Tensor]
    block_m: int
    padded_rows: int  # rows the GEMMs compute, padding included: executed flops = 6·rows·H·I

    def __call__(self) -> torch.Tensor:
        return self.launch()


@dataclass
class _Sorted:
    pairs: torch.Tensor  # [blocks·BLOCK_M] int32 pair ids grouped by expert; padding = T·k
    block_expert: torch.Tensor  # [blocks] int32
    blocks: int


def pick_block_m(num_pairs: int, active_experts: int) -> int:
    """The smallest power of two (16 to 128) holding an average active expert's rows."""
    per_expert = num_pairs / max(1, active_experts)
    block_m = 16
    while block_m < MAX_BLOCK_M and block_m < per_expert:
        block_m *= 2
    return block_m


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> _Sorted:
    """Pair ids grouped by expert, each expert's run padded to a multiple of block_m."""
    flat = topk_ids.flatten()
    num_pairs = flat.numel()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    blocks = (counts + block_m - 1) // block_m
    padded_start = (torch.cumsum(blocks, 0) - blocks) * block_m
    start = torch.cumsum(counts, 0) - counts
    expert_of = flat[order]
    position = padded_start[expert_of] + torch.arange(num_pairs, device=flat.device) - start[expert_of]
    total = int(blocks.sum())
    pairs = torch.full((total * block_m,), num_pairs, dtype=torch.int32, device=flat.device)
    pairs[position] = order.to(torch.int32)
    block_expert = torch.repeat_interleave(torch.arange(num_experts, device=flat.device), blocks)
    return _Sorted(pairs, block_expert.to(torch.int32), total)


def unsupported(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why this kernel cannot run `dtype` on `device`, in one line; None if it can."""
    if dtype not in OUT_DTYPE:
        return f"{dtype} is not supported (fp32, fp16, bf16, float8_e4m3fn)"
    if common.INTERPRET and dtype == FP8:
        return ("the Triton interpreter rounds fp32 to fp8 wrongly (a carry into the exponent is lost: "
                "1.97 becomes 1.0); run fp8 on a GPU")
    return common.platform_unsupported(dtype, device)


def _blocks_grid(blocks: int, n: int):
    """One program per (block of rows, BLOCK_N columns of n)."""
    return lambda meta: (blocks * triton.cdiv(n, meta["BLOCK_N"]),)


def _check(x, w_gate_up, w_down, topk_ids, topk_weights, out, scales):
    t, h = x.shape
    e, i2, h2 = w_gate_up.shape
    want = {"w_down": (w_down.shape, (e, h, i2 // 2)), "topk_weights": (topk_weights.shape, topk_ids.shape),
            "out": (out.shape, (t, h))}
    bad = [f"{name} is {tuple(got)}, expected {tuple(exp)}" for name, (got, exp) in want.items()
           if tuple(got) != tuple(exp)]
    if h2 != h or i2 % 2 or topk_ids.dim() != 2 or topk_ids.shape[0] != t:
        bad.append(f"need x [T, H], w_gate_up [E, 2I, H], topk_ids [T, k]; got {tuple(x.shape)}, "
                   f"{tuple(w_gate_up.shape)}, {tuple(topk_ids.shape)}")
    if len({x.dtype, w_gate_up.dtype, w_down.dtype}) != 1 or out.dtype != OUT_DTYPE.get(x.dtype):
        bad.append(f"x and weights must share a dtype and out be its output dtype; got {x.dtype}, "
                   f"{w_gate_up.dtype}, {w_down.dtype}, {out.dtype}")
    if any(scale is not None and tuple(scale.shape) != (e,) for scale in scales):
        bad.append(f"weight scales must be float32 [E] = [{e}]")
    if any(a.stride(-1) != 1 for a in (x, w_gate_up, w_down, out)):
        bad.append("x, w_gate_up, w_down and out need unit stride along their last dimension")
    if w_gate_up.stride(1) != h or w_down.stride(1) != i2 // 2:
        bad.append("each expert's weight must be a contiguous matrix")
    reason = unsupported(x.dtype, x.device)
    if bad or reason:
        raise ValueError(reason or "; ".join(bad))


def prepare(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_ids: torch.Tensor,
            topk_weights: torch.Tensor, out: torch.Tensor, *, w_gate_up_scale: torch.Tensor | None = None,
            w_down_scale: torch.Tensor | None = None, block_m: int | None = None,
            config: triton.Config | None = None) -> Prepared:
    """Sort and pad the routing, allocate h and Y, and return the launcher for out = MoE(x), so
    that a benchmark's timed region holds only the three launches. Scales (float32 [E], one per
    expert weight) default to 1. `config` runs both GEMM kernels with that one fixed config
    instead of autotuning."""
    _check(x, w_gate_up, w_down, topk_ids, topk_weights, out, (w_gate_up_scale, w_down_scale))
    gate_up_kernel, down_kernel = common.pinned(_gate_up_kernel, config), common.pinned(_down_kernel, config)
    (t, hidden), (experts, i2, _) = x.shape, w_gate_up.shape
    inter, top_k = i2 // 2, topk_ids.shape[1]
    num_pairs = t * top_k
    if block_m is None:
        block_m = pick_block_m(num_pairs, int(torch.unique(topk_ids).numel()))
    s = sort_by_expert(topk_ids, experts, block_m)
    h = torch.zeros((s.blocks * block_m, inter), dtype=x.dtype, device=x.device)
    y = out if top_k == 1 else torch.empty((num_pairs, hidden), dtype=out.dtype, device=x.device)
    route_w = topk_weights.flatten().to(torch.float32).contiguous()
    ones = torch.ones(experts, dtype=torch.float32, device=x.device)
    up_scale = ones if w_gate_up_scale is None else w_gate_up_scale.float().contiguous()
    down_scale = ones if w_down_scale is None else w_down_scale.float().contiguous()
    fp8 = x.dtype == FP8
    consts = {"PRECISION": "ieee" if x.dtype == torch.float32 else None, "BLOCK_M": block_m,
              "MAX_IMPRECISE": FP8_PROMOTE_K if fp8 and not common.INTERPRET else None}
    grid_gate_up, grid_down = _blocks_grid(s.blocks, inter), _blocks_grid(s.blocks, hidden)
    grid_sum = (t, triton.cdiv(hidden, SUM_BLOCK))

    def launch() -> torch.Tensor:
        gate_up_kernel[grid_gate_up](x, w_gate_up, up_scale, h, s.pairs, s.block_expert, s.blocks, inter,
                                     hidden, num_pairs, x.stride(0), w_gate_up.stride(0),
                                     w_gate_up.stride(1), h.stride(0), TOP_K=top_k,
                                     H_MAX=FP8_MAX if fp8 else 0.0, **consts)
        down_kernel[grid_down](h, w_down, down_scale, y, s.pairs, s.block_expert, route_w, s.blocks, hidden,
                               inter, num_pairs, h.stride(0), w_down.stride(0), w_down.stride(1),
                               y.stride(0), **consts)
        if top_k > 1:
            _topk_sum_kernel[grid_sum](y, out, hidden, y.stride(0), out.stride(0), TOP_K=top_k,
                                       BLOCK_N=SUM_BLOCK)
        return out

    return Prepared(launch, block_m, s.blocks * block_m)


def moe(x, w_gate_up, w_down, topk_ids, topk_weights, out=None, **options) -> torch.Tensor:
    """out = Σ_j w_tj · W_down_e (silu(W_gate_e x_t) ⊙ W_up_e x_t), into `out` (allocated when None);
    options are prepare()'s keywords."""
    if out is None:
        out = torch.empty(x.shape, dtype=OUT_DTYPE.get(x.dtype, x.dtype), device=x.device)
    return prepare(x, w_gate_up, w_down, topk_ids, topk_weights, out, **options)()
