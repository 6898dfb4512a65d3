"""fp64 GEMM end to end: the dtype, its correctness bound, the torch backend on a CPU, the FP64 Tensor
Core peaks it is measured against (none where no source gives one) and its planned rows."""

import io

import pytest
import torch
from rich.console import Console

from conftest import rows as read_rows
from harness.hardware import specs, sweep
from harness.hardware.device import DeviceFacts
from harness.measure import config, metrics, plan, runner
from harness.measure.check import tolerance
from harness.measure.dtypes import DTYPES
from harness.workloads.gemm import GEMM

FP64 = DTYPES["fp64"]
P = {"m": 32, "n": 24, "k": 2048}


def inputs(p=P):
    return GEMM.make_inputs(p, FP64, "cpu", torch.Generator().manual_seed(0))


def test_fp64_is_ieee_double_in_and_out_against_its_own_peak():
    assert (FP64.storage, FP64.output, FP64.size, FP64.out_size, FP64.peak_key) == (
        torch.float64, torch.float64, 8, 8, "fp64")
    assert GEMM.bytes({"m": 3, "n": 5, "k": 7}, FP64) == (3 * 7 + 7 * 5) * 8 + 3 * 5 * 8


def test_fp64_gemm_runs_through_torch_on_the_cpu_and_passes_its_check(tmp_path):
    suite = config.parse("""
suite: fp64
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: fp64
    shapes: [{m: 33, n: 40, k: 520}]
""", "fp64.yaml")
    assert runner.run(suite, "cpu", tmp_path, Console(file=io.StringIO()), isolate="none") == 0
    by = {r["backend"]: r for r in read_rows(tmp_path / "results.csv")}
    assert by["torch"]["status"] == "ok" and by["torch"]["dtype"] == "fp64"
    assert float(by["torch"]["tflops"]) > 0 and by["torch"]["mfu"] == ""  # a CPU has no datasheet peak
    assert by["triton"]["status"] == "skipped" and "torch.float64 is not supported" in by["triton"]["reason"]


def test_another_summation_order_in_fp64_passes():
    x = inputs()
    a, b = x["a"], x["b"]
    sequential = (a.unsqueeze(2) * b.unsqueeze(0)).cumsum(1)[:, -1]  # the K products added one by one
    half = P["k"] // 2
    split_k = a[:, :half] @ b[:half] + a[:, half:] @ b[half:]
    for out in (a @ b, sequential, split_k):
        assert GEMM.check(x, out, P, FP64) is None


def test_an_fp64_output_at_fp32_precision_is_a_mismatch():
    x = inputs()
    a, b = x["a"], x["b"]
    computed_in_fp32 = (a.float() @ b.float()).double()
    fp32_inputs = a.float().double() @ b.float().double()  # fp64 sums of fp32-rounded inputs
    fp32_output = (a @ b).float().double()  # an fp64 sum rounded to fp32 on the way out
    for out in (computed_in_fp32, fp32_inputs, fp32_output):
        assert "exceeds tolerance" in GEMM.check(x, out, P, FP64)
    one_off = (a @ b).clone()
    one_off[5, 7] *= 1 + 1e-11  # a single element off in its 11th digit
    assert "at [5, 7]" in GEMM.check(x, one_off, P, FP64)


def test_the_fp64_bound_is_k_long_fp64_drift_far_below_fp32():
    fp64, fp32 = tolerance(FP64, 16384), tolerance(DTYPES["fp32"], 16384)
    assert fp64.element < 2**-24 / 1e4 and fp64.norm < fp32.norm / 1e7
    assert tolerance(FP64, 16384).norm > tolerance(FP64, 256).norm  # grows like sqrt(K)
    assert tolerance(FP64, 1).norm > 0  # never zero: the output is rounded once


@pytest.mark.parametrize("reported, key, peak", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm", 67), ("NVIDIA H200", "h200-sxm", 67), ("NVIDIA H100 PCIe", "h100-pcie", 51),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb", 19.5), ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb", 19.5),
    ("NVIDIA B200", "b200", 37)])
def test_fp64_peaks_are_the_fp64_tensor_core_figures(reported, key, peak):
    spec = specs.match(reported)
    assert spec.key == key and spec.peaks_tflops["fp64"] == peak
    assert spec.peak_flops("fp64") == pytest.approx(peak * 1e12)


