"""Measured ceilings: a real (small) CPU measurement, storage per device, and their use in runs."""

import io
import json

import pytest
from rich.console import Console

from harness import ceilings, config, device, runner
from harness.device import DeviceFacts

# l2_flush on: with a warm cache a tiny GEMM's bytes come from cache, and beating the measured DRAM
# ceiling would rightly make it suspect.
SUITE = """
suite: unit
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: true}
cases:
  - workload: gemm
    backends: [torch]
    dtype: [fp32, bf16]
    shapes: [{m: 64, n: 64, k: 64}]
"""


@pytest.fixture(scope="module")
def measured():
    facts = device.detect("cpu")
    return facts, ceilings.measure("cpu", facts, budget_s=0.5, log=lambda line: None)


def test_cpu_ceilings_measure_matmul_memory_and_exp(measured):
    _, result = measured
    for dtype in ("fp32", "bf16"):
        m = result["matmul"][dtype]
        assert m["tflops"] > 0 and len(m["shape"]) == 3 and m["shapes_tried"] >= 1
    mem = result["memory"]
    assert mem["torch-copy"]["gbps"] > 0 and mem["torch-triad"]["gbps"] > 0
    assert "skipped" in mem["triton-copy"]
    assert mem["best_gbps"] == max(mem["torch-copy"]["gbps"], mem["torch-triad"]["gbps"])
    assert mem["torch-triad"]["bytes"] == 3 * ceilings.COPY_ELEMENTS["cpu"] * 4  # read + read + write
    assert result["exp"]["exp2_per_s"] > 0


def test_stored_per_device_and_loaded_back(measured, tmp_path):
    facts, result = measured
    paths = ceilings.save(result, tmp_path / "copy.json")
    assert paths[0] == ceilings.path_for(facts.key) and paths[0].exists() and paths[1].exists()
    assert ceilings.load(facts) == json.loads(paths[1].read_text())
    assert ceilings.load(DeviceFacts(kind="cuda", name="x", uuid="GPU-unseen")) is None
    s = ceilings.summary(result)
    assert s["matmul_tflops"] == {"fp32": result["matmul"]["fp32"]["tflops"],
                                  "bf16": result["matmul"]["bf16"]["tflops"]}


def test_runs_report_utilization_against_stored_ceilings(measured, tmp_path):
    facts, result = measured
    ceilings.save(result)
    out = tmp_path / "run"
    suite = config.parse(SUITE, "unit.yaml")
    assert runner.run(suite, "cpu", out, Console(file=io.StringIO())) == 0  # 64^3 is far below any ceiling
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert row["mfu_ceiling"] == pytest.approx(row["tflops"] / result["matmul"][row["dtype"]]["tflops"])
        assert row["mbu_ceiling"] == pytest.approx(row["gbps"] / result["memory"]["best_gbps"])
        assert row["limit"] in ("tensor", "memory")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ceilings"]["path"] == str(ceilings.path_for(facts.key))


def test_a_result_far_above_the_measured_ceiling_is_suspect(measured, tmp_path):
    facts, result = measured
    fake = json.loads(json.dumps(result))
    fake["matmul"]["fp32"]["tflops"] = 1e-9
    ceilings.save(fake)
    out = tmp_path / "run"
    assert runner.run(config.parse(SUITE, "unit.yaml"), "cpu", out, Console(file=io.StringIO())) == 1
    rows = {json.loads(l)["dtype"]: json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()}
    assert rows["fp32"]["status"] == "suspect" and "measured matmul ceiling" in rows["fp32"]["reason"]


def test_ceilings_command(tmp_path):
    from harness import cli

    out = tmp_path / "c.json"
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0.3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["device"]["kind"] == "cpu"
