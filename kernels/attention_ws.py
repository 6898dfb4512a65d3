"""Our FlashAttention prefill forward for Hopper (sm_90) in Triton: TMA tiles, a warp-specialized
KV loop where Triton can build one, and causal masking on the diagonal tiles only. Checked against
torch in tests/test_attention_kernels.py; selectable as the attention backend "triton-ws". It is
not anyone's default: kernels/attention.py stays the default until a GPU run shows this one correct
and faster.

Same problem as kernels/attention.py: out = softmax(q·kᵀ·scale, mask)·v with q, out [B, Hq, Sq, D]
and k, v [B, Hkv, Skv, D] (last dimension contiguous, 16-byte aligned rows), query head h reading
kv head h // (Hq / Hkv), and the bottom-right causal mask (query i sees keys j <= i + Skv - Sq) or
none. Only fp16 and bf16, head_dim 64 or 128: the TMA tile is the whole head.

Throughput: flops = 4·B·Hq·D·P, P the attended (query, key) pairs (harness/workloads/attention.py).

Blocking: one program per 128-query tile of one (batch, query head), the longest causal tiles
first; the programs of one kv head are adjacent, so its K/V tiles come from L2. The program keeps
its Q tile, the fp32 accumulator [128, D], and the online softmax's running max and sum (base 2,
log2(e) folded into the scale), and walks K/V in BLOCK_N-key tiles: S = Q·Kᵀ, P = 2^(S - m),
acc = acc·2^(m_old - m_new) + P·V with P in the input dtype.

TMA: each program makes four 2-D tensor descriptors on the device (tl.make_tensor_descriptor),
one per tensor, over its own head: [Sq or Skv, D]. Tiles past a head's last row read as zeros and
stores past it are dropped, so no tile reaches into the next head and no load needs a mask. The
descriptors live in a global scratch buffer that Triton asks for at each launch (128 B per
descriptor per program), from the allocator that launch() sets (triton.set_allocator). Device
descriptors rather than host ones because Triton's Hopper warp-specialization pass splits the
query tile between its consumer warpgroups and rewrites descriptors it made itself; with host
descriptors it fails to compile ("descriptor block and tensor must have the same number of
elements", Triton 3.6 and 3.9 alike).

Masking: causal splits the KV walk in two loops. Keys below m0 + Skv - Sq + 1 (m0 the tile's first
row) are visible to every row of the tile: whole BLOCK_N tiles in that range run without a mask.
Only the tiles from there to the tile's last visible key, the diagonal, compare indices. Without
causal there is one loop, unmasked when Skv is a multiple of 128 (of every BLOCK_N), else masked on
every tile (one loop keeps warp specialization possible; the targets, 4k-16k, are multiples).

Warp specialization (`WARP_SPECIALIZE`, an autotuned choice): tl.range(..., warp_specialize=True)
on the KV loop. What Triton 3.6 and 3.9 build from it on sm_90 (tools/sm90_compile.py): with
num_warps = 4, three warpgroups: one issues the TMA loads, two consumers each take 64 of the 128
query rows (O is stored in two halves), and setmaxnreg moves registers to the consumers; with
num_warps = 8 the request is silently
dropped; a kernel with two KV loops (causal) fails in the pass, and a branch inside the loop drops
it silently. So it is offered for non-causal only, at 4 warps.

Configs: BLOCK_M 128; BLOCK_N 64 or 128; 4 or 8 warps; 2-4 stages (the pipeline depth, or the
warp-specialized loop's buffer count). BLOCK_N 128 only with 8 warps or warp specialization (4
ordinary warps spill the [128, 128] score tile), and no 4 ordinary warps at head_dim 128 (they
spill on Triton 3.6). _prune drops the configs whose Q tile, K/V stages (and the warp-specialized
kernel's staged output tile) overflow shared memory: smem_estimate is at or just above what Triton
allocated for every config. Under TRITON_INTERPRET=1 one small config runs: the interpreter runs
the descriptors (zero fill, clipped stores) and ignores warp_specialize. `prepare(..., config=)`
runs one fixed config instead of autotuning: FIXED_CONFIG (any case) or FIXED_WS_CONFIG
(non-causal, warp-specialized); see kernels/common.py.

What the SASS shows (tools/sm90_compile.py: sm_90a, bf16, Triton 3.9 and 3.6; compiled only,
nothing here has run on a GPU). FIXED_CONFIG (128x64 tiles, 8 warps, 2 stages): HGMMA (wgmma)
for both dots, UTMALDG for Q, K and V and UTMASTG for O, no spills; 97 KB of shared memory and
138-151 registers per thread at head_dim 128, 49 KB and 106-110 at 64. FIXED_WS_CONFIG (4 warps):
384 threads (Triton adds the producer warpgroup), USETMAXREG (setmaxnreg), 168 registers per
thread at entry, 130 KB / 66 KB of shared memory, no spills. Every autotune config that _prune
keeps compiles without spills on both versions. Whether any of this beats kernels/attention.py
(397 TFLOPS, 0.75x cuDNN on the H200's llama3-8b 4k causal case) is for a GPU run to say.
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl

from kernels import common
from kernels.attention import LOG2E, check_inputs
from kernels.common import smem_bytes

DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128)
BLOCK_M = 128
KV_ALIGN = 128  # every BLOCK_N divides it: Skv % KV_ALIGN == 0 leaves no ragged last key tile
# What the kernel uses of Triton (3.6 and 3.9 have all of it; older releases lack some).
HAS_TRITON_FEATURES = (hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
                       and "warp_specialize" in inspect.signature(tl.range.__init__).parameters)

# (BLOCK_N, num_stages, num_warps, warp-specialized); see the module docstring.
_TILES = ([(bn, s, w, False) for bn, w in ((64, 4), (64, 8), (128, 8)) for s in (2, 3, 4)]
          + [(bn, s, 4, True) for bn in (64, 128) for s in (2, 3, 4)])

# Fixed configs for tests and compile checks (`config=`): at most 130 KB of shared memory, and no
# spills on sm_90 with Triton 3.6 or 3.9 (see the module docstring).
FIXED_CONFIG = triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_N": 64, "WARP_SPECIALIZE": False},
                             num_stages=2, num_warps=8)
FIXED_WS_CONFIG = triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_N": 64, "WARP_SPECIALIZE": True},
                                num_stages=2, num_warps=4)


def production_configs() -> list[triton.Config]:
    """What the autotuner chooses from on a GPU (before _prune)."""
    return [triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_N": bn, "WARP_SPECIALIZE": ws}, num_stages=s, num_warps=w)
            for bn, s, w, ws in _TILES]


def _configs():
    if common.INTERPRET:  # interpreted autotuning would run every config at numpy speed
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "WARP_SPECIALIZE": False}, num_stages=1,
                              num_warps=4)]
    return production_configs()


def smem_estimate(config: triton.Config, head_dim: int, elem_size: int) -> int:
    """Shared memory a config needs: the Q tile, `stages` K and V tiles, and for the
    warp-specialized kernel its output tile (staged for the TMA store), plus barriers (2 KB);
    at or above what Triton allocated for every config on sm_90 (tools/sm90_compile.py)."""
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    tiles = bm + config.num_stages * 2 * bn + (bm if config.kwargs["WARP_SPECIALIZE"] else 0)
    return tiles * head_dim * elem_size + 2048


def _prune(configs, named_args, **kwargs):
    """Keep the configs that can build and fit: no warp specialization for causal (two KV loops),
    no 4 ordinary warps at head_dim 128 (they spill on Triton 3.6, tools/sm90_compile.py --autotune),
    and no more shared memory than the GPU gives a block."""
    q, head_dim, causal = named_args["q_ptr"], kwargs["HEAD_DIM"], kwargs["CAUSAL"]

    def fits(c):
        ws = c.kwargs["WARP_SPECIALIZE"]
        if (ws and causal) or (not ws and c.num_warps == 4 and head_dim == 128):
            return False
        return smem_estimate(c, head_dim, q.element_size()) <= smem_bytes(q.device.index)
    return [c for c in configs if fits(c)] or [FIXED_CONFIG]


@triton.jit
def _stage(acc, l_i, m_i, q, k_desc, v_desc, lo, hi, kv_limit, qk_scale,
           MASKED: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Fold key tiles [lo, hi) into (acc, l, m). MASKED: key j counts for row r only when
    j < kv_limit[r]; otherwise every key of every tile does."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        k = k_desc.load([start_n, 0])
        s = tl.dot(q, k.T)
        if MASKED:
            s = tl.where((start_n + offs_n)[None, :] < kv_limit[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([start_n, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _head(ptr, stride_b, stride_h, stride_s, b, h, rows, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """A TMA descriptor over one (batch, head) [rows, HEAD_DIM] of a [B, H, S, D] tensor."""
    return tl.make_tensor_descriptor(ptr + b * stride_b + h * stride_h, shape=[rows, HEAD_DIM],
                                     strides=[stride_s, 1], block_shape=[BLOCK, HEAD_DIM])


@triton.autotune(configs=_configs(), key=["SEQ_Q", "SEQ_KV", "HEAD_DIM", "CAUSAL", "EVEN_KV"],
                 prune_configs_by={"early_config_prune": _prune}, restore_value=["o_ptr"])
@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                    HEADS, GROUP, SEQ_Q, SEQ_KV, qk_scale,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, EVEN_KV: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    num_m = tl.cdiv(SEQ_Q, BLOCK_M)
    pid = tl.program_id(0)
    tile_m = num_m - 1 - pid % num_m  # longest first: the last query tile sees the most keys
    bh = pid // num_m
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    kv_h = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    q_desc = _head(q_ptr, sqb, sqh, sqs, b, h, SEQ_Q, HEAD_DIM, BLOCK_M)
    k_desc = _head(k_ptr, skb, skh, sks, b, kv_h, SEQ_KV, HEAD_DIM, BLOCK_N)
    v_desc = _head(v_ptr, svb, svh, svs, b, kv_h, SEQ_KV, HEAD_DIM, BLOCK_N)
    o_desc = _head(o_ptr, sob, soh, sos, b, h, SEQ_Q, HEAD_DIM, BLOCK_M)

    m0 = tile_m * BLOCK_M
    q = q_desc.load([m0, 0])
    # m starts finite, so a row that sees no key of a tile gets p = 0 there, never NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        offset = SEQ_KV - SEQ_Q  # bottom-right alignment
        kv_limit = m0 + tl.arange(0, BLOCK_M) + offset + 1  # row r sees keys below kv_limit[r]
        shared = tl.minimum(m0 + offset + 1, SEQ_KV)  # keys every row of the tile sees
        unmasked_end = (shared // BLOCK_N) * BLOCK_N
        end = tl.minimum(m0 + BLOCK_M, SEQ_Q) + offset  # past the tile's last visible key
        acc, l_i, m_i = _stage(acc, l_i, m_i, q, k_desc, v_desc, 0, unmasked_end, kv_limit, qk_scale,
                               False, False, BLOCK_N)
        acc, l_i, m_i = _stage(acc, l_i, m_i, q, k_desc, v_desc, unmasked_end, end, kv_limit, qk_scale,
                               True, False, BLOCK_N)
    else:
        kv_limit = tl.full([BLOCK_M], SEQ_KV, dtype=tl.int32)
        acc, l_i, m_i = _stage(acc, l_i, m_i, q, k_desc, v_desc, 0, SEQ_KV, kv_limit, qk_scale,
                               not EVEN_KV, WARP_SPECIALIZE, BLOCK_N)
    o_desc.store([m0, 0], (acc / l_i[:, None]).to(o_desc.dtype))


def unsupported(dtype: torch.dtype, device: torch.device, head_dim: int) -> str | None:
    """Why this kernel cannot run the case, in one line; None if it can."""
    if dtype not in DTYPES:
        return f"{dtype} is not supported (fp16, bf16): a Hopper tensor-core kernel"
    if head_dim not in HEAD_DIMS:
        return f"head_dim {head_dim} is not supported (64, 128): the TMA tile is the whole head"
    if not HAS_TRITON_FEATURES:
        return (f"triton {triton.__version__} lacks tl.make_tensor_descriptor, triton.set_allocator or "
                "tl.range(warp_specialize=)")
    reason = common.platform_unsupported(dtype, device)
    if reason or common.INTERPRET:
        return reason  # the interpreter runs descriptors, so the logic is testable on a CPU
    return common.hopper_only(device, "this kernel", "triton")


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA reads rows of unit element stride, with 16-byte aligned base and strides."""
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]))