@pytest.mark.parametrize("key", ["l4", "l40s", "rtx-4090", "h800-sxm", "h20", "mi300x", "mi355x"])
def test_parts_without_a_sourced_fp64_figure_leave_fp64_mfu_empty(key):
    spec = specs.lookup(key)
    assert "fp64" not in spec.peaks_tflops
    row = metrics.achieved(10**12, 10**9, 1000.0, spec, FP64.peak_key)
    assert row["mfu"] is None and row["roofline_ms"] is None and row["tflops"] == pytest.approx(1.0)


def test_fp64_mfu_on_an_h200_is_over_67_and_its_clock_is_the_boost():
    h200 = specs.lookup("h200-sxm")
    row = metrics.achieved(2 * 8192**3, GEMM.bytes({"m": 8192, "n": 8192, "k": 8192}, FP64), 20.0, h200, "fp64")
    assert row["mfu"] == pytest.approx(2 * 8192**3 / 20e-3 / 67e12) and row["bound"] == "compute"
    facts = DeviceFacts(kind="cuda", name="NVIDIA H200", vendor="nvidia", compute_capability=(9, 0),
                        sm_count=132, max_sm_clock_mhz=1980)
    # FP64 tensor cores run at the max boost (unlike bf16's 1830 MHz): 67e12 / (132 x 256) = 1983 MHz
    assert metrics.peak_clock_mhz(h200, facts, "fp64") == pytest.approx(1983, abs=1)
    assert metrics.clock_headroom(h200, facts, "fp64") == 1.0


def test_fp64_plan_rows_use_the_fp64_peak():
    suite = config.parse("""
suite: plan-fp64
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: fp64
    shapes: [{m: 8192, n: 8192, k: 8192}, {m: 1, n: 8192, k: 8192}]
""", "plan.yaml")
    rows = {(r["backend"], r["m"]): r for r in plan.plan(suite, specs.lookup("h100-sxm"))}
    assert {r["status"] for r in rows.values()} == {"planned"} and len(rows) == 4
    big, gemv = rows[("torch", 8192)], rows[("torch", 1)]
    assert big["roofline_ms"] == pytest.approx(2 * 8192**3 / 67e12 * 1e3) and big["bound"] == "compute"
    assert big["memory_gib"] > 3 * 8192**2 * 8 / 2**30  # A, B and C in fp64
    assert gemv["bound"] == "memory" and gemv["roofline_ms"] == pytest.approx((8192 + 8192**2 + 8192) * 8 / 3.35e12 * 1e3)
    unpeaked = plan.plan(suite, specs.lookup("l4"))
    assert all(r["roofline_ms"] is None for r in unpeaked)  # no fp64 figure: no roofline, nothing invented


def test_the_ceilings_sweep_measures_fp64_small_shapes_first_within_its_share(monkeypatch):
    assert sweep.MATMUL_DTYPES["cuda"][-1] == "fp64"  # last: a sweep cut short loses it first
    monkeypatch.setitem(sweep.SEEDS, "cpu", [(512, 512, 512), (256, 512, 256), (256, 256, 256)])
    timer = sweep.Timer("cpu", sweep.SETTINGS, None)
    timer.measure(lambda: None)  # the timing path's one-time start-up, which measure() pays up front
    result = sweep._matmul("cpu", DeviceFacts(kind="cpu", name="cpu"), "fp64", timer, None, 1.0, lambda line: None)
    assert result["tried"]["torch"][0].startswith("256x256x256:")  # the smallest seed, not the first listed
    assert result["tflops"] > 0 and result["elapsed_s"] < 1.0 * 1.5


def test_a_shape_that_would_overrun_the_share_is_passed_over():
    best = {"tflops": 1.0}  # 1 TFLOPS: 8192^3 takes 1.1 s a call
    assert not sweep._fits((8192, 8192, 8192), best, left_s=5.0)
    assert sweep._fits((1024, 1024, 1024), best, left_s=5.0)
    assert sweep._fits((8192, 8192, 8192), None, left_s=0.1)  # no rate yet: nothing to judge by
