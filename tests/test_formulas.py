"""The formulas, computed by hand: GEMM FLOPs and bytes per dtype, and the metrics built on them."""

import math

import pytest

from harness.measure import metrics
from harness.hardware import specs
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DTYPES
from harness.workloads.gemm import GEMM

H100 = specs.lookup("h100-sxm")
H100_FACTS = DeviceFacts(kind="cuda", name="NVIDIA H100 80GB HBM3", vendor="nvidia", compute_capability=(9, 0),
                         sm_count=132, max_sm_clock_mhz=1980)


@pytest.mark.parametrize("dtype, s_in, s_out", [
    ("fp64", 8, 8), ("fp32", 4, 4), ("tf32", 4, 4), ("bf16", 2, 2), ("fp16", 2, 2), ("fp8", 1, 2), ("int8", 1, 4)])
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
    for dtype, peak in [("fp64", 67), ("fp32", 67), ("tf32", 494.5), ("fp8", 1979), ("int8", 1979)]:
        row = metrics.achieved(10**12, 10**9, 1000.0, H100, DTYPES[dtype].peak_key)
        assert row["mfu"] == pytest.approx(1 / peak), dtype


def test_no_peak_means_no_utilization():
    row = metrics.achieved(10**9, 10**6, 1.0, None, "bf16")
    assert row["tflops"] == pytest.approx(1.0)
    assert row["mfu"] is None and row["mbu"] is None and row["bound"] is None and row["roofline"] is None
    assert row["intensity"] == pytest.approx(1000)


def test_above_peak_is_suspect_not_a_result():
    too_fast = metrics.achieved(2 * 8192**3, 3 * 8192**2 * 2, 0.5, H100, "bf16")  # 2199 TFLOPS
    assert "above the H100 SXM datasheet peak" in metrics.sanity(too_fast, H100, peak_key="bf16")
    leaky = metrics.achieved(10**6, 10**10, 1.0, H100, "bf16")  # 10 TB/s
    assert "datasheet bandwidth" in metrics.sanity(leaky, H100, peak_key="bf16")
    fine = metrics.achieved(2 * 8192**3, 3 * 8192**2 * 2, 1.4, H100, "bf16")
    assert metrics.sanity(fine, H100, peak_key="bf16") is None
    assert metrics.sanity(metrics.achieved(1, 1, 1e-9, None, "bf16"), None) is None


def _tflops_row(tflops: float, spec=H100, key="bf16", time_ms=1.0):
    return {**metrics.achieved(int(tflops * 1e9 * time_ms), 10**6, time_ms, spec, key), "time_ms": time_ms}


def test_the_datasheet_limit_has_a_small_slack_and_the_clock_headroom():
    # Without facts the limit is the datasheet peak + 2%: 1.5% over is a measurement, 3% over is not.
    assert metrics.sanity(_tflops_row(989.5 * 1.015), H100, peak_key="bf16") is None
    assert "datasheet peak" in metrics.sanity(_tflops_row(989.5 * 1.03), H100, peak_key="bf16")
    # An H100 whose tensor peak assumes 1830 MHz may run at 1980: 1980/1830 more is possible, not more.
    headroom = 1980 / (989.5e12 / (132 * 4096) / 1e6)
    assert metrics.clock_headroom(H100, H100_FACTS, "bf16") == pytest.approx(headroom)
    assert headroom == pytest.approx(1.082, abs=1e-3)
    assert metrics.sanity(_tflops_row(989.5 * 1.08), H100, peak_key="bf16", facts=H100_FACTS) is None
    reason = metrics.sanity(_tflops_row(989.5 * headroom * 1.03), H100, peak_key="bf16", facts=H100_FACTS)
    assert "maximum SM clock" in reason
    # fp32's datasheet peak already assumes the 1980 MHz boost: no headroom.
    assert metrics.clock_headroom(H100, H100_FACTS, "fp32") == 1.0


