"""Our FlashAttention forward in Triton: out = softmax(q·kᵀ·scale, mask)·v, checked against torch in
tests/test_attention_kernels.py.

Layout: q and out [B, Hq, Sq, D]; k and v [B, Hkv, Skv, D] (any strides). Query head h reads kv
head h // (Hq / Hkv): GQA without repeating K/V in memory. The mask is bottom-right causal (query
i sees keys j <= i + Skv - Sq, as with a KV cache) or none.

Blocking: one program per (BLOCK_M query rows, batch, query head). It holds its Q tile
[BLOCK_M, D] and an fp32 accumulator [BLOCK_M, D] and walks K/V in BLOCK_N-key tiles: S = Q·Kᵀ in
fp32, then the online softmax (a running row max m and row sum l; when m grows, the accumulator
and l are rescaled by 2^(m_old - m_new)), then acc += P·V with P rounded to the input dtype. The
softmax runs in base 2 with log2(e) folded into the scale, so each exponential is one exp2.

Causal block skipping: the tile of rows [m0, m0 + BLOCK_M) needs keys below m1 + Skv - Sq only,
m1 being its last row + 1, so key tiles past the diagonal are never loaded. Keys below
m0 + Skv - Sq + 1 are visible to every row of the tile: whole key tiles in that range run without
any mask (the pipelined main loop); only the few tiles along the diagonal, and the ragged last
tile of K, pay for masking. Query tiles of a head are launched longest (last) first, so the short
ones fill the tail of the grid. Programs of one kv head run together, so K/V tiles come from L2.

BLOCK_D is D rounded up to a power of two (>= 16); lanes past D are masked. Accumulation is fp32;
fp32 inputs use IEEE fp32 dots (input_precision="ieee"), never TF32. Tiles, stages and warps are
autotuned per shape; configs that would overflow shared memory are pruned first. Under
TRITON_INTERPRET=1 one small config runs, so CPU tests cover every code path. `prepare(...,
config=)` runs one fixed triton.Config (BLOCK_M, BLOCK_N, stages, warps; `FIXED_CONFIG` fits every
supported GPU up to head_dim 128) instead of autotuning: see kernels/common.py.

Throughput: flops = 4·B·Hq·D·P, P the attended (query, key) pairs (harness/workloads/attention.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import common
from kernels.common import smem_bytes

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634

# (BLOCK_M, BLOCK_N, num_stages, num_warps). 128x128 and 128x64 with 8 warps are the FA2-style
# tiles that suit head_dim 64-128 on Hopper/Ampere; the smaller ones are for head_dim 256 and fp32,
# whose K/V tiles are 2-4x larger in shared memory.
_TILES = [(128, 128, 3, 8), (128, 64, 3, 8), (128, 64, 4, 4), (128, 32, 4, 4), (64, 64, 4, 4),
          (64, 32, 3, 4)]


# A fixed config for quick correctness checks (tests/, `config=`): the Q tile plus 3 stages of
# 32-key K and V tiles take 64 KB of shared memory at head_dim 128 in bf16, which every GPU we support has.
# 8 warps: with 4, head_dim 256 and fp32 spill registers on sm_90 (tools/sm90_compile.py).
FIXED_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_stages=3, num_warps=8)


def _configs():
    if common.INTERPRET:  # interpreted autotuning would run every config at numpy speed
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_stages=1, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_stages=s, num_warps=w)
            for bm, bn, s, w in _TILES]


def _prune(configs, named_args, **kwargs):
    """Drop query tiles far taller than Sq, and pipelines whose K/V buffers overflow shared memory."""
    q = named_args["q_ptr"]
    cap_m = max(64, triton.next_power_of_2(named_args["SEQ_Q"]))
    keep = []
    for cfg in configs:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        smem = (cfg.num_stages * 2 * bn + bm) * kwargs["BLOCK_D"] * q.element_size()
        if bm <= cap_m and smem <= smem_bytes(q.device.index):
            keep.append(cfg)
    return keep or configs[-1:]


@triton.jit
def load_rows(ptrs, rows_ok, d_ok, ROWS_MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile; masks (zero fill) only where rows or head-dim lanes may be out of range."""
    if ROWS_MASKED:
        return tl.load(ptrs, mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    if EVEN_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=d_ok[None, :], other=0.0)


