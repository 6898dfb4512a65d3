"""The one correctness rule: how every workload and kernel test compares an output with its reference.

A result passes when, compared with a higher-precision reference computed from the same inputs:
1. every element is finite: outputs start poisoned (NaN), so an unwritten tile fails here;
2. no element is an outlier: |out - ref| / (|ref| + rms(ref)) <= tol.element, with rms over the
   chunk (or over each row, where rows have their own scale, e.g. attention); a bit-flipped tile or
   one wrong row or column fails here even when it hardly moves the norm;
3. the relative error of the whole output, ||out - ref||_F / ||ref||_F, is <= tol.norm; a wrong
   K loop (a skipped K block) moves every element a little and fails here.
Norms are accumulated across chunks (Comparison.add, then .finish): workloads compare in row
chunks to bound memory, and the verdict must not depend on the chunk size a GPU's memory allows.

Tolerances come from one error model (tolerance()), relative to the output's rms, for random-sign
data (the workloads' inputs are N(0, 1) or N(0, 1/fan-in)), independent sources added in quadrature:
- input rounding the reference does not see: 2·u_compute where a kernel computes on coarser values
  than the stored inputs (tf32: fp32 storage, 11-bit products); zero elsewhere, since every reference
  upcasts the same stored bf16/fp16/fp8 inputs (their products are exact in fp32);
- accumulation: a sum of K random-sign products rounded at each step drifts like sqrt(K)·u_acc
  relative to the result: fp32 accumulators u = 2^-24, fp64 ones u = 2^-53. Nothing wider than fp64
  serves as a reference, so an fp64 output is compared with a float64 reference that drifts as much
  as the kernel: the two independent drifts add, sqrt(2)·sqrt(K)·2^-53 (an fp64 case computed in
  fp32 anywhere is off by 2^-24 or more, millions of times that). Hopper's fp8 tensor cores add in a
  reduced-precision accumulator (13 stored mantissa bits, u = 2^-14, truncating; the H200 run's
  errors and the DeepSeek-V3 report agree), over at most FP8_PROMOTE_K products before the partial
  sum is promoted into fp32 (cuBLAS without fast-accum, torch._scaled_mm's default, and our
  kernels); a backend with fast accumulation would sum all K there and is outside this bound at
  large K (about 1e-2 relative at K = 16384: it computes less precisely);
- output rounding, once per rounding of the result or of an intermediate that feeds it linearly
  (`roundings`; GEMM 1, chains such as MoE or a transformer block more): u of the output dtype;
- requantization (fp8 MoE's h): when the reference itself rounds an intermediate to the input
  dtype, a tiny difference before it flips some elements by a whole fp8 step. A value moves by
  one step (ulp = 2·u_in) with probability |delta|/ulp, so the relative rms error is
  sqrt(eps·ulp), eps the intermediate's own relative error (SiLU·mul of two K-sums: 2·acc(K)).
tol.norm = NORM_FACTOR·sigma, tol.element = OUTLIER_FACTOR·sigma: the model overestimates real
errors 2-4x (H200: fp8 GEMM at K = 256, 6.7e-4 of rms at worst; fp8 MoE dense-equivalent at
K = 7168, 3.5e-2 worst element), and the outlier factor covers the tails of up to ~1e10 elements.
Integer outputs must be exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from harness.measure.dtypes import DType

# Unit roundoff of the values a kernel multiplies (2^-p, p significant bits with the implicit one).
COMPUTE_ROUNDOFF = {"fp64": 2**-53, "fp32": 2**-24, "tf32": 2**-11, "bf16": 2**-8, "fp16": 2**-11,
                    "fp8": 2**-4}
FP32_ACCUMULATOR = 2**-24
FP64_ACCUMULATOR = 2**-53
FP8_ACCUMULATOR = 2**-14  # Hopper's fp8 MMA accumulator: 13 stored mantissa bits
FP8_PROMOTE_K = 128  # products summed there before promotion to fp32 (cuBLAS, kernels/gemm.py, kernels/moe.py)
NORM_FACTOR = 3.0
OUTLIER_FACTOR = 8.0


@dataclass(frozen=True)
class Tolerance:
    norm: float  # bound on ||out - ref||_F / ||ref||_F
    element: float  # bound on |out - ref| / (|ref| + rms(ref)) for every element


def accumulation_error(dtype: DType, k: int) -> float:
    """Relative error of a K-long sum of random-sign products in the dtype's accumulator (fp64: the
    kernel's and its float64 reference's, which has no more precision)."""
    if dtype.name == "fp64":
        return math.sqrt(2) * FP64_ACCUMULATOR * math.sqrt(k)
    fp32 = FP32_ACCUMULATOR * math.sqrt(k)
    if dtype.name != "fp8":
        return fp32
    return math.hypot(fp32, FP8_ACCUMULATOR * math.sqrt(min(k, FP8_PROMOTE_K)))


def tolerance(dtype: DType, k: int, roundings: int = 1, requantized_k: int | None = None) -> Tolerance:
    """The bounds for an output of `dtype` whose reductions are at most `k` long, rounded `roundings`
    times to the output dtype along the way; `requantized_k`: an intermediate, the result of a
    reduction that long, is rounded to the input dtype by the reference too (fp8 MoE's h)."""
    if not dtype.is_float:
        return Tolerance(0.0, 0.0)
    u_compute = COMPUTE_ROUNDOFF[dtype.name]
    u_storage = torch.finfo(dtype.storage).eps / 2
    u_out = torch.finfo(dtype.output).eps / 2
    terms = [
        2 * u_compute if u_compute > u_storage else 0.0,  # tf32 rounds what the reference keeps
        accumulation_error(dtype, k),
        math.sqrt(roundings) * u_out,
    ]
    if requantized_k is not None:
        terms.append(math.sqrt(2 * accumulation_error(dtype, requantized_k) * 2 * u_compute))
    sigma = math.sqrt(sum(t * t for t in terms))
    return Tolerance(NORM_FACTOR * sigma, OUTLIER_FACTOR * sigma)


class Comparison:
    """One output compared chunk by chunk: add() checks each chunk's elements and accumulates the
    squared norms; finish() checks the norm of the whole."""

    def __init__(self, tol: Tolerance):
        self.tol = tol
        self.err_sq = 0.0
        self.ref_sq = 0.0

    def add(self, got: torch.Tensor, ref: torch.Tensor,
            locate: Callable[[tuple[int, ...]], str] = lambda at: str(list(at)),
            rms_dim: int | None = None) -> str | None:
        """None if the chunk is finite and has no outlier, else what is wrong and where.

        got and ref in the reference's dtype (fp32 or fp64); rms_dim: take the rms along this
        dimension (per row) instead of over the whole chunk."""
        bad = ~torch.isfinite(got)
        if bad.any():
            first = tuple(int(x) for x in bad.nonzero()[0])
            return f"output has {int(bad.sum())} non-finite or unwritten elements (first at {locate(first)})"
        diff = got - ref
        self.err_sq += float(diff.square().sum(dtype=torch.float64))
        self.ref_sq += float(ref.square().sum(dtype=torch.float64))
        square = ref.square()
        rms = (square.mean() if rms_dim is None else square.mean(dim=rms_dim, keepdim=True)).sqrt()
        err = diff.abs() / (ref.abs() + rms).clamp_min(torch.finfo(torch.float32).tiny)
        at = tuple(int(x) for x in torch.unravel_index(err.argmax(), err.shape))
        if err[at] > self.tol.element:
            return (f"error {float(err[at]):.2e} exceeds tolerance {self.tol.element:.1e} at {locate(at)}: "
                    f"got {float(got[at]):.6g}, expected {float(ref[at]):.6g}")
        return None

    def finish(self) -> str | None:
        """None if ||out - ref|| / ||ref|| over everything added is within tol.norm."""
        if self.ref_sq == 0.0:
            relative = 0.0 if self.err_sq == 0.0 else math.inf
        else:
            relative = math.sqrt(self.err_sq / self.ref_sq)
        if relative > self.tol.norm:
            return f"relative error ||out - ref|| / ||ref|| = {relative:.2e} exceeds tolerance {self.tol.norm:.1e}"
        return None


def compare(got: torch.Tensor, ref: torch.Tensor, tol: Tolerance,
            locate: Callable[[tuple[int, ...]], str] = lambda at: str(list(at)),
            rms_dim: int | None = None) -> str | None:
    """The whole rule on one tensor: None, or what is wrong."""
    comparison = Comparison(tol)
    return comparison.add(got, ref, locate, rms_dim) or comparison.finish()


def rows_from(row0: int) -> Callable[[tuple[int, ...]], str]:
    """locate() for a block of rows starting at row0 of a 2-D output."""
    return lambda at: f"[{row0 + at[0]}, {at[1]}]"
