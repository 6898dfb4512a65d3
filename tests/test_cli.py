"""The `mfu` command end to end, as a user runs it: exit codes, files, errors without tracebacks."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY, mfu, rows, suite_file

from harness.hardware import specs


@pytest.mark.slow
def test_run_writes_a_complete_run_directory(tiny, tmp_path):
    out = tmp_path / "run"
    r = mfu("run", tiny, "--out", out)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} >= {"cases.jsonl", "results.csv", "meta.json", "summary.md"}
    assert [x["status"] for x in rows(out / "results.csv")] == ["ok"] * 4
    assert "tiny" in r.stdout and "results:" in r.stdout


@pytest.mark.slow
def test_default_run_on_a_machine_without_gpu_says_so_and_runs_the_cpu_suite(tmp_path):
    r = mfu("run", "--out", tmp_path / "run", env={"TRITON_INTERPRET": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "No CUDA GPU found: running the small CPU suite (GPU peaks do not apply)."
    statuses = {x["status"] for x in rows(tmp_path / "run" / "results.csv")}
    assert statuses == {"ok", "skipped"}


@pytest.mark.slow
def test_config_error_is_one_line_with_exit_code_2(tmp_path):
    bad = suite_file(tmp_path, "cases:\n  - workload: gemm\n    m: 8\n    n: 8\n    k: 8\n  - workload: gemm\n    heads: 3\n",
                     "bad")
    r = mfu("run", bad, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip() == f"mfu: {bad}: cases[1].heads: unknown key; allowed: workload, backends, dtype, shapes, model, m, n, k, label"
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    (b"cases:\n  - workload: gemm\n    m: 16\n    n: 8\n    m: 32\n    k: 8\n",
     "line 5: duplicate key 'm': given at line 3 and again at line 5; give each key once"),
    (b"suite: caf\xe9\ncases: [{workload: gemm, m: 1, n: 1, k: 1}]\n",
     "line 1: not UTF-8 text: byte offset 10 (0xe9) cannot be decoded; save the file as UTF-8"),
    (b"timing: {warmup_ms: .inf}\ncases: [{workload: gemm, m: 1, n: 1, k: 1}]\n",
     "timing.warmup_ms: must be a finite number (got inf)"),
    (b"timing: {max_time_s: .nan}\ncases: [{workload: gemm, m: 1, n: 1, k: 1}]\n",
     "timing.max_time_s: must be a finite number (got nan)"),
])
@pytest.mark.slow
def test_suite_input_that_would_run_wrong_or_hang_is_refused(content, message, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    r = mfu("run", bad, "--out", tmp_path / "run")
    assert r.returncode == 2 and r.stderr == f"mfu: {bad}: {message}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["run", "missing.yaml"], "missing.yaml: cannot read suite file"),
    (["run", "--device", "cuda"], "no CUDA GPU is visible"),
    (["plan", "--gpu", "h1000"], "--gpu: unknown GPU 'h1000'; valid keys:"),
    (["run", "--resume", "nowhere"], "nowhere: no such run directory"),
    (["compare", "nowhere"], "nowhere: no such run directory"),  # raised in a command module
])
@pytest.mark.slow
def test_usage_errors_exit_2_without_traceback(args, message, tmp_path):
    r = mfu(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_failed_cases_give_exit_code_1_after_all_rows_are_written(tiny, tmp_path, monkeypatch):
    from harness import backends, cli
    from harness.backends import Backend

    def explode(inputs, p, dtype):
        raise RuntimeError("boom")

    monkeypatch.setitem(backends._REGISTRY["gemm"], "broken",
                        Backend("gemm", "broken", "test double", lambda p, d, dev: None, explode))
    tiny.write_text(TINY.replace("backends: [torch]", "backends: [broken, torch]"))
    out = tmp_path / "run"
    assert cli.main(["run", str(tiny), "--out", str(out), "--isolate", "none"]) == 1  # the double is in this process
    statuses = [x["status"] for x in rows(out / "results.csv")]
    assert statuses.count("error") == 4 and statuses.count("ok") == 4


@pytest.mark.slow
def test_plan_predicts_without_running(tmp_path):
    out = tmp_path / "plan"
    r = mfu("plan", ROOT / "configs" / "gemm-square.yaml", "--gpu", "h100-sxm", "--out", out)
    assert r.returncode == 0, r.stderr
    planned = rows(out / "results.csv")
    assert {x["status"] for x in planned} == {"planned"}
    big = next(x for x in planned if x["m"] == "8192" and x["dtype"] == "bf16" and x["backend"] == "torch")
    assert float(big["roofline_ms"]) == pytest.approx(2 * 8192**3 / 989.5e12 * 1e3, rel=1e-6)
    assert big["bound"] == "compute" and big["time_ms"] == ""
    assert float(big["memory_gib"]) > 0.3
    assert "timing budget" in r.stdout


@pytest.mark.slow
def test_gpus_lists_the_table_and_detect_explains(tmp_path):
    r = mfu("gpus")
    assert r.returncode == 0
    for spec in specs.table():
        assert spec.key in r.stdout
    r = mfu("gpus", "--detect")
    assert r.returncode == 0 and "No CUDA GPU" in r.stdout


def test_gpu_entry_shows_link_figures_and_their_source():
    from harness import cli

    table = cli._gpu_entry(specs.lookup("h100-sxm"))
    figures = dict(table.rows)
    assert figures["NVLink GB/s per direction"] == "450" and figures["network GB/s per direction"] == "50"
    assert any(n.startswith("links source: https://developer.nvidia.com/") for n in table.notes)
    unlinked = cli._gpu_entry(specs.lookup("l4"))
    assert not any("GB/s per direction" in figure for figure, _ in unlinked.rows)  # unknown: not shown
    assert not any(n.startswith("links source") for n in unlinked.notes)


def test_gpus_key_json_carries_the_link_fields(capsys):
    from harness import cli
    import json

    assert cli.main(["gpus", "b200", "--format", "json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    entry = entry[0] if isinstance(entry, list) else entry
    assert (entry["nvlink_gbs"], entry["network_gbs"]) == (900, 50) and entry["links_source"].startswith("https://")


@pytest.mark.slow
def test_ctrl_c_writes_what_finished_and_exits_non_zero(tmp_path):
    three = suite_file(tmp_path, TINY.replace("dtype: [fp32, bf16]", "dtype: [fp32, bf16, fp16]"), "three")
    out = tmp_path / "run"
    # Every case after the first (fp32) hangs: the run is surely still going when Ctrl-C comes.
    stuck = {**os.environ, "MFU_INJECT_FAULT": "bf16|fp16=hang"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(three), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stuck)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the first case is on disk
        if (out / "cases.jsonl").exists() and (out / "cases.jsonl").read_text().strip():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    finished = rows(out / "results.csv")
    assert 1 <= len(finished) < 6
    r = mfu("run", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert len(rows(out / "results.csv")) == 6


@pytest.mark.slow
def test_only_narrows_the_suite_by_case_id(tiny, tmp_path):
    out = tmp_path / "run"
    r = mfu("run", tiny, "--out", out, "--only", r"bf16:m=64")
    assert r.returncode == 0, r.stderr
    assert [x["case_id"] for x in rows(out / "results.csv")] == ["gemm:bf16:m=64,n=32,k=16:torch"]
    r = mfu("run", tiny, "--out", tmp_path / "none", "--only", "fp64")
    assert r.returncode == 2 and "--only: no case_id" in r.stderr and "ids look like gemm:" in r.stderr
    r = mfu("plan", tiny, "--only", "(")
    assert r.returncode == 2 and "not a regular expression" in r.stderr
