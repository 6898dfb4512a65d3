"""Measured ceilings: a real (small) CPU measurement, its fairness, atomic storage per device, and
their use in runs (records raised by the cases that beat them, the launch floor)."""

import io
import json
import time

import pytest
import torch
from conftest import rows as read_rows
from rich.console import Console

from harness import backends, cli
from harness.hardware import ceilings, device, sweep
from harness.measure import config, runner
from harness.backends import Backend
from harness.hardware.device import DeviceFacts

# l2_flush on: the same cold-cache timing as real suites.
SUITE = """
suite: unit
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: true}
cases:
  - workload: gemm
    backends: [torch]
    dtype: [fp32, bf16]
    shapes: [{m: 64, n: 64, k: 64}, {m: 128, n: 128, k: 128}]
"""


@pytest.fixture(scope="module")
def measured():
    facts = device.detect("cpu")
    return facts, ceilings.measure("cpu", facts, budget_s=1.6, log=lambda line: None)


def run_suite(out, text=SUITE) -> tuple[int, dict]:
    code = runner.run(config.parse(text, "unit.yaml"), "cpu", out, Console(file=io.StringIO(), width=200))
    rows = {}
    for line in (out / "cases.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["case_id"]] = row
    return code, rows


def final_rows(out) -> dict:
    return {r["case_id"]: r for r in read_rows(out / "results.csv")}


@pytest.mark.slow
def test_cpu_ceilings_measure_matmul_memory_exp_and_launch(measured):
    _, result = measured
    assert result["budget_s"] == 1.6 and result["share_s"] == pytest.approx(0.8)
    for dtype in ("fp32", "bf16"):
        m = result["matmul"][dtype]
        assert m["tflops"] > 0 and len(m["shape"]) == 3 and m["backend"] == "torch"
        # every dtype gets its share: several shapes each, the known-good seeds first
        assert m["shapes_tried"] >= 3 and len(m["tried"]["torch"]) == m["shapes_tried"]
        assert m["tried"]["torch"][0].startswith("x".join(map(str, sweep.SEEDS["cpu"][0])))
        best_listed = max(float(line.split(": ")[1]) for line in m["tried"]["torch"])
        assert best_listed == pytest.approx(m["tflops"], rel=1e-3)
    mem = result["memory"]
    assert mem["torch-copy"]["gbps"] > 0 and mem["torch-triad"]["gbps"] > 0
    assert "skipped" in mem["triton-copy"]
    assert mem["best_gbps"] == max(mem["torch-copy"]["gbps"], mem["torch-triad"]["gbps"])
    assert mem["torch-triad"]["bytes"] == 3 * sweep.COPY_ELEMENTS["cpu"] * 4  # read + read + write
    assert result["exp"]["exp2_per_s"] > 0
    assert 0 < result["launch"]["fastest_ms"] < 1  # a 1-element add: microseconds
    assert ceilings.summary(result)["launch_ms"] == result["launch"]["fastest_ms"]


@pytest.mark.slow
def test_checks_run_off_the_clock_on_small_shapes(monkeypatch):
    """A slow check (0.9 s a call, longer than a dtype's whole share) costs the sweep no shapes."""
    checked = []
    real_check = sweep.GEMM.check

    def slow_check(inputs, out, p, dtype):
        checked.append((p["m"], p["n"], p["k"]))
        time.sleep(0.9)
        return real_check(inputs, out, p, dtype)

    monkeypatch.setattr(sweep.GEMM, "check", slow_check)
    result = sweep.measure("cpu", device.detect("cpu"), budget_s=1.6, log=lambda line: None)
    for dtype in ("fp32", "bf16"):
        assert result["matmul"][dtype]["shapes_tried"] >= 3, dtype
    assert set(checked) == set(sweep.CHECK_SHAPES)  # only the small shapes, never a timed one
    assert len(checked) == 2 * len(sweep.CHECK_SHAPES)


@pytest.mark.slow
def test_the_ceiling_is_the_best_over_torch_and_our_kernels(monkeypatch):
    """Our kernel (here a stand-in backend) is timed only at the best torch shapes; the best of all wins."""
    torch_gemm = backends.get("gemm", "torch")
    monkeypatch.setitem(backends._REGISTRY["gemm"], "ours",
                        Backend("gemm", "ours", "stand-in", torch_gemm.unsupported, torch_gemm.build))
    monkeypatch.setitem(sweep.BACKENDS, "cpu", ("torch", "ours"))
    monkeypatch.setitem(sweep.MATMUL_DTYPES, "cpu", ("fp32",))
    timer = sweep.Timer("cpu", sweep.SETTINGS, None)
    timer.measure(lambda: None)  # the timing path's one-time start-up, which measure() pays up front
    result = sweep._matmul("cpu", device.detect("cpu"), "fp32", timer, None, 1.5, lambda line: None)
    rates = {b: [(line.split(": ")[0], float(line.split(": ")[1])) for line in lines]
             for b, lines in result["tried"].items()}
    assert rates["torch"] and rates["ours"] and len(rates["ours"]) <= sweep.TRITON_SHAPES
    top_torch = {s for s, _ in sorted(rates["torch"], key=lambda x: -x[1])[:sweep.TRITON_SHAPES]}
    assert {s for s, _ in rates["ours"]} <= top_torch
    winner = max(((b, s, r) for b, rs in rates.items() for s, r in rs), key=lambda x: x[2])
    assert result["backend"] == winner[0] and "x".join(map(str, result["shape"])) == winner[1]


def test_stored_per_device_and_loaded_back(measured, tmp_path):
    facts, result = measured
    paths = ceilings.save(result, tmp_path / "copy.json")
    assert paths[0] == ceilings.path_for(facts.key) and paths[0].exists() and paths[1].exists()
    assert ceilings.load(facts) == json.loads(paths[1].read_text())
    assert ceilings.load(DeviceFacts(kind="cuda", name="x", uuid="GPU-unseen")) is None
    s = ceilings.summary(result)
    assert s["matmul_tflops"] == {"fp32": result["matmul"]["fp32"]["tflops"],
                                  "bf16": result["matmul"]["bf16"]["tflops"]}
    assert not list(paths[0].parent.glob("*.tmp"))  # no temporary file left behind


def test_a_failed_measurement_leaves_the_stored_ceilings_intact(measured, tmp_path, monkeypatch):
    facts, result = measured
    store, out = ceilings.path_for(facts.key), tmp_path / "c.json"
    ceilings.save(result, out)
    before, before_out = store.read_text(), out.read_text()

    def broken(*args, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sweep, "_memory", broken)  # dies after the matmul sweeps were measured
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0.2", "--out", str(out)]) == 1
    assert store.read_text() == before and out.read_text() == before_out

    unwritable = {**result, "matmul": {"fp32": {"tflops": object()}}}  # fails while serialising
    with pytest.raises(TypeError):
        ceilings.save(unwritable, out)
    assert store.read_text() == before and out.read_text() == before_out
    assert not list(store.parent.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_runs_report_utilization_against_stored_ceilings(measured, tmp_path):
    facts, result = measured
    ceilings.save(result)
    out = tmp_path / "run"
    code, rows = run_suite(out)
    assert code == 0  # tiny GEMMs are far below any ceiling
    assert {r["status"] for r in rows.values()} == {"ok"}
    for row in rows.values():
        assert row["mfu_ceiling"] == pytest.approx(row["tflops"] / result["matmul"][row["dtype"]]["tflops"])
        assert row["mbu_ceiling"] == pytest.approx(row["gbps"] / result["memory"]["best_gbps"])
        assert row["limit"] in ("tensor", "memory")
        assert "new_best" not in row
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ceilings"]["path"] == str(ceilings.path_for(facts.key))
    assert ceilings.load(facts) == result  # nothing beaten, nothing rewritten


@pytest.mark.slow
def test_a_case_beating_a_stored_ceiling_is_ok_and_raises_it(measured, tmp_path):
    facts, result = measured
    planted = json.loads(json.dumps(result))
    planted["matmul"]["fp32"]["tflops"] = 1e-9  # an under-measured ceiling every fp32 case beats
    ceilings.save(planted)
    out = tmp_path / "run"
    code, rows = run_suite(out)
    assert code == 0 and {r["status"] for r in rows.values()} == {"ok"}

    fp32 = {cid: r for cid, r in rows.items() if r["dtype"] == "fp32"}
    setter = max(fp32.values(), key=lambda r: r["tflops"])
    stored = ceilings.load(facts)["matmul"]["fp32"]
    assert stored["tflops"] == pytest.approx(setter["tflops"])
    assert stored["source"]["case_id"] == setter["case_id"] and stored["source"]["run"] == str(out)
    assert stored["source"]["time"] and stored["replaced"]["tflops"] == 1e-9
    assert ceilings.load(facts)["matmul"]["bf16"] == result["matmul"]["bf16"]  # untouched

    final = final_rows(out)  # the run's rows re-rated against the raised ceiling
    for cid in fp32:
        assert 0 < float(final[cid]["mfu_ceiling"]) <= 1
        assert float(final[cid]["mfu_ceiling"]) == pytest.approx(float(final[cid]["tflops"]) / stored["tflops"])
    assert float(final[setter["case_id"]]["mfu_ceiling"]) == pytest.approx(1.0)
    assert "new best fp32 matmul ceiling" in final[setter["case_id"]]["new_best"]
    assert all(float(r["mfu_ceiling"]) <= 1 for r in final.values())
    summary = (out / "summary.md").read_text()
    assert "New best" in summary and setter["case_id"] in summary
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ceilings"]["matmul_tflops"]["fp32"] == pytest.approx(stored["tflops"])


@pytest.mark.slow
def test_a_time_below_the_stored_launch_floor_is_suspect(measured, tmp_path):
    facts, result = measured
    planted = json.loads(json.dumps(result))
    planted["launch"]["fastest_ms"] = 1e3  # a 1 s "empty launch": every case is faster, so impossible
    ceilings.save(planted)
    code, rows = run_suite(tmp_path / "run")
    assert code == 1
    assert {r["status"] for r in rows.values()} == {"suspect"}
    assert all("shorter than an empty kernel launch" in r["reason"] for r in rows.values())
    assert ceilings.load(facts) == planted  # a suspect case raises nothing


def test_ceilings_command(tmp_path):
    out = tmp_path / "c.json"
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0.3", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["device"]["kind"] == "cpu" and written["budget_s"] == 0.3
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0"]) == 2


@pytest.mark.slow
def test_a_new_sweep_keeps_the_stored_records_it_does_not_reach_unless_fresh(measured, tmp_path):
    facts, result = measured
    record = json.loads(json.dumps(result))
    record["matmul"]["fp32"] = {"tflops": 1e6, "shape": [1, 1, 1], "source": {"case_id": "gemm:fp32:planted"}}
    record["matmul"]["bf16"]["tflops"] = 1e-9  # a stored ceiling the new sweep beats
    record["memory"].update(best="run", best_gbps=1e9)
    ceilings.save(record)
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0.3"]) == 0
    kept = ceilings.load(facts)
    assert kept["matmul"]["fp32"]["tflops"] == 1e6 and kept["matmul"]["fp32"]["source"]["case_id"] == "gemm:fp32:planted"
    assert kept["matmul"]["fp32"]["not_reached_by"]["tflops"] < 1e6
    assert kept["memory"]["best_gbps"] == 1e9
    assert "not_reached_by" not in kept["matmul"]["bf16"]  # beaten: the new measurement replaces it
    assert cli.main(["ceilings", "--device", "cpu", "--budget-s", "0.3", "--fresh"]) == 0
    fresh = ceilings.load(facts)
    assert fresh["matmul"]["fp32"]["tflops"] < 1e6 and fresh["memory"]["best_gbps"] < 1e9


@pytest.mark.gpu
def test_gpu_ceilings_sweep_is_fair_and_fast():
    """On a GPU: every dtype times several shapes, our kernel competes, within the budget plus setup."""
    facts = device.detect("cuda")
    started = time.perf_counter()
    result = sweep.measure("cuda", facts, budget_s=30.0, log=print)
    elapsed = time.perf_counter() - started
    for dtype, m in result["matmul"].items():
        if "skipped" not in m:
            assert m["shapes_tried"] >= 3 and m["elapsed_s"] < result["share_s"] * 1.5, (dtype, m["elapsed_s"])
    assert elapsed < 30.0 + 60.0  # checks, compilation, memory, exp and launch on top of the sweeps
    assert 0 < result["launch"]["fastest_ms"] < 0.02
    torch.cuda.empty_cache()
