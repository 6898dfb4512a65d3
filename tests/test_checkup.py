"""`mfu check`: the whole command on a CPU in a subprocess, a failing step, a step past its limit,
and the budget that rolls unused time forward."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, suite_file
from rich.console import Console

from harness import checkup, cli

STEP_NAMES = ["correctness", "ceilings", "default", "claims"]


@pytest.mark.slow
def test_check_on_a_cpu_end_to_end(tmp_path):
    out = tmp_path / "check"
    # Triton under the interpreter is the kernel tests' job: without it the Triton rows are
    # skipped with their reason, and the command stays fast enough for CI.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in STEP_NAMES:
        assert (out / f"{name}.log").stat().st_size > 0
    for run_dir in ("correctness", "default", "claims"):
        assert (out / run_dir / "results.csv").exists() and (out / run_dir / "meta.json").exists()
    assert (out / "claims" / "claims.md").exists()
    ceilings = json.loads((out / "ceilings.json").read_text())
    assert ceilings["matmul"]["fp32"]["tflops"] > 0
    assert (out / "mfu-home" / "ceilings").is_dir()  # a CPU's quick ceilings stay in the check directory
    assert not (Path(os.environ["MFU_HOME"]) / "ceilings").exists()
    report = json.loads((out / "check.json").read_text())
    assert [s["step"] for s in report["steps"]] == STEP_NAMES
    assert all(s["verdict"] == "passed" for s in report["steps"])
    assert sum(s["seconds"] for s in report["steps"]) <= took
    # The verdict table is printed last: one line per step, in order, with its key numbers.
    lines = done.stdout.splitlines()
    table = lines[[i for i, line in enumerate(lines) if "mfu check: passed" in line][-1]:]
    rows = [line for line in table if any(line.startswith(f"| {name} |") for name in STEP_NAMES)]  # markdown in a pipe
    assert [next(n for n in STEP_NAMES if r.startswith(f"| {n} |")) for r in rows] == STEP_NAMES
    assert all("passed" in r for r in rows)
    assert "ok" in rows[0] and "skipped" in rows[0] and "mismatch" not in rows[0]
    assert "TFLOPS" in rows[1] and "copy" in rows[1] and "GB/s" in rows[1]
    assert "not measurable here" in rows[3]
    assert "check passed" in done.stdout


def _fake(name, commands, read=lambda plan: ("read", True), share=1.0):
    return checkup.Step(name, share, lambda plan, limit: commands, read, f"fake {name}")


@pytest.mark.slow
def test_a_failing_step_fails_the_check(tmp_path, monkeypatch, capsys):
    broken = suite_file(tmp_path, "suite: broken\ncases:\n  - workload: gemm\n    m: 0\n", "broken")
    monkeypatch.setattr(checkup, "STEPS", [
        _fake("lists-gpus", [checkup.mfu("gpus")]),
        _fake("bad-suite", [checkup.mfu("run", str(broken), "--device", "cpu", "--out", str(tmp_path / "r"))]),
    ])
    code = cli.main(["check", "--device", "cpu", "--out", str(tmp_path / "check"), "--budget-s", "120"])
    assert code == 1
    report = json.loads((tmp_path / "check" / "check.json").read_text())
    assert [(s["step"], s["verdict"], s["exit_codes"]) for s in report["steps"]] == [
        ("lists-gpus", "passed", [0]), ("bad-suite", "failed", [2])]
    assert "must be at least 1" in (tmp_path / "check" / "bad-suite.log").read_text()
    printed = capsys.readouterr().out
    assert "mfu check: failed" in printed and "check FAILED" in printed


def test_a_bad_suite_override_is_a_usage_error(tmp_path, capsys):
    broken = suite_file(tmp_path, "suite: broken\ncases:\n  - workload: nothing\n", "broken")
    assert cli.main(["check", "--device", "cpu", "--suite", str(broken), "--out", str(tmp_path / "c")]) == 2
    assert "broken.yaml" in capsys.readouterr().err


# A child that writes a file, then waits for a signal: with `handle`, SIGINT writes what finished
# and exits 130 (as `mfu run` does); without, SIGINT is ignored and only SIGKILL stops it.
SLOW = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
(out / "started.txt").write_text("written before the limit")
if sys.argv[2] == "handle":
    def stop(*_):
        (out / "finished.txt").write_text("what finished"); sys.exit(130)
    signal.signal(signal.SIGINT, stop)
else:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode, verdict", [("handle", "partial"), ("ignore", "timed out")])
def test_a_step_past_its_limit_is_stopped_and_keeps_what_it_wrote(tmp_path, monkeypatch, mode, verdict):
    monkeypatch.setattr(checkup, "GRACE_S", 1.0)
    work = tmp_path / "check" / "slow"

    def read(plan):
        return ("kept", True) if (work / "finished.txt").exists() else None

    step = _fake("slow", [[sys.executable, "-c", SLOW, str(work), mode]], read)
    plan = checkup.Plan("cpu", tmp_path / "check")
    started = time.monotonic()
    [outcome] = checkup.check(plan, 3.0, Console(file=open(os.devnull, "w")), steps=[step])
    took = time.monotonic() - started
    assert outcome.verdict == verdict
    assert 3.0 <= outcome.seconds <= took < 3.0 + 1.0 + 5.0  # the limit, the grace, start-up slack
    assert (work / "started.txt").read_text() == "written before the limit"
    assert (work / "finished.txt").exists() == (mode == "handle")
    assert outcome.exit_codes == ([130] if mode == "handle" else [None])
    assert "ready" in (tmp_path / "check" / "slow.log").read_text()


def test_unused_time_rolls_forward():
    shares = [0.2, 0.15, 0.35, 0.3]
    assert checkup.next_limit(480, shares, []) == pytest.approx(96)
    # The first step took 36 s of its 96: the second gets its share of the 444 s left.
    assert checkup.next_limit(480, shares, [36]) == pytest.approx(444 * 0.15 / 0.8)
    assert checkup.next_limit(480, shares, [36, 50, 100]) == pytest.approx(480 - 186)  # the last takes all
    assert checkup.next_limit(100, shares, [60, 50]) == 0.0


def test_a_step_without_budget_left_is_not_run(tmp_path):
    steps = [_fake("a", [[sys.executable, "-c", "pass"]], share=1.0), _fake("b", [[sys.executable, "-c", "pass"]])]
    outcomes = checkup.check(checkup.Plan("cpu", tmp_path), 0.5, Console(file=open(os.devnull, "w")), steps=steps)
    assert [o.verdict for o in outcomes] == ["not run", "not run"]
