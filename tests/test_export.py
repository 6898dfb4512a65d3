"""`mfu export --format pytest-benchmark`: JSON that `pytest-benchmark compare` reads, and that
`mfu compare` reads back with its raw samples."""

import json
import subprocess
import sys

import pytest
from test_compare import case_id, make_run, mfu, noisy

from harness.present import compare
from harness.store import runs

pytest.importorskip("pytest_benchmark")


@pytest.fixture
def two_runs(tmp_path):
    def cases(t, seed):
        return {case_id(256): noisy(t, seed=seed), case_id(256, backend="triton"): noisy(t / 2, seed=seed + 1),
                case_id(512): "skipped"}

    return (make_run(tmp_path / "a", cases(1.0, 0), meta={"timing": {"min_samples": 10, "max_time_s": 1.0}}),
            make_run(tmp_path / "b", cases(1.25, 10), started="2026-01-02T00:00:00+00:00"))


def test_export_writes_one_benchmark_per_measured_case(two_runs, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert mfu("export", "--format", "pytest-benchmark", two_runs[0], "--out", out) == 0
    assert "2 benchmarks" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(data)
    assert data["machine_info"]["mfu"]["device"]["name"] == "NVIDIA H100 80GB HBM3"
    bench = {b["name"]: b for b in data["benchmarks"]}
    torch_case = bench[case_id(256)]
    assert torch_case["group"] == "gemm:bf16:m=256,n=256,k=256" == bench[case_id(256, backend="triton")]["group"]
    assert torch_case["stats"]["rounds"] == 40 and len(torch_case["stats"]["data"]) == 40
    row = runs.load(two_runs[0]).by_case[case_id(256)]
    assert torch_case["stats"]["median"] == pytest.approx(row["time_ms"] / 1e3)
    assert torch_case["extra_info"]["tflops"] == pytest.approx(row["tflops"]) and torch_case["extra_info"]["m"] == 256
    assert torch_case["options"]["min_rounds"] == 10


def test_export_to_stdout_and_refusing_a_pytest_benchmark_file(two_runs, tmp_path, capsys):
    assert mfu("export", two_runs[0]) == 0
    text = capsys.readouterr().out
    (tmp_path / "x.json").write_text(text)
    assert len(json.loads(text)["benchmarks"]) == 2
    assert mfu("export", tmp_path / "x.json") == 2
    assert "already a pytest-benchmark file" in capsys.readouterr().err


def test_round_trip_through_pytest_benchmark_compare(two_runs, tmp_path):
    files = []
    for run, name in zip(two_runs, ("0001_a.json", "0002_b.json")):
        files.append(tmp_path / name)
        assert mfu("export", run, "--out", files[-1]) == 0
    table = tmp_path / "table"
    r = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", *map(str, files),
                        "--columns=min,median,max,rounds", f"--csv={table}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Failed to load" not in r.stdout + r.stderr
    assert r.stdout.count(case_id(256)) == 2 and r.stdout.count(case_id(256, backend="triton")) == 2
    assert "benchmark 'gemm:bf16:m=256,n=256,k=256': 4 tests" in r.stdout
    assert (tmp_path / "table.csv").read_text().count(case_id(256)) == 2


def test_mfu_compare_reads_the_exported_files_with_their_samples(two_runs, tmp_path):
    for run, name in zip(two_runs, ("a.json", "b.json")):
        assert mfu("export", run, "--out", tmp_path / name) == 0
    from_json = compare.several([runs.load(tmp_path / "a.json"), runs.load(tmp_path / "b.json")])
    from_dirs = compare.several([runs.load(p) for p in two_runs])
    assert [(r["case_id"], r["verdict"], r["evidence"]) for r in from_json.records] == \
        [(r["case_id"], r["verdict"], r["evidence"]) for r in from_dirs.records if r["status_ref"] == "ok"]
    assert {r["verdict"] for r in from_json.records} == {"slower"}
    assert from_json.records[0]["mode"] == "same-device"
    mixed = compare.several([runs.load(two_runs[0]), runs.load(tmp_path / "b.json")])
    assert mixed.missing == {"only in A, not in B": [case_id(512)]}
