"""The pytest plugin: suite cases as pytest-benchmark tests, in a pytest run of their own."""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from harness.store import runs

pytest.importorskip("pytest_benchmark")

SUITE = """
suite: tiny
timing: {warmup_ms: 0, min_samples: 6, max_time_s: 0.05, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: fp32
    shapes: [{m: 64, n: 32, k: 16}]
"""
TEST = """
def test_mfu(mfu_case, mfu_benchmark):
    row = mfu_benchmark(mfu_case)
    assert row["status"] == "ok"
"""
CASE = "gemm:fp32:m=64,n=32,k=16:torch"


def pytest_run(tmp_path, *args) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "tiny.yaml").write_text(SUITE)
    (tmp_path / "bench_mfu.py").write_text(TEST)
    installed = any(ep.value == "harness.pytest_plugin" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "harness.pytest_plugin"]
    return subprocess.run([sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-q", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "0"})  # Triton is skipped on a CPU


@pytest.mark.slow
def test_suite_cases_run_as_pytest_benchmark_tests_with_the_harness_timing(tmp_path):
    r = pytest_run(tmp_path, "bench_mfu.py", "--mfu-suite", "tiny.yaml", "--benchmark-json", "out.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    (bench,) = data["benchmarks"]
    assert bench["name"] == f"test_mfu[{CASE}]" and bench["group"] == "gemm:fp32:m=64,n=32,k=16"
    info = bench["extra_info"]
    assert info["case_id"] == CASE and info["tflops"] > 0 and info["m"] == 64 and info["backend"] == "torch"
    assert bench["stats"]["rounds"] >= 6 and bench["stats"]["iterations"] == 1
    mine = data["machine_info"]["mfu"]
    assert mine["device"]["kind"] == "cpu" and mine["software"]["torch"] and "argv" not in mine["software"]
    run = runs.load(tmp_path / "out.json")  # and `mfu compare` reads it
    assert run.by_case[CASE]["tflops"] == pytest.approx(info["tflops"])
    assert len(run.samples[CASE]) == bench["stats"]["rounds"] and run.device_name == mine["device"]["name"]


@pytest.mark.slow
def test_a_broken_suite_is_a_usage_error(tmp_path):
    r = pytest_run(tmp_path, "bench_mfu.py", "--mfu-suite", "missing.yaml")
    assert r.returncode == 4
    assert "--mfu-suite: missing.yaml: cannot read suite file" in r.stderr
