"""Our split-KV decode attention (flash-decoding) in Triton, checked against torch in
tests/test_attention_kernels.py.

Decode has 1 query token per sequence (or a few, for speculative decoding) against a long KV
cache: the work is reading K and V once, so the kernel must spread that read over every SM even
when batch x kv_heads is far below the SM count. Same layout and mask as kernels/attention.py:
q and out [B, Hq, Sq, D], k and v [B, Hkv, Skv, D], bottom-right causal or no mask.

Blocking:
* GQA packing: one program serves a whole kv head: the G = Hq/Hkv query heads that share it,
  times the Sq query tokens, are the rows of one Q tile [BLOCK_M = G·Sq padded to >= 16, D]. K and
  V are read once per kv head (not G times), and the dots have enough rows for tensor cores.
* Split KV: the cache of each (batch, kv head) is cut into `splits` chunks of CHUNK keys (a
  multiple of every config's BLOCK_N); one program per (chunk, batch, kv head) walks its chunk
  in BLOCK_N-key tiles with the online softmax of kernels/attention.py (exp2, running max and
  sum), without masks except on the ragged last tile and the causal corner.
* Reduction: each split writes its normalized partial output [rows, D] and its log-sum-exp (base
  2) in fp32; a second kernel, one program per query row, combines them:
  out = sum_s 2^(lse_s - M)·o_s / sum_s 2^(lse_s - M), M = max_s lse_s. A chunk in which a row sees
  no key (causal corner) has lse = -inf and weight 0. With one split, the first kernel writes
  `out` directly and the reduction is not launched.

Number of splits (num_splits): the launch has groups·splits programs, groups = B·Hkv, with
SLOTS_PER_SM programs resident per SM. We pick the split count that minimizes the modelled time
waves(s)·units_per_program(s) = ceil(groups·s / (SMs·SLOTS_PER_SM))·ceil(units / s), units being
256-key pieces of the cache, and take the smallest s within 5% of the best (fewer partials to
reduce), at most MAX_SPLITS. On 132 SMs: groups >= 264 gives 1 split; batch 1 x 8 kv heads gets
32 splits from an 8k cache on; batch 16 x 8 gets 2.

Precision: fp32 accumulation; fp32 inputs use IEEE dots. Under TRITON_INTERPRET=1 one small
config runs. `prepare(..., config=)` runs one fixed triton.Config (BLOCK_N dividing CHUNK_ALIGN,
stages, warps; `FIXED_CONFIG` fits every supported GPU) instead of autotuning: kernels/common.py.
Bytes moved: K and V once (2·B·Hkv·Skv·D·s) plus Q and out; the partials add
2·splits·B·Hq·Sq·(D+1)·4 bytes, small next to the cache whenever splits > 1.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kernels import common
from kernels.attention import LOG2E, attend, block_d, check_inputs, dot_precision, load_rows
from kernels.attention import unsupported as prefill_unsupported

MAX_ROWS = 128  # G·Sq query rows per program: the Q tile and accumulator stay in registers
SPLIT_UNIT = 256  # the split heuristic cuts caches in units of this many keys, at least one per split
MAX_SPLITS = 64  # the reduction holds [splits, D] partials of one row in registers
SLOTS_PER_SM = 2  # decode programs resident per SM (small tiles: registers and smem allow it)

# (BLOCK_N, num_stages, num_warps): deep pipelines keep enough K/V bytes in flight per SM.
_TILES = [(64, 3, 4), (64, 4, 4), (128, 3, 4), (128, 3, 8), (32, 4, 4)]


def _configs():
    if common.INTERPRET:
        return [triton.Config({"BLOCK_N": 16}, num_stages=1, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_stages=s, num_warps=w) for bn, s, w in _TILES]


CHUNK_ALIGN = max(c.kwargs["BLOCK_N"] for c in _configs())  # every config's BLOCK_N divides a chunk
# A fixed config for quick correctness checks (tests/, `config=`): 2 stages of 64-key K and V tiles
# take 64 KB of shared memory at head_dim 128 in bf16.
FIXED_CONFIG = triton.Config({"BLOCK_N": 64}, num_stages=2, num_warps=4)


@triton.autotune(configs=_configs(), key=["CHUNK", "SEQ_KV", "ROWS", "HEAD_DIM", "SINGLE"],
                 restore_value=["o_ptr"])
@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, lse_ptr, sqb, sqh, sqs, sqd, skb, skh, sks, skd,
                  svb, svh, svs, svd, sob, soh, sos, sod, KV_HEADS, GROUP, SEQ_Q, SEQ_KV, CHUNK, SPLITS,
                  qk_scale, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, SINGLE: tl.constexpr, EVEN_D: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    split = pid % SPLITS
    group = pid // SPLITS  # batch · KV_HEADS + kv head
    b = (group // KV_HEADS).to(tl.int64)
    kv_h = (group % KV_HEADS).to(tl.int64)

    r = tl.arange(0, BLOCK_M)  # row r is query head kv_h·GROUP + r // SEQ_Q, token r % SEQ_Q
    rows_ok = r < ROWS
    head = kv_h * GROUP + r // SEQ_Q
    token = r % SEQ_Q
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q = load_rows(q_ptr + b * sqb + head[:, None] * sqh + token[:, None] * sqs + offs_d[None, :] * sqd,
                   rows_ok, d_ok, True, EVEN_D)
    k_ptrs = k_ptr + b * skb + kv_h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd
    v_ptrs = v_ptr + b * svb + kv_h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked row gets p = 0
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    start = split * CHUNK
    end = tl.minimum(start + CHUNK, SEQ_KV)
    if CAUSAL:  # keys <= SEQ_KV - SEQ_Q are visible to every token; the last SEQ_Q - 1 are not
        shared = tl.minimum(end, SEQ_KV - SEQ_Q + 1)
        kv_limit = token + (SEQ_KV - SEQ_Q + 1)
    else:
        shared = end
        kv_limit = tl.zeros([BLOCK_M], dtype=tl.int32) + SEQ_KV
    unmasked_end = tl.maximum(start, start + ((shared - start) // BLOCK_N) * BLOCK_N)
    acc, l_i, m_i = attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, sks, svs, start, unmasked_end, kv_limit,
                          qk_scale, offs_n, d_ok, False, EVEN_D, PRECISION, BLOCK_N)
    acc, l_i, m_i = attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, sks, svs, unmasked_end, end, kv_limit,
                          qk_scale, offs_n, d_ok, True, EVEN_D, PRECISION, BLOCK_N)

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if SINGLE:
        o_ptrs = o_ptr + b * sob + head[:, None] * soh + token[:, None] * sos + offs_d[None, :] * sod
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=rows_ok[:, None] & d_ok[None, :])
    else:
        row = (group * ROWS + r).to(tl.int64) * SPLITS + split  # partials are [groups·ROWS, SPLITS, ...]
        tl.store(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], out, mask=rows_ok[:, None])
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + row, lse, mask=rows_ok)


@triton.jit
def _reduce_kernel(part_ptr, lse_ptr, o_ptr, sob, soh, sos, sod, KV_HEADS, GROUP, SEQ_Q, SPLITS,
                   ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)  # group · ROWS + r, as the split kernel numbered them
    group = row // ROWS
    r = row % ROWS
    b = (group // KV_HEADS).to(tl.int64)
    head = ((group % KV_HEADS) * GROUP + r // SEQ_Q).to(tl.int64)
    token = r % SEQ_Q
    s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    base = row.to(tl.int64) * SPLITS
    lse = tl.load(lse_ptr + base + s, mask=s < SPLITS, other=float("-inf"))
    w = tl.math.exp2(lse - tl.max(lse, 0))
    parts = tl.load(part_ptr + (base + s)[:, None] * BLOCK_D + offs_d[None, :], mask=(s < SPLITS)[:, None],
                    other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(o_ptr + b * sob + head * soh + token * sos + offs_d * sod, out.to(o_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def num_splits(groups: int, seq_kv: int, sms: int) -> int:
    """How many chunks to cut each (batch, kv head)'s cache into: see the module docstring."""
    slots = sms * SLOTS_PER_SM
    tiles = triton.cdiv(seq_kv, SPLIT_UNIT)
    if groups >= slots or tiles == 1:
        return 1
    cost = {s: triton.cdiv(groups * s, slots) * triton.cdiv(tiles, s)
            for s in range(1, min(tiles, MAX_SPLITS) + 1)}
    best = min(cost.values())
    return min(s for s, c in cost.items() if c <= 1.05 * best)


