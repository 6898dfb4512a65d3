"""Micro-kernels that probe a GPU's ceilings (used by `mfu ceilings`, harness/ceilings.py).

* `copy`: an SM-driven copy. Each program moves one BLOCK of 32-bit words with wide loads and
  stores; with enough programs in flight it saturates DRAM. Bytes = 2·N·4 (read + write), the
  convention datasheet-vs-achieved copy numbers use. It complements torch's copy_, which may use
  the copy engines or a different kernel.
* `exp2_chain`: every element runs ITERS dependent `x = exp2(x) - 1` steps in registers. x stays
  in [-1, 0], so nothing overflows, and the subtraction runs on the FP32 pipe, not the special
  function units (SFU/MUFU) that evaluate exp2. Independent elements per thread give the ILP to
  keep every SFU busy, so the rate is exp2 results per second: what a softmax leans on.
  exps = N·ITERS per launch. On NVIDIA GPUs (compute capability 8.x-10.x) the CUDA programming
  guide's throughput table gives 16 exp2 results per clock per SM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SFU_EXP2_PER_CLOCK_PER_SM = 16


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


def copy_launcher(src: torch.Tensor, dst: torch.Tensor, block: int = 8192):
    """A zero-argument launch of dst.copy_(src) by our kernel (contiguous tensors of one size)."""
    s, d = src.view(torch.int32), dst.view(torch.int32)
    n = s.numel()
    grid = (triton.cdiv(n, block),)

    def launch():
        _copy_kernel[grid](s, d, n, BLOCK=block, num_warps=8)
        return dst
    return launch


@triton.jit
def _exp2_chain_kernel(x_ptr, n, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    for _ in range(ITERS):
        x = tl.exp2(x) - 1.0
    tl.store(x_ptr + offs, x, mask=mask)  # the store keeps the chain from being optimised away


def exp2_launcher(x: torch.Tensor, iters: int = 256, block: int = 1024):
    """A zero-argument launch of the exp2 chain over fp32 x in place; returns exps per launch."""
    n = x.numel()
    grid = (triton.cdiv(n, block),)

    def launch():
        _exp2_chain_kernel[grid](x, n, ITERS=iters, BLOCK=block, num_warps=4)
        return x
    return launch, n * iters
