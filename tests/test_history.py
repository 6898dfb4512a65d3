"""`mfu history`: runs in order, steps where a case's level changed, and the software that changed there."""

import csv
import io
import json

import pytest
from test_compare import SOFTWARE, case_id, make_run, mfu, noisy

from harness.present import history
from harness.store import runs

STEPPED, FLAT = case_id(256), case_id(512)


@pytest.fixture
def six_runs(tmp_path):
    """Torch 2.5.1 for three nightly runs, then 2.6.0, which makes STEPPED 12% faster."""
    paths = []
    for i in range(6):
        torch = "2.5.1" if i < 3 else "2.6.0"
        paths.append(make_run(tmp_path / "results" / f"night{i}", {
            STEPPED: noisy(1.0 if i < 3 else 1 / 1.12, n=20, seed=i), FLAT: noisy(2.0, n=20, seed=10 + i)},
            software={**SOFTWARE, "torch": torch}, started=f"2026-01-{10 - i:02d}T00:00:00+00:00"))
    return paths


def test_steps_are_found_where_the_level_changed_with_the_software_change(six_runs):
    ordered = history.order(runs.find([six_runs[0].parent]), "torch")
    assert [r.software["torch"] for r in ordered] == ["2.5.1"] * 3 + ["2.6.0"] * 3
    steps = history.steps(ordered, STEPPED)
    assert [(s.at, s.changed) for s in steps] == [(3, "torch 2.5.1 → 2.6.0")]
    assert steps[0].change == pytest.approx(0.12, abs=0.02) and steps[0].evidence.startswith("U test")
    assert history.steps(ordered, FLAT) == []


def test_a_single_outlier_run_is_not_a_step(tmp_path):
    paths = [make_run(tmp_path / f"r{i}", {STEPPED: noisy(1.3 if i == 2 else 1.0, n=20, seed=i)},
                      started=f"2026-01-0{i + 1}T00:00:00+00:00") for i in range(6)]
    assert history.steps(history.order([runs.load(p) for p in paths]), STEPPED) == []


def test_ordered_by_time_by_default(six_runs):
    ordered = history.order([runs.load(p) for p in six_runs])
    assert [r.path.name for r in ordered] == [f"night{i}" for i in range(5, -1, -1)]
    assert [s.at for s in history.steps(ordered, STEPPED)] == [3]  # 2.6.0 came first in time here


def test_two_levels_either_side_of_a_return_are_two_steps(tmp_path):
    levels = [1.0, 1.0, 1.0, 0.8, 0.8, 0.8, 1.0, 1.0, 1.0]
    paths = [make_run(tmp_path / f"r{i}", {STEPPED: noisy(t, n=20, seed=i)}, started=f"2026-01-0{i + 1}T00:00:00+00:00")
             for i, t in enumerate(levels)]
    steps = history.steps(history.order([runs.load(p) for p in paths]), STEPPED)
    assert [s.at for s in steps] == [3, 6]
    assert [s.change for s in steps] == [pytest.approx(0.25, abs=0.02), pytest.approx(-0.2, abs=0.02)]


def test_cli_prints_tables_and_writes_the_plot(six_runs, tmp_path, capsys):
    plot = tmp_path / "out" / "hist.png"
    assert mfu("history", six_runs[0].parent, "--by", "torch", "--format", "markdown", "--plot", plot) == 0
    captured = capsys.readouterr()
    assert "## Steps (1)" in captured.out and "| gemm:bf16:m=256,n=256,k=256:torch | #4 | +12" in captured.out
    assert "torch 2.5.1 → 2.6.0" in captured.out and "▲" in captured.out
    assert f"plot: {plot}, {plot.with_suffix('.svg')}" in captured.err
    assert plot.read_bytes()[:4] == b"\x89PNG" and "TFLOPS relative to the case" in plot.with_suffix(".svg").read_text()


@pytest.mark.slow
def test_csv_and_json_carry_every_point_and_the_steps(six_runs, tmp_path, capsys):
    plot = tmp_path / "h.png"
    assert mfu("history", *six_runs, "--format", "csv", "--plot", plot) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12 and {r["torch"] for r in rows} == {"2.5.1", "2.6.0"}
    assert [r["run"] for r in rows if r["step_change"]] == ["4"]
    assert mfu("history", *six_runs, "--format", "json", "--plot", plot) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["case_id"], s["at"]) for s in data["steps"]] == [(STEPPED, 4)]


def test_a_directory_without_runs_is_a_usage_error(tmp_path, capsys):
    assert mfu("history", tmp_path) == 2
    assert "no run directories (with a cases.jsonl) under it" in capsys.readouterr().err


@pytest.mark.slow
def test_each_gpu_model_has_its_own_history_and_plot(tmp_path, capsys):
    b200 = {"kind": "cuda", "name": "NVIDIA B200", "uuid": "GPU-bbbb"}
    for i in range(3):
        make_run(tmp_path / "results" / f"h100-{i}", {STEPPED: noisy(1.0, n=20, seed=i)},
                 started=f"2026-01-0{2 * i + 1}T00:00:00+00:00")
        make_run(tmp_path / "results" / f"b200-{i}", {STEPPED: noisy(0.5, n=20, seed=10 + i)}, device=b200,
                 started=f"2026-01-0{2 * i + 2}T00:00:00+00:00")
    histories = history.build(runs.find([tmp_path / "results"]))
    assert [(h.device, len(h.ordered), h.found[STEPPED]) for h in histories] == [
        ("NVIDIA H100 80GB HBM3", 3, []), ("NVIDIA B200", 3, [])]
    assert mfu("history", tmp_path / "results", "--plot", tmp_path / "h.png") == 0
    out = capsys.readouterr().out
    assert "NVIDIA B200: Runs, in order" in out
    assert (tmp_path / "h-nvidia-h100-80gb-hbm3.png").exists() and (tmp_path / "h-nvidia-b200.svg").exists()
