"""The runner and the run directory: statuses, failure isolation, memory skips, Ctrl-C and resume.

Most tests register test doubles in this process, so they run the cases in it (isolate="none");
those that need none run them as `mfu run` does, in a worker process. tests/test_isolation.py
tests the worker's faults."""

import csv
import io
import json
from dataclasses import replace

import pytest
import torch
from conftest import rows as read_rows
from rich.console import Console

from harness import backends
from harness.store import columns
from harness.measure import config, memory, runner
from harness.hardware import specs
from harness.backends import Backend
from harness.store.results import RunDir

SUITE = """
suite: unit
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: %s
    dtype: %s
    shapes: [{m: 32, n: 16, k: 64}, {m: 16, n: 32, k: 32}]
"""


def suite(backend_list="[torch]", dtypes="fp32"):
    return config.parse(SUITE % (backend_list, dtypes), "unit.yaml")


def run(s, out, resume=False, isolate="none", repeat=1):
    return runner.run(s, "cpu", out, Console(file=io.StringIO()), resume=resume, isolate=isolate, repeat=repeat)


def read_csv(out):
    return read_rows(out / "results.csv")


def fake(name, build, unsupported=None):
    return Backend("gemm", name, "test double", unsupported or (lambda p, d, dev: None), build)


@pytest.fixture
def extra_backends(monkeypatch):
    """Register test-double backends for the duration of one test."""
    def add(*items):
        for b in items:
            monkeypatch.setitem(backends._REGISTRY["gemm"], b.name, b)
    return add


def zeros(inputs, p, dtype):
    return lambda: inputs["out"].zero_()


def explode(inputs, p, dtype):
    raise RuntimeError("kernel launch failed\nsecond line of detail")


@pytest.mark.slow
def test_every_status_and_one_failure_never_loses_the_others(tmp_path, extra_backends):
    extra_backends(fake("wrong", zeros), fake("broken", explode))
    s = suite("[broken, wrong, torch]", "[fp32, tf32]")
    assert run(s, tmp_path) == 1  # error and mismatch rows make the exit code 1
    rows = read_csv(tmp_path)
    assert len(rows) == len(s.cases) == 12
    by = {(r["backend"], r["dtype"], r["m"]): r for r in rows}
    assert by[("torch", "fp32", "32")]["status"] == "ok"
    assert by[("wrong", "fp32", "32")]["status"] == "mismatch"
    assert by[("broken", "fp32", "32")]["status"] == "error"
    assert by[("broken", "fp32", "32")]["reason"] == "RuntimeError: kernel launch failed"
    assert by[("torch", "tf32", "32")]["status"] == "skipped"
    assert "TF32" in by[("torch", "tf32", "32")]["reason"]
    for r in rows:  # formulas are filled on every row, measured or not
        assert int(r["flops"]) == 2 * int(r["m"]) * int(r["n"]) * int(r["k"])
        assert int(r["bytes"]) > 0
        assert (r["time_ms"] != "") == (r["status"] == "ok")