def chunk_len(seq_kv: int, splits: int) -> int:
    """Keys per chunk for `splits` chunks: a multiple of CHUNK_ALIGN."""
    return triton.cdiv(triton.cdiv(seq_kv, splits), CHUNK_ALIGN) * CHUNK_ALIGN


def split_count(batch: int, kv_heads: int, seq_kv: int, device, requested: int | None = None) -> int:
    """The splits prepare() launches: `requested`, or num_splits' choice, less any empty chunk."""
    if requested is not None and not 1 <= requested <= MAX_SPLITS:
        raise ValueError(f"splits must be between 1 and {MAX_SPLITS} (got {requested})")
    splits = requested or num_splits(batch * kv_heads, seq_kv, _sm_count(torch.device(device)))
    return triton.cdiv(seq_kv, chunk_len(seq_kv, splits))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a stand-in that still splits long caches


def unsupported(dtype: torch.dtype, device: torch.device, heads: int, kv_heads: int, seq_q: int,
                head_dim: int) -> str | None:
    """Why this kernel cannot run the case, in one line; None if it can."""
    rows = heads // kv_heads * seq_q
    if rows > MAX_ROWS:
        return (f"decode packs the {heads // kv_heads} query heads of a kv head x seq_q {seq_q} = "
                f"{rows} rows into one tile (at most {MAX_ROWS}); use the prefill kernel (triton)")
    return prefill_unsupported(dtype, device, head_dim)


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, *, causal: bool,
            scale: float | None = None, splits: int | None = None, config: triton.Config | None = None):
    """Validate, choose the split count (unless given) and allocate the partials; return a
    zero-argument function that writes the attention into `out` and returns it. `config` runs the
    split kernel with one fixed config instead of autotuning."""
    check_inputs(q, k, v, out, causal)
    split_kernel = common.pinned(_split_kernel, config)
    if config is not None and CHUNK_ALIGN % config.kwargs["BLOCK_N"]:
        raise ValueError(f"config BLOCK_N must divide {CHUNK_ALIGN}, the chunk alignment; got {config}")
    (b, hq, sq, d), hkv, skv = q.shape, k.shape[1], k.shape[2]
    reason = unsupported(q.dtype, q.device, hq, hkv, sq, d)
    if reason:
        raise ValueError(reason)
    group_rows = hq // hkv * sq
    splits = split_count(b, hkv, skv, q.device, splits)
    chunk = chunk_len(skv, splits)
    single = splits == 1
    bd = block_d(d)
    # One row when unused: a kernel argument must point at real memory.
    rows = 1 if single else b * hkv * group_rows * splits
    part = torch.empty((rows, bd), dtype=torch.float32, device=q.device)
    lse = torch.empty(part.shape[:1], dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride())
    split_args = (q, k, v, out, part, lse, *strides, hkv, hq // hkv, sq, skv, chunk, splits, scale * LOG2E)
    consts = dict(ROWS=group_rows, HEAD_DIM=d, BLOCK_D=bd, CAUSAL=causal, SINGLE=single, EVEN_D=bd == d,
                  BLOCK_M=max(16, triton.next_power_of_2(group_rows)), PRECISION=dot_precision(q.dtype))
    reduce_args = (part, lse, out, *out.stride(), hkv, hq // hkv, sq, splits)
    reduce_consts = dict(ROWS=group_rows, HEAD_DIM=d, BLOCK_D=bd, BLOCK_S=triton.next_power_of_2(splits))

    def launch():
        split_kernel[(b * hkv * splits,)](*split_args, **consts)
        if not single:
            _reduce_kernel[(b * hkv * group_rows,)](*reduce_args, **reduce_consts)
        return out
    return launch


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     scale: float | None = None, splits: int | None = None,
                     out: torch.Tensor | None = None, config: triton.Config | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale, bottom-right causal mask if causal)·v for short q, into `out`."""
    out = torch.empty_like(q) if out is None else out
    return prepare(q, k, v, out, causal=causal, scale=scale, splits=splits, config=config)()