def _scratch(device: torch.device):
    """Triton's allocator for the descriptors' global scratch (a torch buffer on the inputs' device)."""
    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=device)
    return alloc


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, *, causal: bool,
            scale: float | None = None, config: triton.Config | None = None):
    """Validate and fix the launch; return a zero-argument function that writes the attention
    into `out` and returns it. `config` runs one fixed triton.Config instead of autotuning."""
    check_inputs(q, k, v, out, causal)
    (b, hq, sq, d), hkv, skv = q.shape, k.shape[1], k.shape[2]
    reason = unsupported(q.dtype, q.device, d)
    if reason:
        raise ValueError(reason)
    if not all(_tma_ready(t) for t in (q, k, v, out)):
        raise ValueError("q, k, v and out need a contiguous last dimension and 16-byte aligned "
                         "strides and base pointers (TMA); use kernels/attention.py")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if scale <= 0:
        raise ValueError(f"scale must be positive (got {scale}): the row max is taken before scaling")
    kernel = common.pinned(_forward_kernel, config)
    if causal and config is not None and config.kwargs["WARP_SPECIALIZE"]:
        raise ValueError("warp specialization is for the non-causal kernel only: Triton's Hopper pass "
                         "builds it for one KV loop, and causal has two")
    args = (q, k, v, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            hq, hq // hkv, sq, skv, scale * LOG2E)
    consts = dict(HEAD_DIM=d, CAUSAL=causal, EVEN_KV=skv % KV_ALIGN == 0)
    alloc = _scratch(q.device)

    def grid(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]) * b * hq,)

    def launch():
        triton.set_allocator(alloc)  # a context variable: set where the launch runs
        kernel[grid](*args, **consts)
        return out
    return launch