@pytest.mark.slow
def test_results_follow_the_contract(tmp_path):
    assert run(suite(), tmp_path, isolate="run") == 0  # rows, samples and facts cross from the worker
    with open(tmp_path / "results.csv") as f:
        header = next(csv.reader(f))
    # the results contract: this order, kept stable (new columns go at the end)
    contract = ["case_id", "workload", "backend", "dtype", "m", "n", "k", "label", "status", "reason", "flops",
                "bytes", "time_ms", "time_ms_q1", "time_ms_q3", "samples", "tflops", "gbps", "mfu", "mbu",
                "intensity", "bound", "roofline", "device", "roofline_ms", "noise", "peak_source", "mfu_ceiling",
                "mbu_ceiling", "exp_util", "limit", "sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c",
                "energy_j", "throttle", "mfu_at_clock", "peak_clock_mhz", "throttled"]
    assert header[:len(contract)] == contract
    assert header == columns.csv_order(["m", "n", "k", "label"], [dict.fromkeys(header)])
    row = read_csv(tmp_path)[0]
    assert float(row["time_ms_q1"]) <= float(row["time_ms"]) <= float(row["time_ms_q3"])
    assert int(row["samples"]) >= 3
    assert float(row["tflops"]) == pytest.approx(int(row["flops"]) / float(row["time_ms"]) / 1e9)
    assert row["mfu"] == "" and row["mbu"] == ""  # a CPU has no datasheet peak
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["device"]["kind"] == "cpu" and meta["peak"] is None
    assert meta["software"]["torch"] == torch.__version__
    assert "shapes:" in meta["suite_text"] and meta["finished"] and not meta["interrupted"]
    assert meta["isolate"] == "run" and meta["timing"]["case_timeout_s"] == 600
    assert "=== worker starting" in (tmp_path / "worker.log").read_text()
    assert "## gemm" in (tmp_path / "summary.md").read_text()
    samples = RunDir(tmp_path).samples()
    assert set(samples) == {r["case_id"] for r in read_csv(tmp_path)}
    assert all(len(v) == int(r["samples"]) for r in read_csv(tmp_path) for v in [samples[r["case_id"]]])


def test_each_case_is_on_disk_as_soon_as_it_finishes(tmp_path, extra_backends):
    seen = []

    def spy(inputs, p, dtype):
        lines = (tmp_path / "cases.jsonl").read_text().splitlines() if (tmp_path / "cases.jsonl").exists() else []
        seen.append(len(lines))
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("spy", spy))
    run(suite("[spy]"), tmp_path)
    assert seen == [0, 1]


def test_a_case_that_would_not_fit_is_skipped_before_allocating(tmp_path, monkeypatch, extra_backends):
    built = []
    extra_backends(fake("spy", lambda i, p, d: built.append(1)))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1 << 20)
    assert run(suite("[spy]"), tmp_path) == 0
    rows = read_csv(tmp_path)
    assert {r["status"] for r in rows} == {"skipped"}
    assert rows[0]["reason"].startswith("needs 0.5 GiB, 0.0 GiB host memory free")
    assert built == []


def test_a_result_above_the_peak_is_suspect(tmp_path, monkeypatch):
    tiny = replace(specs.lookup("h100-sxm"), peaks_tflops={"fp32": 1e-9})
    monkeypatch.setattr(specs, "resolve", lambda facts: tiny)
    assert run(suite(), tmp_path) == 1
    rows = read_csv(tmp_path)
    assert {r["status"] for r in rows} == {"suspect"}
    assert "above the H100 SXM datasheet peak" in rows[0]["reason"]
    summary = (tmp_path / "summary.md").read_text()
    assert "suspect" in summary and f"{float(rows[0]['tflops']):.1f} |" not in summary


def test_global_math_precision_is_restored_after_each_case(tmp_path, extra_backends):
    def sets_tf32(inputs, p, dtype):
        torch.set_float32_matmul_precision("high")
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("tf32-setter", sets_tf32))
    before = torch.get_float32_matmul_precision()
    run(suite("[tf32-setter]"), tmp_path)
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.slow
def test_interrupt_keeps_what_finished_and_resume_runs_the_rest(tmp_path, extra_backends):
    calls = []

    def interrupts_second(inputs, p, dtype):
        calls.append(p["m"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("flaky", interrupts_second))
    s = suite("[flaky]", "[fp32, bf16]")
    assert run(s, tmp_path) == runner.EXIT_INTERRUPTED
    assert len(read_csv(tmp_path)) == 1
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["interrupted"] and meta["finished"] is None
    assert "1 ok" in (tmp_path / "summary.md").read_text()

    assert run(s, tmp_path, resume=True) == 0
    rows = read_csv(tmp_path)
    assert [r["case_id"] for r in rows] == [c.case_id for c in s.cases]
    assert len(calls) == 1 + 1 + 3  # the finished case is not run again
    assert json.loads((tmp_path / "meta.json").read_text())["started"] == meta["started"]


@pytest.mark.slow
def test_resume_retries_error_rows(tmp_path, extra_backends):
    state = {"fail": True}

    def sometimes(inputs, p, dtype):
        if state["fail"]:
            raise RuntimeError("transient")
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("sometimes", sometimes))
    s = suite("[sometimes]")
    assert run(s, tmp_path) == 1
    state["fail"] = False
    assert run(s, tmp_path, resume=True) == 0
    assert {r["status"] for r in read_csv(tmp_path)} == {"ok"}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="uses the Triton interpreter, which conftest turns on only without CUDA")
