"""Runs that describe themselves and read back as DataFrames: the schema in meta.json, the one
reader (harness/store/frames.py), old runs without a schema (the committed H200 runs under results/),
readers that never import torch, and compare/history naming a change of timing settings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness.store import columns, runs
from harness.present import compare, history
from test_compare import case_id, make_run, noisy

ROOT = Path(__file__).resolve().parent.parent
OLD_FULL = ROOT / "results" / "h200-sxm-default-cuda-2026-12-04"  # results.csv and cases.jsonl
OLD_PARTIAL = ROOT / "results" / "h200-sxm-claims-lite-partial-2026-12-04"  # cases.jsonl only

# Run in a fresh interpreter where `import torch` (and triton) fails: what a reader may not need.
NO_TORCH = """
import sys
sys.modules["torch"] = None
sys.modules["triton"] = None
from harness import cli
code = cli.main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.startswith(("harness.workloads", "harness.backends", "kernels")))
assert not heavy, heavy
sys.exit(code)
"""


def no_torch(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def old_runs(tmp_path):
    """Copies of the committed runs (claims --from and report write into the run directory)."""
    for run in (OLD_FULL, OLD_PARTIAL):
        shutil.copytree(run, tmp_path / "results" / run.name)
    return tmp_path / "results" / OLD_FULL.name, tmp_path / "results" / OLD_PARTIAL.name


# ------------------------------------------------------------------------------ readers without torch


@pytest.mark.parametrize("command", [
    ["compare", "{full}"],
    ["compare", "{full}", "{partial}", "--format", "json"],
    ["history", "{dir}", "--format", "csv", "--plot", "{tmp}/h.png"],
    ["report", "{full}", "--out", "{tmp}/report"],
    ["export", "{full}", "--out", "{tmp}/x.json"],
    ["claims", "--from", "{partial}"],
])
@pytest.mark.slow
def test_readers_never_import_torch_or_the_workload_code(command, old_runs, tmp_path):
    full, partial = old_runs
    places = {"full": full, "partial": partial, "dir": full.parent, "tmp": tmp_path}
    r = no_torch(*(a.format(**places) for a in command))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_a_command_that_measures_says_it_needs_torch():
    r = no_torch("ceilings")
    assert r.returncode == 2
    assert r.stderr.strip() == "mfu: mfu ceilings needs torch, which is not installed"


def test_the_pandas_api_needs_no_torch(old_runs):
    full, _ = old_runs
    code = ("import sys; sys.modules['torch'] = None\nimport harness\n"
            "assert 'pandas' not in sys.modules  # import harness stays light\n"
            f"df = harness.load_runs([{str(full.parent)!r}])\nprint(len(df), sorted(df.run.unique()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "66"


# ------------------------------------------------------------------------------ old runs


def test_an_old_run_reads_with_an_inferred_schema_and_one_notice(capsys):
    df = harness.load_run(OLD_FULL)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and "meta.json has no column schema" in notes[0] and str(OLD_FULL) in notes[0]
    schema = df.attrs["schema"]
    assert schema["inferred"] and schema["workloads"]["gemm"]["params"] == ["m", "n", "k", "label"]
    assert schema["workloads"]["gemm"]["baseline"] == "torch"
    moe = schema["workloads"]["moe"]["params"]  # the columns its rows fill, in results.csv's order
    assert {"tokens", "experts", "top_k", "hidden", "routing"} <= set(moe) and "m" not in moe
    assert schema["units"]["tflops"] == "TFLOPS" and schema["units"]["time_ms"] == "ms"
    assert len(df) == 51 and df.attrs["meta"]["timing"]["l2_flush"] is True
    # typed: ints, floats, booleans and text, NA where empty
    assert str(df["m"].dtype) == "Int64" and df["tflops"].dtype == "float64"
    assert str(df["causal"].dtype) == "boolean" and str(df["status"].dtype) == "string"
    torch_bf16 = df[(df.case_id == "gemm:bf16:m=4096,n=4096,k=4096:torch")].iloc[0]
    assert torch_bf16["m"] == 4096 and torch_bf16["tflops"] == pytest.approx(781.1871861210561)
    assert pd.isna(torch_bf16["reason"]) and pd.isna(torch_bf16["tokens"])


def test_an_old_run_with_only_cases_jsonl_reads_too():
    run = runs.load(OLD_PARTIAL)
    assert not (OLD_PARTIAL / "results.csv").exists() and len(run.rows) == 15
    assert run.params("block")[:3] == ["phase", "batch", "seq"] and run.baseline("block") == "eager"
    assert run.frame["status"].tolist().count("ok") == sum(r["status"] == "ok" for r in run.rows)


def test_the_csv_and_the_journal_give_the_same_rows(tmp_path):
    full = tmp_path / "run"
    shutil.copytree(OLD_FULL, full)
    from_csv = runs.load(full).rows
    (full / "results.csv").unlink()
    from_journal = runs.load(full).rows
    assert [r["case_id"] for r in from_csv] == [r["case_id"] for r in from_journal]
    for a, b in zip(from_csv, from_journal):  # the same values and types; a CSV cell cannot tell "" from none
        assert {k: v for k, v in a.items() if v not in (None, "")} == {k: v for k, v in b.items() if v not in (None, "")}
        assert all(type(v) is type(b[k]) for k, v in a.items() if v not in (None, ""))


# ------------------------------------------------------------------------------ a new run's schema


def test_a_run_made_now_carries_its_schema(tmp_path):
    run = make_run(tmp_path / "a", {case_id(256): noisy(1.0), case_id(256, backend="triton"): noisy(0.9)})
    meta = json.loads((run / "meta.json").read_text())
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert [c["name"] for c in meta["schema"]["columns"]] == header
    kinds = {c["name"]: c["kind"] for c in meta["schema"]["columns"]}
    assert kinds["m"] == "param" and kinds["case_id"] == "identity" and kinds["mfu"] == "metric"
    df = harness.load_run(run)
    assert "inferred" not in df.attrs["schema"] and str(df["samples"].dtype) == "Int64"


def test_load_runs_stacks_runs_with_their_names_and_timing_settings(tmp_path):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0)})
    b = make_run(tmp_path / "b", {case_id(256): noisy(2.0)}, meta={"timing": {"l2_flush": False, "cuda_graph": True}})
    df = harness.load_runs([a, b])
    assert df["run"].tolist() == ["a", "b"] and df.columns[0] == "run"
    assert df["timing_l2_flush"].tolist()[1] is False and df["timing_cuda_graph"].tolist()[1] is True
    assert df.loc[1, "time_ms"] / df.loc[0, "time_ms"] == pytest.approx(2.0, rel=0.02)
    assert set(df.attrs["meta"]) == {"a", "b"}


# ------------------------------------------------------------------------------ timing settings


def test_compare_and_history_name_runs_timed_with_other_settings(tmp_path):
    cases = {case_id(256): noisy(1.0)}
    a = make_run(tmp_path / "a", cases, meta={"timing": {"l2_flush": True, "cuda_graph": False}})
    b = make_run(tmp_path / "b", cases, started="2026-01-02T00:00:00+00:00",
                 meta={"timing": {"l2_flush": False, "cuda_graph": False}})
    c = make_run(tmp_path / "c", cases, started="2026-01-03T00:00:00+00:00",
                 meta={"timing": {"l2_flush": True, "cuda_graph": False}})
    result = compare.several([runs.load(p) for p in (a, b, c)])
    assert result.notes == ["B was timed with other settings than A (l2_flush on → off): its times are not like "
                            "for like"]
    assert result.tables[0].notes == result.notes
    assert {r["run"]: r["settings_changed"] for r in result.records} == {"B": "l2_flush on → off", "C": ""}
    (h,) = history.build([runs.load(p) for p in (a, b, c)])
    assert len(h.notes) == 2 and h.notes[0].startswith("#2 was timed with other settings than #1 (l2_flush on → off)")
    assert "l2_flush off → on" in history.changed(h.ordered[1], h.ordered[2])


def test_same_settings_say_nothing(tmp_path):
    cases = {case_id(256): noisy(1.0)}
    a, b = (make_run(tmp_path / n, cases, meta={"timing": {"l2_flush": True}}) for n in "ab")
    assert compare.several([runs.load(a), runs.load(b)]).notes == []


# ------------------------------------------------------------------------------ the column registry


def test_passes_pool_as_the_registry_says():
    passes = [{"sm_clock_mhz": 1980, "power_w": 600, "temp_c": 60, "energy_j": 2.0, "throttle": "sw_power_cap"},
              {"sm_clock_mhz": 1700, "power_w": 700, "temp_c": 70, "energy_j": 3.0, "throttle": "sw_thermal"},
              {"sm_clock_mhz": None, "power_w": None, "mem_clock_mhz": 2619, "throttle": ""}]
    assert columns.pooled(passes, "telemetry") == {
        "sm_clock_mhz": 1700, "mem_clock_mhz": 2619, "power_w": 650, "temp_c": 70, "energy_j": 5.0,
        "throttle": "sw_power_cap,sw_thermal"}


def test_every_telemetry_column_is_registered_once():
    from harness.measure import telemetry

    names = [c.name for c in columns.COLUMNS]
    assert len(names) == len(set(names))
    assert telemetry.COLUMNS == ["sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c", "energy_j", "throttle"]
