"""Our dense GEMM in Triton: C[M, N] = A[M, K] @ B[K, N], checked against torch in tests/test_kernels_gemm.py.

The variants share one blocking:

* **tiled** -- one program per BLOCK_M x BLOCK_N output tile. It walks K in BLOCK_K steps, loading
  an A tile [BLOCK_M, BLOCK_K] and a B tile [BLOCK_K, BLOCK_N] through pointers (any strides, so B
  may be row-major or a transposed view of an [N, K] weight) and accumulating `tl.dot` into fp32
  registers (int32 for int8); the compiler software-pipelines those loads over `num_stages`
  buffers. Programs are numbered in *grouped* order: GROUP_M row tiles are walked down one column
  of tiles before moving right, so the A rows and B columns a wave of programs reads stay in L2.
* **tma** (Hopper, sm_90) -- a persistent kernel: one program per SM loops over the output tiles
  in the same grouped order, and loads/stores tiles with TMA through host tensor descriptors (the
  hardware copies whole tiles and zero-fills past the edges, so no masks). The tile loop is
  flattened so the next tile's loads overlap this tile's epilogue. Needs 16-byte aligned rows.
* **splitk** -- for decode sizes (M <= 64), where the tiles of C are too few to occupy the SMs:
  see "Split-K" below. Selectable by name only: `auto` never picks it.
* **auto** -- on Hopper, times `tiled` and `tma` once per (shape, strides, dtype, precision) with
  `triton.testing.do_bench` and keeps the faster; elsewhere `tiled`.

BLOCK_K is 128 bytes of K (64 for fp16/bf16, 128 for fp8/int8, 32 for fp32): one swizzled
shared-memory row, the natural tensor-core K step. BLOCK_M/BLOCK_N, stages and warps are autotuned
per (M, N, K, layout, dtype); configs that would overflow shared memory are pruned first.
`config=` (a triton.Config with BLOCK_M, BLOCK_N, GROUP_M, num_stages, num_warps; `FIXED_CONFIG`
fits every supported GPU) runs one fixed config instead, without autotuning: see kernels/common.py.

Inputs -> output: fp32 -> fp32 (precision "ieee" = true fp32 math, "tf32" = TF32 tensor cores),
fp16 -> fp16, bf16 -> bf16, float8_e4m3fn -> bf16 (unit scales), int8 -> int32. On Hopper, fp8
tensor cores sum in reduced precision; we promote those partial sums into the fp32 accumulator once
per K tile (128), as CUTLASS and cuBLAS do without fast-accum (torch._scaled_mm's default). That
extra accumulator costs registers, so for fp8 the autotuner tends to pick the mid-size tiles.

Throughput: flops = 2 * M * N * K, so TFLOPS = 2 * M * N * K / seconds / 1e12.

Split-K (variant "splitk"). At decode sizes the weight B dominates the traffic: the workload's
bytes = (M*K + K*N)*s + M*N*s_out (s: input bytes per element, s_out: output's), ~ K*N*s when
M << N, K, so the kernel must stream B through every SM at once. One row tile covers all of M
(BLOCK_M = 16, 32 or 64, the autotuner keeps only the fitting one), so C has just
tiles = ceil(N / BLOCK_N) tiles, far fewer than the SMs for Llama-3-8B's o, qkv and down (N = 4096
or 6144): the tiled kernel then runs tiles programs, each walking all of K. Split-K cuts K into
SPLITS pieces of K_SPLIT (a multiple of BLOCK_K); program (tile, split) accumulates its piece
in fp32 (int32 for int8) and writes that partial to a workspace [SPLITS, M, N] allocated in
prepare(); a second kernel sums the SPLITS partials of each element in split order 0, 1, ... and
casts to the output dtype. No atomics: every call adds the same numbers in the same order. With
one split the first kernel writes C directly and the sum is not launched.
  Split count (`split_count`), modelled on the reference tile width SPLIT_BLOCK_N = 128 (the
autotuner also tries 64 and 256: twice and half the programs) with SLOTS_PER_SM = 2 programs
resident per SM, as kernels/decode_attention.py chooses its KV splits. With steps = ceil(K /
BLOCK_K), s splits cost waves(s) * (ceil(steps / s) + FILL_STEPS), waves(s) = ceil(tiles * s /
(SMs * SLOTS_PER_SM)), FILL_STEPS = 1 being a program's wait for its first tile; we take the
smallest s within 5% of the cheapest, and s at most
  MAX_SPLITS (16), steps / MIN_SPLIT_STEPS (each split walks at least 4 K steps), and
  K*s / (64*M): the partials' extra traffic, 2*s*M*N*4 bytes (written once, read once), stays
  under 1/8 of B's K*N*s bytes.
Empty splits are dropped (s = ceil(steps / ceil(steps / s))). On 132 SMs in bf16 at M = 16 this
gives Llama-3-8B down (N 4096, K 14336) 8 splits, o (4096, 4096) 8, qkv (6144, 4096) 5 and
gate_up (28672, 4096) 1 (tests/test_kernels_gemm.py holds these). Bytes moved beyond the
workload's formula: the partials, 2*s*M*N*4 (at most 1/8 of B's, and a few MB at these sizes,
so they may still be in L2 when summed), and A once per N tile (M*K*s*tiles, mostly from L2).
Expectations only: nothing of split-K has run on a GPU yet. Whether it reaches cuBLAS at decode
sizes (the target: >= 0.95x cuBLAS's bytes/s at M <= 64) is for a GPU run to show; until one
has, `auto` keeps to tiled and tma. Results are bit-identical from call to call for one tile
config (the autotuner keeps its choice per shape).

Under TRITON_INTERPRET=1 (CPU tests) autotuning uses one small config, and the tma variant runs on
the interpreter's emulated descriptors so its logic is testable without a GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels import common
from kernels.common import smem_bytes, tile_coords

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton < 3.4
    TensorDescriptor = None

VARIANTS = ("auto", "tiled", "tma", "splitk")
AUTO_CANDIDATES = ("tiled", "tma")  # what `auto` times; a variant joins only after a GPU run shows it faster
PRECISIONS = ("ieee", "tf32")
OUT_DTYPE = {
    torch.float32: torch.float32,
    torch.float16: torch.float16,
    torch.bfloat16: torch.bfloat16,
    torch.float8_e4m3fn: torch.bfloat16,
    torch.int8: torch.int32,
}

# (BLOCK_M, BLOCK_N, num_stages, num_warps): the large tiles win at 4k-8k on H100; the small ones
# are for skinny shapes (decode-like M) and GPUs with less shared memory.
_TILES = [(128, 256, 3, 8), (128, 256, 4, 8), (256, 128, 3, 8), (128, 128, 4, 8), (128, 128, 4, 4),
          (64, 256, 4, 4), (128, 64, 4, 4), (64, 128, 4, 4), (64, 64, 4, 4)]


# A fixed config for quick correctness checks (tests/, `config=`): small enough for the shared
# memory of every GPU we support (3 stages of 64-row A and B tiles of 128 bytes of K, plus a TMA
# output tile), and GROUP_M 4 so medium shapes span several tile groups. 8 warps: with 4, fp32 and
# unaligned fp8 spill registers on sm_90 (tools/sm90_compile.py reports each dtype).
FIXED_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}, num_stages=3, num_warps=8)


def _configs(pre_hook=None):
    if common.INTERPRET:  # interpreted autotuning would run every config at numpy speed
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 4}, num_stages=1, num_warps=4,
                              pre_hook=pre_hook)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_stages=s, num_warps=w,
                          pre_hook=pre_hook) for bm, bn, s, w in _TILES]


def _prune(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem and pipelines that overflow shared memory."""
    tma = "a_desc" in named_args
    a = named_args["a_desc"].base if tma else named_args["a_ptr"]
    c = named_args["c_desc"].base if tma else named_args["c_ptr"]
    cap_m = max(64, triton.next_power_of_2(named_args["M"]))
    cap_n = max(64, triton.next_power_of_2(named_args["N"]))
    keep = []
    for cfg in configs:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        smem = cfg.num_stages * (bm + bn) * kwargs["BLOCK_K"] * a.element_size()
        if tma:  # the TMA store stages the output tile in shared memory too
            smem += bm * bn * c.element_size()
        if bm <= cap_m and bn <= cap_n and smem <= smem_bytes(a.device.index):
            keep.append(cfg)
    return keep or configs[-1:]