def test_our_triton_kernel_runs_through_the_harness(tmp_path):
    # conftest.py turned on TRITON_INTERPRET before kernels/ was imported: tiny shapes, CPU.
    s = suite("[triton, torch]", "[fp16, fp32, int8, fp8, bf16]")
    assert run(s, tmp_path, isolate="run") == 0
    by = {(r["backend"], r["dtype"], r["m"]): r for r in read_csv(tmp_path)}
    for dtype in ("fp16", "fp32", "int8", "fp8"):
        assert by[("triton", dtype, "32")]["status"] == "ok", by[("triton", dtype, "32")]["reason"]
    assert by[("triton", "bf16", "32")]["status"] == "skipped"
    assert "interpreter" in by[("triton", "bf16", "32")]["reason"]


@pytest.mark.slow
def test_repeat_interleaves_passes_and_pools_them(tmp_path, extra_backends):
    order = []

    def spy(inputs, p, dtype):
        order.append((p["m"], str(dtype.name)))
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("spy", spy))
    s = suite("[spy]")
    assert run(s, tmp_path, repeat=3) == 0
    assert order == [(32, "fp32"), (16, "fp32")] * 3  # pass by pass, not case by case
    rows = read_csv(tmp_path)
    assert len(rows) == 2 and {r["passes"] for r in rows} == {"3"}
    per_pass = [json.loads(l) for l in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert sorted(r["pass"] for r in per_pass) == [0, 0, 1, 1, 2, 2]
    pooled = RunDir(tmp_path).samples()
    for r in rows:
        mine = [p for p in per_pass if p["case_id"] == r["case_id"]]
        assert int(r["samples"]) == len(pooled[r["case_id"]]) == sum(p["samples"] for p in mine)
        medians = [p["time_ms"] for p in mine]
        assert float(r["drift"]) == pytest.approx((max(medians) - min(medians)) / float(r["time_ms"]))
    assert json.loads((tmp_path / "meta.json").read_text())["repeat"] == 3


@pytest.mark.slow
def test_resume_of_a_repeated_run_finishes_the_missing_passes(tmp_path, extra_backends):
    calls = []

    def interrupts(inputs, p, dtype):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return lambda: torch.matmul(inputs["a"], inputs["b"], out=inputs["out"])

    extra_backends(fake("flaky", interrupts))
    s = suite("[flaky]")
    assert run(s, tmp_path, repeat=2) == runner.EXIT_INTERRUPTED
    assert run(s, tmp_path, resume=True) == 0
    assert len(calls) == 3 + 2  # two passes of two cases: two done, one interrupted, two left
    assert {r["passes"] for r in read_csv(tmp_path)} == {"2"}


@pytest.mark.slow
def test_passes_measured_in_a_worker_are_pooled_in_the_parent(tmp_path):
    assert run(suite(), tmp_path, isolate="run", repeat=2) == 0
    rows = read_csv(tmp_path)
    pooled = RunDir(tmp_path).samples()
    assert len(rows) == 2 and {r["passes"] for r in rows} == {"2"}
    for r in rows:
        assert r["status"] == "ok" and int(r["samples"]) == len(pooled[r["case_id"]]) >= 6
        assert float(r["time_ms_q1"]) <= float(r["time_ms"]) <= float(r["time_ms_q3"])
