"""`mfu compare`: backends side by side, runs matched by case_id, verdicts, formats, exit codes.

Runs here are synthetic run directories (make_run) with known sample times, so every verdict is
known in advance; the other comparison tests import make_run from this module.
"""

import csv
import io
import json
import re
import statistics

import numpy as np
import pytest

from harness import cli
from harness.present import compare
from harness.store import runs, schema
from harness.store.results import RunDir

H100 = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "driver": "570.86"}
SOFTWARE = {"torch": "2.6.0", "triton": "3.2.0", "harness": "0.1.0", "git_commit": "1111111"}


def case_id(m: int, dtype: str = "bf16", backend: str = "torch") -> str:
    return f"gemm:{dtype}:m={m},n={m},k={m}:{backend}"


def make_run(path, cases: dict, device=None, software=None, started="2026-01-01T00:00:00+00:00",
             meta=None, csv_too=True):
    """A run directory: `cases` maps case_id to a list of sample times (ms) or to a status string."""
    run_dir = RunDir(path)
    rows = []
    for cid, value in cases.items():
        wl, dtype, args, backend = cid.split(":")
        p = {k: int(v) for k, v in (a.split("=") for a in args.split(","))}
        row = {"case_id": cid, "workload": wl, "backend": backend, "dtype": dtype, **p, "label": "",
               "flops": 2 * p["m"] * p["n"] * p["k"],
               "bytes": 2 * (p["m"] * p["k"] + p["k"] * p["n"] + p["m"] * p["n"])}
        if isinstance(value, str):
            row.update(status=value, reason=f"{value} here")
        else:
            median = statistics.median(value)
            tflops = row["flops"] / median / 1e9
            row.update(status="ok", reason=None, time_ms=median, time_ms_q1=float(np.percentile(value, 25)),
                       time_ms_q3=float(np.percentile(value, 75)), samples=len(value), tflops=tflops,
                       gbps=row["bytes"] / median / 1e6, mfu=tflops / 989.5, mbu=None,
                       intensity=row["flops"] / row["bytes"])
            run_dir.append_samples(cid, list(value))
        run_dir.append(row)
        rows.append(row)
    declared = {"gemm": {"params": ["m", "n", "k", "label"], "baseline": "torch", "summary_columns": []}}
    dtypes = {r["dtype"]: r["dtype"] for r in rows}
    run_dir.write_meta({"suite": "synthetic", "device": device or H100, "software": software or SOFTWARE,
                        "started": started, "finished": started, "schema": schema.build(declared, dtypes, rows),
                        **(meta or {})})
    if csv_too:
        run_dir.write_csv(rows, ["m", "n", "k", "label"])
    return path


def noisy(median: float, n: int = 40, sigma: float = 0.01, seed: int = 0) -> list[float]:
    return list(median * np.random.default_rng(seed).lognormal(0, sigma, n))


def mfu(*args) -> int:
    return cli.main([str(a) for a in args])


# ------------------------------------------------------------------------------ one run


def test_one_run_puts_backends_side_by_side_with_speedup_over_the_workloads_baseline(tmp_path):
    run = make_run(tmp_path / "a", {case_id(256): noisy(2.0), case_id(256, backend="triton"): noisy(1.0),
                                   case_id(512): noisy(4.0), case_id(512, backend="triton"): "skipped"})
    result = compare.single(runs.load(run))
    table = result.tables[0]
    assert table.title == "gemm: throughput by backend, × = speedup over torch"
    assert table.headers[-3:] == ["torch", "triton", "×torch"]  # one row per problem, backends as columns
    first = dict(zip(table.headers, table.rows[0]))
    assert first["×torch"] == "2.00×" and first["m"] == "256" and first["unit"] == "TFLOPS"
    second = dict(zip(table.headers, table.rows[1]))
    assert second["triton"] == "skipped [1]" and second["×torch"] == ""  # the reason is note [1]
    assert table.notes[0].startswith("[1] ")
    summary = {r["backend"]: r for r in result.summary}
    assert summary["triton"]["geomean speedup"] == pytest.approx(2.0, rel=0.02)
    assert summary["torch"]["geomean speedup"] is None and summary["torch"]["cases"] == 2


