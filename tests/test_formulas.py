"""The formulas, computed by hand: GEMM FLOPs and bytes per dtype, and the metrics built on them."""

import math

import pytest

from harness import metrics, specs
from harness.dtypes import DTYPES
from harness.workloads.gemm import GEMM

H100 = specs.lookup("h100-sxm")


@pytest.mark.parametrize("dtype, s_in, s_out", [
    ("fp32", 4, 4), ("tf32", 4, 4), ("bf16", 2, 2), ("fp16", 2, 2), ("fp8", 1, 2), ("int8", 1, 4)])
def test_gemm_bytes_use_input_and_output_sizes(dtype, s_in, s_out):
    p = {"m": 3, "n": 5, "k": 7}
    assert GEMM.bytes(p, DTYPES[dtype]) == (3 * 7 + 7 * 5) * s_in + 3 * 5 * s_out


def test_gemm_flops_count_a_multiply_add_as_two():
    assert GEMM.flops({"m": 8192, "n": 8192, "k": 8192}) == 2 * 8192**3
    assert GEMM.flops({"m": 1, "n": 4096, "k": 14336}) == 2 * 4096 * 14336


def test_achieved_metrics_against_the_h100_datasheet():
    # 8192^3 bf16 in 1.4 ms: 785.4 TFLOPS, 0.794 of 989.5
    p = {"m": 8192, "n": 8192, "k": 8192}
    flops, nbytes = GEMM.flops(p), GEMM.bytes(p, DTYPES["bf16"])
    row = metrics.achieved(flops, nbytes, 1.4, H100, "bf16")
    assert row["tflops"] == pytest.approx(2 * 8192**3 / 1.4e-3 / 1e12)
    assert row["gbps"] == pytest.approx(3 * 8192**2 * 2 / 1.4e-3 / 1e9)
    assert row["mfu"] == pytest.approx(row["tflops"] / 989.5)
    assert row["mbu"] == pytest.approx(row["gbps"] / 3350)
    assert row["intensity"] == pytest.approx(8192 / 3)  # 2n^3 / (3 n^2 * 2 bytes)
    assert row["bound"] == "compute"
    # compute-bound: the roofline time is the time at peak
    assert row["roofline_ms"] == pytest.approx(flops / 989.5e12 * 1e3)
    assert row["roofline"] == pytest.approx(row["mfu"])


def test_decode_gemv_is_memory_bound_and_roofline_uses_bandwidth():
    p = {"m": 1, "n": 8192, "k": 8192}
    flops, nbytes = GEMM.flops(p), GEMM.bytes(p, DTYPES["bf16"])
    shape = metrics.shape(flops, nbytes, H100, "bf16")
    assert shape["bound"] == "memory"
    assert shape["intensity"] < 1
    assert shape["roofline_ms"] == pytest.approx(nbytes / 3.35e12 * 1e3)
    row = metrics.achieved(flops, nbytes, 2 * shape["roofline_ms"], H100, "bf16")
    assert row["roofline"] == pytest.approx(0.5) and row["mbu"] == pytest.approx(0.5)


def test_each_dtype_is_measured_against_its_own_peak():
    for dtype, peak in [("fp32", 67), ("tf32", 494.5), ("fp8", 1979), ("int8", 1979)]:
        row = metrics.achieved(10**12, 10**9, 1000.0, H100, DTYPES[dtype].peak_key)
        assert row["mfu"] == pytest.approx(1 / peak), dtype


def test_no_peak_means_no_utilization():
    row = metrics.achieved(10**9, 10**6, 1.0, None, "bf16")
    assert row["tflops"] == pytest.approx(1.0)
    assert row["mfu"] is None and row["mbu"] is None and row["bound"] is None and row["roofline"] is None
    assert row["intensity"] == pytest.approx(1000)


def test_above_peak_is_suspect_not_a_result():
    too_fast = metrics.achieved(2 * 8192**3, 3 * 8192**2 * 2, 0.5, H100, "bf16")  # 2199 TFLOPS
    assert "above the H100 SXM datasheet peak" in metrics.sanity(too_fast, H100)
    leaky = metrics.achieved(10**6, 10**10, 1.0, H100, "bf16")  # 10 TB/s
    assert "datasheet bandwidth" in metrics.sanity(leaky, H100)
    fine = metrics.achieved(2 * 8192**3, 3 * 8192**2 * 2, 1.4, H100, "bf16")
    assert metrics.sanity(fine, H100) is None
    assert metrics.sanity(metrics.achieved(1, 1, 1e-9, None, "bf16"), None) is None


def test_memory_estimate_covers_inputs_outputs_and_reference():
    p = {"m": 8192, "n": 8192, "k": 8192}
    need = GEMM.memory_bytes(p, DTYPES["fp32"])
    assert need >= GEMM.bytes(p, DTYPES["fp32"]) + 8192 * 8192 * 8  # fp64 copy of B for the check
    assert need < 4 * GEMM.bytes(p, DTYPES["fp32"])
    assert math.isfinite(GEMM.memory_bytes({"m": 1, "n": 1, "k": 1}, DTYPES["int8"]))


def test_ceiling_ratios_exp_utilization_and_the_limit():
    ceilings = {"matmul_tflops": {"bf16": 800.0}, "bandwidth_gbps": 3000.0, "exp_per_s": 4e12}
    # 1 ms: 400 TFLOPS, 300 GB/s, 3.6e12 exp/s
    row = metrics.achieved(4 * 10**11, 3 * 10**8, 1.0, H100, "bf16", ceilings, exps=36 * 10**8)
    assert row["mfu_ceiling"] == pytest.approx(0.5)
    assert row["mbu_ceiling"] == pytest.approx(0.1)
    assert row["exp_util"] == pytest.approx(0.9)
    assert row["limit"] == "exp"  # the softmax's exps, not the tensor cores, are what is close to full
    assert metrics.sanity(row, H100) is None
    row = metrics.achieved(4 * 10**11, 3 * 10**8, 1.0, H100, "bf16", ceilings)
    assert row["exp_util"] is None and row["limit"] == "tensor"
    assert metrics.achieved(1, 1, 1.0, None, "bf16", None)["limit"] is None


def test_more_than_5_percent_above_a_measured_ceiling_is_suspect():
    ceilings = {"matmul_tflops": {"bf16": 380.0}, "bandwidth_gbps": 3000.0}
    within = metrics.achieved(4 * 10**11, 10**6, 1.0, H100, "bf16", ceilings)  # 1.053 x 380
    assert within["mfu_ceiling"] == pytest.approx(400 / 380)
    assert "measured matmul ceiling" in metrics.sanity(within, H100)
    ceilings["matmul_tflops"]["bf16"] = 390.0  # 1.026 x: measurement noise, not a broken count
    assert metrics.sanity(metrics.achieved(4 * 10**11, 10**6, 1.0, H100, "bf16", ceilings), H100) is None
