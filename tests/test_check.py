"""harness/measure/check.py, the one correctness rule: ordinary rounding passes at every K, planted faults fail.

Outputs are made on the CPU in float64 from e4m3/bf16/fp16-valued inputs, then damaged the way a
broken kernel would damage them, or rounded the way a correct one rounds (reduced-precision
accumulators, bf16/fp16 outputs), and judged by the same tolerance() the workloads use.
"""

import pytest
import torch

from harness.measure.check import Comparison, compare, tolerance
from harness.measure.dtypes import DTYPES

STORAGE = {"fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16, "fp16": torch.float16}


def inputs(m, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(STORAGE[dtype]).double()
    b = torch.randn(k, n, generator=g).to(STORAGE[dtype]).double()
    return a, b


def to_output(t, dtype):
    return t.to(DTYPES[dtype].output).double()


def round_mantissa(t, bits, truncate=False):
    """t with `bits` stored mantissa bits, rounded to nearest or toward zero."""
    m, e = torch.frexp(t)
    scale = 2.0 ** (bits + 1)
    return torch.ldexp((torch.trunc if truncate else torch.round)(m * scale) / scale, e)


def reduced_accumulator(a, b, bits, step, promote=None, truncate=False):
    """A·B summed as a tensor core with a short accumulator does: exact products over `step` K,
    the running sum rounded to `bits` mantissa bits after each step; with `promote`, the partial
    sum moves into an fp32 accumulator every `promote` K (cuBLAS without fast-accum, our kernels)."""
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    part = torch.zeros_like(total)
    for k0 in range(0, a.shape[1], step):
        part = round_mantissa(part + a[:, k0:k0 + step] @ b[k0:k0 + step], bits, truncate)
        if promote and (k0 + step) % promote == 0:
            total, part = (total + part).float().double(), torch.zeros_like(part)
    return total + part


def judge(got, ref, dtype, k):
    return compare(got, ref, tolerance(DTYPES[dtype], k))


# Ordinary rounding passes.

@pytest.mark.parametrize("k", [256, 4096, 16384])
@pytest.mark.parametrize("bits, step, promote, truncate", [
    (13, 32, 128, True),  # Hopper: 13-bit truncating accumulator, promoted every 128 K
    (13, 32, None, False),  # never promoted, rounding to nearest
    (22, 32, None, False),
    (22, 128, None, True),
], ids=["hopper-promoted", "13bit-nearest", "22bit-every-32", "22bit-every-128"])
def test_fp8_reduced_precision_accumulation_passes(k, bits, step, promote, truncate):
    a, b = inputs(32, 48, k, "fp8")
    ref = a @ b
    got = to_output(reduced_accumulator(a, b, bits, step, promote, truncate), "fp8")
    assert judge(got, ref, "fp8", k) is None


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("k", [64, 4096, 16384])
def test_16_bit_output_rounding_passes(dtype, k):
    a, b = inputs(32, 48, k, dtype)
    ref = a @ b
    assert judge(to_output(ref.float().double(), dtype), ref, dtype, k) is None
    # Triton's interpreter truncates instead: up to a whole ulp, still fine
    truncated = round_mantissa(ref, 7 if dtype == "bf16" else 10, truncate=True)
    assert judge(truncated, ref, dtype, k) is None


def test_the_h200_fp8_gemm_error_passes():
    # test_gpu_bf16_fp8 at (512, 384, 256) on the H200: one element of 196608 off by 0.0107 where
    # outputs are ~16 (the old absolute atol 1e-2 failed it); 6.7e-4 of the rms.
    a, b = inputs(512, 384, 256, "fp8")
    ref = a @ b
    got = to_output(ref, "fp8")
    got[393, 286] += 0.0107
    assert judge(got, ref, "fp8", 256) is None


# Planted faults fail.

@pytest.fixture(params=["fp8", "bf16", "fp16"])
def gemm(request):
    dtype = request.param
    a, b = inputs(96, 80, 512, dtype, seed=1)
    ref = a @ b
    return dtype, a, b, ref, to_output(ref, dtype)


def test_bit_flipped_tile_fails(gemm):
    dtype, _, _, ref, good = gemm
    bits = good.to(DTYPES[dtype].output).view(torch.int16)
    for bit in (15, 14, 9):  # sign, top exponent bit, a middle bit
        flipped = bits.clone()
        flipped[32:48, 16:32] ^= (1 << bit) - (1 << 16 if bit == 15 else 0)  # int16: bit 15 is the sign
        got = flipped.view(DTYPES[dtype].output).double()
        assert judge(good, ref, dtype, 512) is None
        problem = judge(got, ref, dtype, 512)
        assert problem is not None and ("exceeds tolerance" in problem or "non-finite" in problem), bit


def test_skipped_last_k_block_fails(gemm):
    dtype, a, b, ref, _ = gemm
    for block in (32, 64, 128):
        got = to_output(a[:, :-block] @ b[:-block], dtype)  # the K loop stops one block early
        assert judge(got, ref, dtype, 512) is not None, block


@pytest.mark.parametrize("k, block", [(4096, 64), (16384, 128), (16384, 32)])
def test_skipped_last_k_block_fails_at_large_k(k, block):
    a, b = inputs(16, 32, k, "fp8", seed=2)
    ref = a @ b
    got = to_output(a[:, :-block] @ b[:-block], "fp8")
    assert judge(got, ref, "fp8", k) is not None
    # every element is a little off, sqrt(block / K) of the rms: the norm alone catches it too
    assert (got - ref).norm() / ref.norm() > 2 * tolerance(DTYPES["fp8"], k).norm


def test_one_wrong_row_or_column_fails(gemm):
    dtype, a, b, ref, good = gemm
    wrong_row = good.clone()
    wrong_row[17] = to_output(a[18] @ b, dtype)  # row 17 computed from the wrong row of A
    assert "at [17, " in judge(wrong_row, ref, dtype, 512)
    wrong_col = good.clone()
    wrong_col[:, 5] = 0.5 * wrong_col[:, 5]  # a column scaled by a wrong factor
    assert ", 5]" in judge(wrong_col, ref, dtype, 512)


def test_unwritten_tile_fails(gemm):
    dtype, _, _, ref, good = gemm
    got = good.clone()
    got[64:80, 64:80] = float("nan")
    assert "unwritten" in judge(got, ref, dtype, 512)


def test_integers_must_be_exact():
    tol = tolerance(DTYPES["int8"], 4096)
    ref = torch.arange(-50, 50, dtype=torch.float64).view(10, 10)
    assert compare(ref.clone(), ref, tol) is None
    got = ref.clone()
    got[3, 3] += 1
    assert "exceeds tolerance" in compare(got, ref, tol)


# The rule itself.

def test_norm_is_accumulated_across_chunks():
    # A small error everywhere: each chunk alone and the whole agree; chunking changes nothing.
    a, b = inputs(64, 32, 256, "bf16")
    ref = a @ b
    got = ref * (1 + 0.5 * tolerance(DTYPES["bf16"], 256).norm)
    tol = tolerance(DTYPES["bf16"], 256)
    for rows in (1, 7, 64):
        comparison = Comparison(tol)
        assert all(comparison.add(got[i:i + rows], ref[i:i + rows]) is None for i in range(0, 64, rows))
        assert comparison.finish() is None
    worse = ref * (1 + 2 * tol.norm)
    comparison = Comparison(tol)
    assert all(comparison.add(worse[i:i + 8], ref[i:i + 8]) is None for i in range(0, 64, 8))
    assert "relative error" in comparison.finish()


def test_tolerances_grow_with_k_and_roundings_and_order_the_dtypes():
    tol = {d: tolerance(DTYPES[d], 4096) for d in ("fp64", "fp32", "fp16", "tf32", "bf16", "fp8")}
    assert tol["fp64"].norm < tol["fp32"].norm < tol["fp16"].norm < tol["tf32"].norm < tol["bf16"].norm <= tol["fp8"].norm
    assert tolerance(DTYPES["fp32"], 16384).norm > tolerance(DTYPES["fp32"], 256).norm
    assert tolerance(DTYPES["bf16"], 256, roundings=12).norm > tolerance(DTYPES["bf16"], 256).norm
    for t in tol.values():
        assert t.element > t.norm
    # fp32 stays far below what TF32 inputs cost, so a silent TF32 run is a mismatch
    assert tolerance(DTYPES["fp32"], 16384).element < 2**-11 / 4


def test_fp8_requantization_widens_the_bound_as_the_flips_need():
    # The fp8 MoE recipe: h = silu(gate)·up from a K = 7168 reduction, quantized to e4m3 by the
    # reference too. A relative difference eps before quantization flips elements by a whole
    # e4m3 step with probability ~eps/step: simulate it and check the model's bound covers it.
    g = torch.Generator().manual_seed(0)
    h = torch.randn(256, 2048, generator=g, dtype=torch.float64)
    w = torch.randn(2048, 512, generator=g, dtype=torch.float64) / 2048 ** 0.5
    eps = 2 * 2**-14 * 128 ** 0.5  # the promoted fp8 accumulator's error, twice (silu·mul)
    moved = h * (1 + eps * torch.randn(h.shape, generator=g, dtype=torch.float64))
    q = lambda t: t.to(torch.float8_e4m3fn).double()  # noqa: E731
    flips = (q(moved) - q(h)).norm() / q(h).norm()
    assert 0.5 < flips / (eps * 2**-3) ** 0.5 < 1  # the model's term, sqrt(eps·ulp), is just above
    ref, got = q(h) @ w, to_output(q(moved) @ w, "fp8")
    requantized = tolerance(DTYPES["fp8"], 2048, roundings=3, requantized_k=7168)
    assert compare(got, ref, requantized) is None
    assert requantized.norm > tolerance(DTYPES["fp8"], 2048, roundings=3).norm