def test_a_time_below_the_launch_floor_is_suspect():
    floor = metrics.launch_floor_ms({"launch_ms": 0.002}, "cuda")  # a stored 2 us empty launch
    assert floor[0] == pytest.approx(metrics.LAUNCH_FLOOR_FRACTION * 0.002)
    slow_but_fine = metrics.achieved(10**6, 10**3, 0.0019, H100, "bf16")  # tiny, and not impossible
    assert metrics.sanity({**slow_but_fine, "time_ms": 0.0019}, H100, peak_key="bf16", floor=floor) is None
    planted = metrics.achieved(10**6, 10**3, 0.0005, H100, "bf16")  # 0.5 us: shorter than any launch
    reason = metrics.sanity({**planted, "time_ms": 0.0005}, H100, peak_key="bf16", floor=floor)
    assert "shorter than an empty kernel launch" in reason and "measured by `mfu ceilings`" in reason
    # Without a stored launch time the conservative constant of the device kind applies.
    ms, why = metrics.launch_floor_ms(None, "cuda")
    assert ms == metrics.DEFAULT_LAUNCH_FLOOR_MS["cuda"] and "conservative" in why
    assert "shorter" in metrics.sanity({**planted, "time_ms": 0.0005}, H100, peak_key="bf16", floor=(ms, why))


def test_beating_a_measured_ceiling_is_not_suspect():
    ceilings = {"matmul_tflops": {"bf16": 380.0}, "bandwidth_gbps": 3000.0}
    row = {**metrics.achieved(4 * 10**11, 10**6, 1.0, H100, "bf16", ceilings), "time_ms": 1.0}  # 1.053 x 380
    assert row["mfu_ceiling"] == pytest.approx(400 / 380)
    assert metrics.sanity(row, H100, peak_key="bf16") is None  # a record to raise, not an impossibility


def test_the_clock_the_peak_assumes():
    assert metrics.peak_clock_mhz(H100, H100_FACTS, "bf16") == pytest.approx(989.5e6 / (132 * 4096))  # 1830
    assert metrics.peak_clock_mhz(H100, H100_FACTS, "fp32") == pytest.approx(67e6 / (132 * 256))  # 1983
    # A peak whose implied clock is implausible (a GeForce part's half-rate tensor peak) uses the boost.
    rtx = specs.lookup("rtx-4090")
    ada = DeviceFacts(kind="cuda", name="NVIDIA GeForce RTX 4090", vendor="nvidia", compute_capability=(8, 9),
                      sm_count=128, max_sm_clock_mhz=2520)
    assert metrics.peak_clock_mhz(rtx, ada, "bf16") == rtx.boost_mhz
    # No spec: NVML's maximum SM clock.
    assert metrics.peak_clock_mhz(None, H100_FACTS, "bf16") == 1980


def test_mfu_at_clock_scales_the_peak_to_the_clock_the_case_ran_at():
    row = {**_tflops_row(700.0), "sm_clock_mhz": 1500.0, "throttle": "sw_power_cap"}
    cols = metrics.clock_columns(row, H100, H100_FACTS, "bf16")
    peak_clock = 989.5e6 / (132 * 4096)
    assert cols["peak_clock_mhz"] == pytest.approx(peak_clock)
    # achieved / (peak x 1500 / 1830)
    assert cols["mfu_at_clock"] == pytest.approx(700 / (989.5 * 1500 / peak_clock))
    assert cols["throttled"] is True  # 1500 is 82% of 1830
    calm = metrics.clock_columns({**row, "sm_clock_mhz": 1700.0}, H100, H100_FACTS, "bf16")
    assert calm["throttled"] is False  # at the power cap, but 93% of the peak's clock: not throttled
    assert calm["mfu_at_clock"] == pytest.approx(700 / (989.5 * 1700 / peak_clock))
    blind = metrics.clock_columns(_tflops_row(700.0), H100, H100_FACTS, "bf16")  # no telemetry
    assert blind["mfu_at_clock"] is None and blind["throttled"] is None


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
    assert metrics.sanity(row, H100, peak_key="bf16") is None
    row = metrics.achieved(4 * 10**11, 3 * 10**8, 1.0, H100, "bf16", ceilings)
    assert row["exp_util"] is None and row["limit"] == "tensor"
    assert metrics.achieved(1, 1, 1.0, None, "bf16", None)["limit"] is None