# Split-K (see the module docstring). (BLOCK_N, num_stages, num_warps) for each BLOCK_M in
# SPLIT_BLOCK_M (the prune keeps the one that covers M): stages of B tiles in flight per SM to stream
# it at full bandwidth (a 64 x 128 bf16 tile is 16 KB). 8 warps at BLOCK_N >= 128: with 4, ptxas
# spills at BLOCK_M 16-32 on sm_90 (tools/sm90_compile.py --autotune reports each config).
SPLIT_MAX_M = 64  # decode sizes: the backend refuses larger M (the tiled kernel has tiles enough)
SPLIT_BLOCK_M = (16, 32, 64)
SPLIT_BLOCK_N = 128  # the tile width the split count is modelled on
SLOTS_PER_SM = 2
MAX_SPLITS = 16
MIN_SPLIT_STEPS = 4  # BLOCK_K steps per split at least
FILL_STEPS = 1  # a program's wait for its first tile (one DRAM round trip), in steps of its share of bandwidth
PARTIALS_SHARE = 8  # the partials' write + read stay under 1/PARTIALS_SHARE of B's bytes
_SPLIT_TILES = [(64, 4, 4), (64, 6, 4), (128, 4, 8), (256, 3, 8)]
_REDUCE_BLOCK = 1024  # elements of C per program of the sum