@triton.jit
def attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, start, end, kv_limit,
            qk_scale, offs_n, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_N: tl.constexpr):
    """Fold key tiles [start, end) into the running (acc, l, m). With MASKED, key j is visible to
    row r only when j < kv_limit[r] (kv_limit = last visible key + 1) and j < end; else every key
    is. (The decode kernel folds chunks that end before the cache does: hence the `end` bound.)"""
    k_ptrs += start * stride_kn
    v_ptrs += start * stride_vn
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(k_ptrs, cols < end, d_ok, MASKED, EVEN_D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED:
            s = tl.where((cols[None, :] < kv_limit[:, None]) & (cols[None, :] < end), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_rows(v_ptrs, cols < end, d_ok, MASKED, EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.autotune(configs=_configs(), key=["SEQ_Q", "SEQ_KV", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune}, restore_value=["o_ptr"])
@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                    sob, soh, sos, sod, HEADS, GROUP, SEQ_Q, SEQ_KV, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    num_m = tl.cdiv(SEQ_Q, BLOCK_M)
    pid = tl.program_id(0)
    tile_m = num_m - 1 - pid % num_m  # longest first: the last query tile sees the most keys
    bh = pid // num_m
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    kv_h = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    m0 = tile_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q = load_rows(q_ptr + b * sqb + h * sqh + rows[:, None].to(tl.int64) * sqs + offs_d[None, :] * sqd,
                   rows < SEQ_Q, d_ok, True, EVEN_D)
    k_ptrs = k_ptr + b * skb + kv_h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd
    v_ptrs = v_ptr + b * svb + kv_h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd

    # m starts finite, so a row with no visible key in a tile gives p = 0, never NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    offset = SEQ_KV - SEQ_Q  # bottom-right alignment
    if CAUSAL:
        last_row = tl.minimum(m0 + BLOCK_M, SEQ_Q)
        end = last_row + offset  # keys past this are masked for every row of the tile
        shared = tl.minimum(m0 + offset + 1, SEQ_KV)  # keys visible to every row
        kv_limit = rows + offset + 1
    else:
        end = SEQ_KV
        shared = SEQ_KV
        kv_limit = tl.zeros([BLOCK_M], dtype=tl.int32) + SEQ_KV
    unmasked_end = (shared // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, sks, svs, 0, unmasked_end, kv_limit,
                            qk_scale, offs_n, d_ok, False, EVEN_D, PRECISION, BLOCK_N)
    acc, l_i, m_i = attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, sks, svs, unmasked_end, end, kv_limit,
                            qk_scale, offs_n, d_ok, True, EVEN_D, PRECISION, BLOCK_N)

    out = acc / l_i[:, None]
    o_ptrs = o_ptr + b * sob + h * soh + rows[:, None].to(tl.int64) * sos + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < SEQ_Q) & d_ok[None, :])


def unsupported(dtype: torch.dtype, device: torch.device, head_dim: int) -> str | None:
    """Why this kernel cannot run the case, in one line; None if it can."""
    if dtype not in DTYPES:
        return f"{dtype} is not supported (fp16, bf16, fp32)"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim {head_dim} is above {MAX_HEAD_DIM}: the Q tile and accumulator would not fit"
    return common.platform_unsupported(dtype, device)


def check_inputs(q, k, v, out, causal: bool) -> None:
    """Raise ValueError unless q, k, v, out have the layout and dtypes this module's kernels take."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"need q [B, Hq, Sq, D] and k, v [B, Hkv, Skv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    (b, hq, sq, d), (bk, hkv, skv, dk) = q.shape, k.shape
    if bk != b or dk != d or hq % hkv:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} disagree (batch, head_dim, "
                         "or heads not divisible by kv heads)")
    if not (q.dtype == k.dtype == v.dtype == out.dtype) or tuple(out.shape) != tuple(q.shape):
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)} like q, k, v; "
                         f"got {out.dtype} {tuple(out.shape)}")
    if causal and sq > skv:
        raise ValueError(f"causal needs seq_q <= seq_kv (got {sq} > {skv})")
    reason = unsupported(q.dtype, q.device, d)
    if reason:
        raise ValueError(reason)


def block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype):
    """IEEE fp32 dots for fp32 inputs (Triton's default there is TF32); the default otherwise."""
    return "ieee" if dtype == torch.float32 else None


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, *, causal: bool,
            scale: float | None = None, config: triton.Config | None = None):
    """Validate and fix the launch; return a zero-argument function that writes the attention
    into `out` and returns it, so a benchmark's timed region holds only the launch. `config` runs
    one fixed tile config instead of autotuning."""
    check_inputs(q, k, v, out, causal)
    kernel = common.pinned(_forward_kernel, config)
    (b, hq, sq, d), hkv, skv = q.shape, k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    args = (q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(), hq, hq // hkv, sq, skv,
            scale * LOG2E)
    consts = dict(HEAD_DIM=d, BLOCK_D=block_d(d), CAUSAL=causal, EVEN_D=block_d(d) == d,
                  PRECISION=dot_precision(q.dtype))

    def grid(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]) * b * hq,)

    def launch():
        kernel[grid](*args, **consts)
        return out
    return launch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, out: torch.Tensor | None = None,
              config: triton.Config | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale, bottom-right causal mask if causal)·v, into `out` (allocated when None)."""
    out = torch.empty_like(q) if out is None else out
    return prepare(q, k, v, out, causal=causal, scale=scale, config=config)()