def test_baseline_option_changes_the_reference_and_an_unknown_one_is_a_usage_error(tmp_path, capsys):
    run = make_run(tmp_path / "a", {case_id(256): noisy(2.0), case_id(256, backend="triton"): noisy(1.0)})
    result = compare.single(runs.load(run), baseline="triton")
    assert dict(zip(result.tables[0].headers, result.tables[0].rows[0]))["×triton"] == "0.50×"
    assert mfu("compare", run, "--baseline", "cublas") == 2
    assert "--baseline: no backend 'cublas'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ several runs


def test_runs_are_matched_by_case_id_and_missing_cases_are_listed_not_errors(tmp_path):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0), case_id(512): noisy(2.0, seed=1),
                                  case_id(1024): noisy(8.0, seed=2)})
    b = make_run(tmp_path / "b", {case_id(256): noisy(1.0, seed=3), case_id(512): noisy(2.4, seed=4),
                                  case_id(2048): noisy(60.0, seed=5)})
    result = compare.several([runs.load(a), runs.load(b)])
    verdicts = {r["case_id"]: r["verdict"] for r in result.records}
    assert verdicts == {case_id(256): "same", case_id(512): "slower", case_id(1024): "missing",
                        case_id(2048): "missing"}
    assert result.missing == {"only in A, not in B": [case_id(1024)], "only in B, not in A": [case_id(2048)]}
    slower = next(r for r in result.records if r["case_id"] == case_id(512))
    assert slower["change"] == pytest.approx(2.0 / 2.4 - 1, abs=0.01) and slower["evidence"].startswith("U test")
    notes = [t for t in result.tables if t.title.startswith("1 cases only in")]
    assert [t.notes for t in notes] == [[case_id(1024)], [case_id(2048)]]
    summary = result.summary[0]
    assert (summary["cases"], summary["slower"], summary["same"]) == (2, 1, 1)


def test_fail_on_regression_exits_1_only_when_a_case_is_slower_or_failed(tmp_path, capsys):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0), case_id(512): noisy(2.0, seed=1)})
    same = make_run(tmp_path / "same", {case_id(256): noisy(1.0, seed=2), case_id(512): noisy(2.0, seed=3)})
    slower = make_run(tmp_path / "slower", {case_id(256): noisy(1.2, seed=2), case_id(512): noisy(2.0, seed=3)})
    broken = make_run(tmp_path / "broken", {case_id(256): noisy(1.0, seed=2), case_id(512): "mismatch"})
    assert mfu("compare", a, same, "--fail-on-regression") == 0
    assert mfu("compare", a, slower) == 0
    assert mfu("compare", a, slower, "--fail-on-regression") == 1
    assert mfu("compare", a, broken, "--fail-on-regression") == 1
    out = capsys.readouterr().out
    assert "failed" in out and "1 regressions (slower or failed)" in out


def test_runs_on_different_gpus_show_ratios_of_tflops_and_mfu_without_verdicts(tmp_path):
    b200 = {"kind": "cuda", "name": "NVIDIA B200", "uuid": "GPU-bbbb"}
    a = make_run(tmp_path / "h100", {case_id(4096): noisy(0.2)})
    b = make_run(tmp_path / "b200", {case_id(4096): noisy(0.1, seed=1)}, device=b200)
    result = compare.several([runs.load(a), runs.load(b)])
    rec = result.records[0]
    assert rec["mode"] == "cross-device" and rec["verdict"] == ""
    assert rec["tflops_ratio"] == pytest.approx(2.0, rel=0.02)
    headers = result.tables[1].headers
    assert "B ×TFLOPS" in headers and "B ×MFU" in headers and "B verdict" not in headers
    assert result.summary[0]["geomean ×TFLOPS"] == pytest.approx(2.0, rel=0.02)


def test_another_card_of_the_same_model_still_gets_verdicts(tmp_path):
    other = {**H100, "uuid": "GPU-cccc"}
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0)})
    b = make_run(tmp_path / "b", {case_id(256): noisy(1.0, seed=1)}, device=other)
    result = compare.several([runs.load(a), runs.load(b)])
    assert result.records[0]["mode"] == "same-model" and result.records[0]["verdict"] == "same"