def _splitk_configs():
    if common.INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 4}, num_stages=1, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm in SPLIT_BLOCK_M for bn, s, w in _SPLIT_TILES]


def _prune_splitk(configs, named_args, **kwargs):
    """Keep the BLOCK_M that covers M (one row tile: B is read once) and what fits shared memory."""
    a = named_args["a_ptr"]
    fit = min(SPLIT_BLOCK_M[-1], max(SPLIT_BLOCK_M[0], triton.next_power_of_2(named_args["M"])))
    cap_n = max(64, triton.next_power_of_2(named_args["N"]))
    keep = [cfg for cfg in configs if cfg.kwargs["BLOCK_M"] == fit and cfg.kwargs["BLOCK_N"] <= cap_n
            and cfg.num_stages * (fit + cfg.kwargs["BLOCK_N"]) * kwargs["BLOCK_K"] * a.element_size()
            <= smem_bytes(a.device.index)]
    return keep or configs[-1:]


def _set_tma_blocks(nargs):
    """Autotune pre-hook: give the descriptors the block shapes of the config about to run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_KMAJOR"] else [bk, bn]
    nargs["c_desc"].block_shape = [bm, bn]


@triton.jit
def _dot_k(a_ptrs, b_ptrs, acc, k_len, stride_ak, stride_bk, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
           MAX_IMPRECISE: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + A[:, :k_len] @ B[:k_len, :] in BLOCK_K steps from the tiles' first pointers, masking only
    along K (the tiled and splitk kernels' loop; the compiler pipelines its loads)."""
    rk = tl.arange(0, BLOCK_K)
    for k in range(0, tl.cdiv(k_len, BLOCK_K)):
        a = tl.load(a_ptrs, mask=rk[None, :] < k_len - k * BLOCK_K, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < k_len - k * BLOCK_K, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                     out_dtype=ACC_DTYPE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.autotune(configs=_configs(), key=["M", "N", "K", "stride_ak", "stride_bn", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _tiled_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                  stride_cn, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge wrap back into range, so loads need a mask only along K; what they
    # compute lands outside C and the store drops it.
    # int64 row/column offsets: a tensor of 2^31 or more elements must not wrap around.
    a_ptrs = a_ptr + (rm % M).to(tl.int64)[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + (rn % N).to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc = _dot_k(a_ptrs, b_ptrs, acc, K, stride_ak, stride_bk, PRECISION, ACC_DTYPE, MAX_IMPRECISE, BLOCK_K)
    c_ptrs = c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn.to(tl.int64)[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


# Descriptors carry no dtype the autotuner sees: ACC_DTYPE and BLOCK_K stand in for it in the key
# (fp16 and bf16 share tuning results; their sizes are the same).
@triton.autotune(configs=_configs(pre_hook=_set_tma_blocks),
                 key=["M", "N", "K", "B_KMAJOR", "PRECISION", "ACC_DTYPE", "BLOCK_K"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _tma_kernel(a_desc, b_desc, c_desc, M, N, K, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                MAX_IMPRECISE: tl.constexpr, BLOCK_K: tl.constexpr, B_KMAJOR: tl.constexpr,
                NUM_SMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    start = tl.program_id(0)
    # The epilogue finds its tile from its own counter, as in Triton's persistent-matmul tutorial:
    # the flattened loop's pipeliner must not see one value used by both prologue and epilogue.
    tile_c = start - NUM_SMS
    for tile in tl.range(start, num_pid_m * num_pid_n, NUM_SMS, flatten=True):
        pid_m, pid_n = tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            if B_KMAJOR:  # the descriptor holds B^T as [N, K]
                b = b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K]).T
            else:
                b = b_desc.load([ki * BLOCK_K, pid_n * BLOCK_N])
            acc = tl.dot(a, b, acc, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                         out_dtype=ACC_DTYPE)
        tile_c += NUM_SMS
        pid_m, pid_n = tile_coords(tile_c, num_pid_m, num_pid_n, GROUP_M)
        c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_desc.dtype))


@triton.autotune(configs=_splitk_configs(), key=["M", "N", "K", "K_SPLIT", "stride_ak", "stride_bn", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune_splitk})
@triton.jit
def _splitk_kernel(a_ptr, b_ptr, c_ptr, M, N, K, K_SPLIT, stride_am, stride_ak, stride_bk, stride_bn, stride_cs,
                   stride_cm, stride_cn, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   MAX_IMPRECISE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program (tile, split): C's tile over K in [split * K_SPLIT, (split + 1) * K_SPLIT), written to
    c_ptr + split * stride_cs (the workspace's partial `split`, or C itself when there is one split)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    split = tl.program_id(1)
    k0 = split * K_SPLIT
    k_len = tl.minimum(K_SPLIT, K - k0)  # the last split may be short; K_SPLIT is a multiple of BLOCK_K
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # As in _tiled_kernel: edge rows/columns wrap into range, only K is masked, int64 offsets.
    a_ptrs = a_ptr + (rm % M).to(tl.int64)[:, None] * stride_am + (k0 + rk).to(tl.int64)[None, :] * stride_ak
    b_ptrs = b_ptr + (k0 + rk).to(tl.int64)[:, None] * stride_bk + (rn % N).to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc = _dot_k(a_ptrs, b_ptrs, acc, k_len, stride_ak, stride_bk, PRECISION, ACC_DTYPE, MAX_IMPRECISE, BLOCK_K)
    c_ptrs = (c_ptr + split.to(tl.int64) * stride_cs + rm.to(tl.int64)[:, None] * stride_cm
              + rn.to(tl.int64)[None, :] * stride_cn)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _splitk_sum_kernel(ws_ptr, c_ptr, M, N, stride_cm, stride_cn, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """C = the sum of the workspace's SPLITS partials [SPLITS, M, N], added in split order 0, 1, ...
    (a fixed order: the same bits every call), cast to C's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mn = M.to(tl.int64) * N
    mask = offs < mn
    acc = tl.load(ws_ptr + offs, mask=mask, other=0)
    for s in tl.static_range(1, SPLITS):
        acc += tl.load(ws_ptr + s * mn + offs, mask=mask, other=0)
    tl.store(c_ptr + (offs // N) * stride_cm + (offs % N) * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=mask)


def _dot_args(dtype: torch.dtype, precision: str) -> dict:
    """The constexprs that follow from the input dtype (precision matters for fp32 only)."""
    block_k = 128 // dtype.itemsize
    return dict(PRECISION=precision if dtype == torch.float32 else None,
                ACC_DTYPE=tl.int32 if dtype == torch.int8 else tl.float32,
                MAX_IMPRECISE=block_k if dtype == torch.float8_e4m3fn else None,
                BLOCK_K=block_k)


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA addresses rows with unit element stride and 16-byte aligned base and row pitch."""
    return t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def _tma_b(a, b, out):
    """B as the tma kernel reads it, and whether that view is B^T ([N, K]); None if TMA cannot."""
    if not (_tma_ready(a) and _tma_ready(out)):
        return None
    if _tma_ready(b):
        return b, False
    if _tma_ready(b.T):
        return b.T, True
    return None


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a few programs, each looping over several tiles


def _grid(M, N, programs=None):
    """Launch grid: one program per output tile, or at most `programs` (persistent)."""
    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        return (tiles if programs is None else min(programs, tiles),)
    return grid


def _tiled_launcher(a, b, out, precision, config=None):
    (M, K), N = a.shape, b.shape[1]
    grid = _grid(M, N)
    args = (a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1))
    consts = _dot_args(a.dtype, precision)
    kernel = common.pinned(_tiled_kernel, config)

    def launch():
        kernel[grid](*args, **consts)
        return out
    return launch


def _tma_launcher(a, b, out, precision, config=None):
    tma_b = _tma_b(a, b, out)
    if tma_b is None:
        raise ValueError("variant='tma' needs A, B (or B^T) and out with unit stride along rows and "
                         "16-byte aligned rows and base pointers; use variant='tiled'")
    b_view, b_kmajor = tma_b
    (M, K), N = a.shape, b.shape[1]
    # Placeholder block shapes: _set_tma_blocks fills in those of the config that runs.
    descs = [TensorDescriptor.from_tensor(t, [1, 1]) for t in (a, b_view, out)]
    sms = _num_sms(a.device)
    grid = _grid(M, N, sms)
    consts = dict(B_KMAJOR=b_kmajor, NUM_SMS=sms, **_dot_args(a.dtype, precision))
    kernel = common.pinned(_tma_kernel, config)
    if config is not None:  # no autotuner to run the pre-hook: give the descriptors their blocks now
        _set_tma_blocks(dict(zip(("a_desc", "b_desc", "c_desc"), descs), **consts, **config.kwargs))

    def launch():
        kernel[grid](*descs, M, N, K, **consts)
        return out
    return launch


def split_count(m: int, n: int, k: int, dtype: torch.dtype, device, requested: int | None = None) -> tuple[int, int]:
    """(splits, K_SPLIT) the splitk variant launches for this shape: `requested` splits, or the
    module docstring's model's choice; K_SPLIT is a multiple of BLOCK_K and no split is empty."""
    if requested is not None and not 1 <= requested <= MAX_SPLITS:
        raise ValueError(f"splits must be between 1 and {MAX_SPLITS} (got {requested})")
    block_k = 128 // dtype.itemsize
    steps = triton.cdiv(k, block_k)
    splits = requested or _model_splits(m, n, k * dtype.itemsize, steps, _num_sms(torch.device(device)))
    k_split = triton.cdiv(steps, splits) * block_k
    return triton.cdiv(k, k_split), k_split


def _model_splits(m: int, n: int, k_bytes: int, steps: int, sms: int) -> int:
    """The module docstring's split count for M x N x K (K as k_bytes bytes and BLOCK_K steps)."""
    cap = max(1, min(MAX_SPLITS, steps // MIN_SPLIT_STEPS, k_bytes // (2 * 4 * PARTIALS_SHARE * m)))
    tiles = triton.cdiv(m, SPLIT_BLOCK_M[-1]) * triton.cdiv(n, SPLIT_BLOCK_N)
    slots = sms * SLOTS_PER_SM
    cost = {s: triton.cdiv(tiles * s, slots) * (triton.cdiv(steps, s) + FILL_STEPS) for s in range(1, cap + 1)}
    best = min(cost.values())
    return min(s for s, c in cost.items() if c <= 1.05 * best)


def _splitk_launcher(a, b, out, precision, config=None, splits=None):
    (M, K), N = a.shape, b.shape[1]
    splits, k_split = split_count(M, N, K, a.dtype, a.device, splits)
    consts = _dot_args(a.dtype, precision)
    kernel = common.pinned(_splitk_kernel, config)
    if splits == 1:  # the partial is the result: write C directly, nothing to sum
        dst, dst_strides = out, (0, out.stride(0), out.stride(1))
    else:
        partial = torch.int32 if a.dtype == torch.int8 else torch.float32  # the accumulator's dtype
        dst = torch.empty((splits, M, N), dtype=partial, device=a.device)
        dst_strides = dst.stride()
    args = (a, b, dst, M, N, K, k_split, a.stride(0), a.stride(1), b.stride(0), b.stride(1), *dst_strides)

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), splits

    sum_grid = (triton.cdiv(M * N, _REDUCE_BLOCK),)

    def launch():
        kernel[grid](*args, **consts)
        if splits > 1:
            _splitk_sum_kernel[sum_grid](dst, out, M, N, out.stride(0), out.stride(1), SPLITS=splits,
                                         BLOCK=_REDUCE_BLOCK)
        return out
    return launch


_LAUNCHERS = {"tiled": _tiled_launcher, "tma": _tma_launcher}
_AUTO_CHOICE: dict[tuple, str] = {}


def _is_hopper(device: torch.device) -> bool:
    return (device.type == "cuda" and not torch.version.hip
            and torch.cuda.get_device_capability(device)[0] == 9)


def _auto_variant(a, b, out, precision, config=None) -> str:
    if common.INTERPRET or not _is_hopper(a.device) or _tma_b(a, b, out) is None:
        return "tiled"
    key = (a.shape, a.stride(), b.shape, b.stride(), a.dtype, precision, a.device,
           None if config is None else str(config))
    if key not in _AUTO_CHOICE:  # first call only: do_bench's first run also autotunes each variant
        ms = {v: triton.testing.do_bench(_LAUNCHERS[v](a, b, out, precision, config)) for v in AUTO_CANDIDATES}
        _AUTO_CHOICE[key] = min(ms, key=ms.get)
    return _AUTO_CHOICE[key]


def unsupported(dtype: torch.dtype, device: torch.device, variant: str = "auto") -> str | None:
    """Why this kernel cannot run `dtype` on `device` with `variant`, in one line; None if it can."""
    if dtype not in OUT_DTYPE:
        return f"{dtype} is not supported (fp32, fp16, bf16, float8_e4m3fn, int8)"
    if variant not in VARIANTS:
        return f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})"
    if variant == "tma" and TensorDescriptor is None:
        return f"triton {triton.__version__} has no host tensor descriptors (needs >= 3.4)"
    reason = common.platform_unsupported(dtype, device)
    if reason or common.INTERPRET or variant != "tma":
        return reason  # the interpreter emulates descriptors, so the tma logic is testable on CPU
    return common.hopper_only(device, "the tma variant", "tiled")


def _check(a, b, out, precision, variant, splits=None):
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need a [M, K] and b [K, N]; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"a and b differ: {a.dtype} on {a.device} vs {b.dtype} on {b.device}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if splits is not None and variant != "splitk":
        raise ValueError(f"splits= is for variant='splitk' (got variant={variant!r})")
    reason = unsupported(a.dtype, a.device, variant)
    if reason:
        raise ValueError(reason)
    want = ((a.shape[0], b.shape[1]), OUT_DTYPE[a.dtype], a.device)
    if out is not None and (tuple(out.shape), out.dtype, out.device) != want:
        raise ValueError(f"out must be {want[1]} {want[0]} on {want[2]}; got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")


def prepare(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, precision: str = "ieee",
            variant: str = "auto", config: triton.Config | None = None, splits: int | None = None):
    """Everything but the launch: validate, pick the variant ("auto" times tiled and tma once, on
    Hopper), build TMA descriptors or allocate split-K's workspace. Returns a zero-argument function
    that computes out = a @ b and returns out, so a benchmark's timed region holds only the kernel
    launches. `config` pins one tile config (every variant shares its meta-parameters) instead of
    autotuning; `splits` (splitk only) overrides the split count the shape model picks."""
    _check(a, b, out, precision, variant, splits)
    common.pinned(_tiled_kernel, config)  # a bad config fails here, whatever the shape
    if out.numel() == 0:
        return lambda: out
    if a.shape[1] == 0:
        return out.zero_
    if variant == "splitk":
        return _splitk_launcher(a, b, out, precision, config, splits)
    if variant == "auto":
        variant = _auto_variant(a, b, out, precision, config)
    return _LAUNCHERS[variant](a, b, out, precision, config)


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, precision: str = "ieee",
           variant: str = "auto", config: triton.Config | None = None, splits: int | None = None) -> torch.Tensor:
    """C = a @ b into `out` (allocated when None; nothing is allocated when it is given).

    `precision` picks fp32 math ("ieee") or TF32 tensor cores ("tf32"); other dtypes ignore it.
    `config` runs one fixed tile config instead of autotuning; `splits` is splitk's (see prepare).
    """
    _check(a, b, out, precision, variant, splits)
    if out is None:
        out = torch.empty((a.shape[0], b.shape[1]), dtype=OUT_DTYPE[a.dtype], device=a.device)
    return prepare(a, b, out, precision=precision, variant=variant, config=config, splits=splits)()
