"""Our dense GEMM in Triton: C[M, N] = A[M, K] @ B[K, N], checked against torch in tests/test_kernels_gemm.py.

Two variants share the same blocking:

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
* **auto** -- on Hopper, times both once per (shape, strides, dtype, precision) with
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

VARIANTS = ("auto", "tiled", "tma")
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


def _set_tma_blocks(nargs):
    """Autotune pre-hook: give the descriptors the block shapes of the config about to run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_KMAJOR"] else [bk, bn]
    nargs["c_desc"].block_shape = [bm, bn]


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
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=rk[None, :] < K - k * BLOCK_K, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < K - k * BLOCK_K, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                     out_dtype=ACC_DTYPE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
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
        ms = {v: triton.testing.do_bench(make(a, b, out, precision, config)) for v, make in _LAUNCHERS.items()}
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
    if torch.version.hip:
        return "the tma variant uses NVIDIA Hopper TMA; use 'tiled' on AMD GPUs"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"the tma variant is written for Hopper (sm_90); this GPU is sm_{major}{minor}"
    return None


def _check(a, b, out, precision, variant):
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need a [M, K] and b [K, N]; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"a and b differ: {a.dtype} on {a.device} vs {b.dtype} on {b.device}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    reason = unsupported(a.dtype, a.device, variant)
    if reason:
        raise ValueError(reason)
    want = ((a.shape[0], b.shape[1]), OUT_DTYPE[a.dtype], a.device)
    if out is not None and (tuple(out.shape), out.dtype, out.device) != want:
        raise ValueError(f"out must be {want[1]} {want[0]} on {want[2]}; got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")


def prepare(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, precision: str = "ieee",
            variant: str = "auto", config: triton.Config | None = None):
    """Everything but the launch: validate, pick the variant ("auto" times both once, on Hopper),
    build TMA descriptors. Returns a zero-argument function that computes out = a @ b and returns
    out, so a benchmark's timed region holds only the kernel launch. `config` pins one tile config
    (both variants share its meta-parameters) instead of autotuning."""
    _check(a, b, out, precision, variant)
    common.pinned(_tiled_kernel, config)  # a bad config fails here, whatever the shape
    if out.numel() == 0:
        return lambda: out
    if a.shape[1] == 0:
        return out.zero_
    if variant == "auto":
        variant = _auto_variant(a, b, out, precision, config)
    return _LAUNCHERS[variant](a, b, out, precision, config)


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, precision: str = "ieee",
           variant: str = "auto", config: triton.Config | None = None) -> torch.Tensor:
    """C = a @ b into `out` (allocated when None; nothing is allocated when it is given).

    `precision` picks fp32 math ("ieee") or TF32 tensor cores ("tf32"); other dtypes ignore it.
    `config` runs one fixed tile config instead of autotuning (see prepare).
    """
    _check(a, b, out, precision, variant)
    if out is None:
        out = torch.empty((a.shape[0], b.shape[1]), dtype=OUT_DTYPE[a.dtype], device=a.device)
    return prepare(a, b, out, precision=precision, variant=variant, config=config)()