def test_three_runs_compare_each_with_the_first(tmp_path):
    paths = [make_run(tmp_path / n, {case_id(256): noisy(t, seed=i)})
             for i, (n, t) in enumerate([("a", 1.0), ("b", 0.8), ("c", 1.3)])]
    result = compare.several([runs.load(p) for p in paths])
    assert [(r["run"], r["verdict"]) for r in result.records] == [("B", "faster"), ("C", "slower")]
    assert {"B Δ", "C Δ", "B verdict", "C verdict"} <= set(result.tables[1].headers)


def test_a_case_only_in_a_later_run_is_missing_from_a_only(tmp_path):
    paths = [make_run(tmp_path / "a", {case_id(256): noisy(1.0)}),
             make_run(tmp_path / "b", {case_id(256): noisy(1.0, seed=1)}),
             make_run(tmp_path / "c", {case_id(256): noisy(1.0, seed=2), case_id(512): noisy(2.0)})]
    result = compare.several([runs.load(p) for p in paths])
    assert [(r["run"], r["case_id"], r["verdict"]) for r in result.records] == [
        ("B", case_id(256), "same"), ("C", case_id(256), "same"), ("C", case_id(512), "missing")]
    table = result.tables[1]
    row = dict(zip(table.headers, table.rows[1]))
    assert (row["A TFLOPS"], row["B TFLOPS"], row["C verdict"]) == ("missing", "", "missing")


# ------------------------------------------------------------------------------ formats and the CLI


def test_formats_carry_the_same_comparison(tmp_path, capsys):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0), case_id(512): "skipped"})
    b = make_run(tmp_path / "b", {case_id(256): noisy(1.25, seed=1), case_id(512): "skipped"})
    assert mfu("compare", a, b, "--format", "markdown") == 0
    md = capsys.readouterr().out
    assert "| m | n | k | dtype | backend | A TFLOPS | B TFLOPS | B Δ | B verdict | B evidence |" in md
    assert re.search(r"\| slower \| U test p=", md) and "1 cases skipped in every run are not shown" in md
    assert mfu("compare", a, b, "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["case_id"], r["verdict"]) for r in rows] == [(case_id(256), "slower"), (case_id(512), "")]
    out = tmp_path / "c.json"
    assert mfu("compare", a, b, "--format", "json", "--out", out) == 0
    data = json.loads(out.read_text())
    assert data["threshold"] == 0.05 and [r["tag"] for r in data["runs"]] == ["A", "B"]
    assert data["cases"][0]["verdict"] == "slower" and data["summary"][0]["slower"] == 1


def test_threshold_accepts_percent_or_fraction(tmp_path):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0)})
    b = make_run(tmp_path / "b", {case_id(256): noisy(1.1, seed=1)})
    assert mfu("compare", a, b, "--threshold", "20%", "--fail-on-regression") == 0
    assert mfu("compare", a, b, "--threshold", "0.05", "--fail-on-regression") == 1
    with pytest.raises(SystemExit) as exc:
        mfu("compare", a, b, "--threshold", "5")
    assert exc.value.code == 2


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere: no such run directory or pytest-benchmark JSON file"),
    (["{a}", "--out", "x.md"], "--out needs --format md, csv or json"),
    (["{a}", "{a}", "--baseline", "torch"], "--baseline applies to one run"),
    (["{empty}"], "not a run directory (no cases.jsonl)"),
    (["{junk}"], "not a pytest-benchmark JSON file"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message, tmp_path, capsys):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0)})
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").write_text("{}")
    paths = {"a": a, "empty": tmp_path / "empty", "junk": tmp_path / "junk"}
    assert mfu("compare", *(x.format(**paths) for x in args)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_run_still_going_is_read_from_cases_jsonl(tmp_path):
    a = make_run(tmp_path / "a", {case_id(256): noisy(1.0)}, csv_too=False)
    loaded = runs.load(a)
    assert not (a / "results.csv").exists() and loaded.by_case[case_id(256)]["status"] == "ok"
    assert len(loaded.samples[case_id(256)]) == 40
