"""Run directories that never mix, drop or lose results, as a user meets them on the command line:
an --out that holds something, two runs on one directory, a resume of another suite, a line cut
short by a crash, outputs that cannot be written, and damaged results read back."""

import os
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, mfu, rows, suite_file

from harness import cli
from harness.store import results, runs
from harness.errors import UsageError
from harness.store.results import RunDir
from harness.store.rundir_lock import LOCK_NAME

# 12 cases, each taking max_time_s: long enough to meet the run while it is going.
SLOW = (TINY.replace("max_time_s: 0.05, rel_ci: 0.5", "max_time_s: 2.0, rel_ci: 0.000001")
        .replace("dtype: [fp32, bf16]", "dtype: [fp32, bf16, fp16]")
        .replace("shapes: [{m: 64, n: 32, k: 16}, {m: 8, n: 8, k: 8}]",
                 "shapes: [{m: 64, n: 32, k: 16}, {m: 8, n: 8, k: 8}, {m: 16, n: 16, k: 16}, {m: 32, n: 8, k: 8}]"))


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error of a refused command: exit 2, one line on stderr, no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of TINY (4 cases); tests copy it, never change it."""
    base = tmp_path_factory.mktemp("finished")
    r = mfu("run", suite_file(base, TINY, "tiny"), "--out", base / "run")
    assert r.returncode == 0, r.stderr
    return base / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# ------------------------------------------------------------------------------ existing output


@pytest.mark.slow
def test_run_into_a_directory_holding_a_run_is_refused_and_changes_nothing(run, tiny):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
    message = one_line_error(mfu("run", tiny, "--out", run))
    assert message == (f"mfu: {run} already holds a run: continue it with --resume {run}, choose another "
                       f"--out, or give --force to delete that run's files and start over")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME} == before


@pytest.mark.slow
def test_run_into_a_directory_with_other_files_is_refused(tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    message = one_line_error(mfu("run", tiny, "--out", out))
    assert message == (f"mfu: {out} is not empty (notes.txt): choose another --out, or give --force "
                       f"to write the run beside these files")
    assert [p.name for p in out.iterdir() if p.name != LOCK_NAME] == ["notes.txt"]


@pytest.mark.slow
def test_force_starts_over_deleting_only_the_previous_runs_files(run, tiny):
    (run / "notes.txt").write_text("keep me")
    (run / "cases.jsonl").write_text((run / "cases.jsonl").read_text() + '{"case_id": "old:case", "status": "ok"}\n')
    r = mfu("run", tiny, "--out", run, "--force")
    assert r.returncode == 0, r.stderr
    assert f"--force: deleted the previous run's files in {run}: cases.jsonl, meta.json" in r.stdout
    assert "--force: kept 1 other file there: notes.txt" in r.stdout
    assert (run / "notes.txt").read_text() == "keep me"
    lines = (run / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "old:case" not in "".join(lines)  # measured once, nothing appended
    assert len(rows(run / "results.csv")) == 4


@pytest.mark.slow
def test_force_and_resume_together_are_refused(run):
    assert "give one of them" in one_line_error(mfu("run", "--resume", run, "--force"))


@pytest.mark.slow
def test_plan_out_never_replaces_a_runs_results(run, tiny):
    before = (run / "results.csv").read_bytes()
    assert "holds a run: plan --out would replace its results.csv" in one_line_error(mfu("plan", tiny, "--out", run))
    assert (run / "results.csv").read_bytes() == before


# ------------------------------------------------------------------------------ one run at a time


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_is_refused_and_a_crash_releases_the_lock(tmp_path):
    slow = suite_file(tmp_path, SLOW, "slow")
    out = tmp_path / "run"
    # Every case after the first (fp32) hangs: the first run surely outlives the others' attempts.
    first = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(slow), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "MFU_INJECT_FAULT": "bf16|fp16=hang"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text()):
            time.sleep(0.1)
        assert (out / LOCK_NAME).read_text().strip() == str(first.pid)
        others = [subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                  for args in (["run", slow, "--out", out], ["run", "--resume", out],
                               ["run", slow, "--out", out, "--force"])]
        for proc in others:
            stdout, stderr = proc.communicate(timeout=300)
            message = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
            assert message == (f"mfu: {out} is in use by pid {first.pid} (an mfu run writing it): wait for it "
                               f"to end, or choose another --out")
        assert first.poll() is None, "the first run ended before the others were refused"
        while time.time() < deadline and not (out / "cases.jsonl").exists():  # its worker has started
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the kernel lets go of the lock
        first.communicate(timeout=60)
    # The lock is free again: a resume (of the suite's last case only, to keep this test short) runs.
    r = mfu("run", "--resume", out, "--only", "fp16:m=32,n=8,k=8")
    assert r.returncode == 0, r.stderr
    measured = [json.loads(line)["case_id"] for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(measured) == len(set(measured)), "no case measured twice"
    assert measured[-1] == "gemm:fp16:m=32,n=8,k=8:torch" and len(measured) < 12


# ------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_of_another_suite_is_refused_and_says_what_differs(run, tmp_path):
    other = suite_file(tmp_path, TINY.replace("max_time_s: 0.05", "max_time_s: 0.1").replace("[fp32, bf16]", "[fp32, fp16]"),
                       "other")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
    message = one_line_error(mfu("run", other, "--resume", run))
    assert message == (f"mfu: {run} holds a run of another suite (2 cases added (e.g. gemm:fp16:m=64,n=32,k=16:torch); "
                       f"2 cases removed (e.g. gemm:bf16:m=64,n=32,k=16:torch); timing changed: max_time_s 0.05 -> 0.1): "
                       f"resume it without a suite file, or start this suite with another --out")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME} == before


@pytest.mark.slow
def test_resume_with_the_same_suite_rewritten_is_accepted(run, tmp_path):
    same = suite_file(tmp_path, "# the same cases and timing, written differently\n"
                      + TINY.replace("suite: tiny", "suite: renamed").replace("dtype: [fp32, bf16]", "dtype: [bf16, fp32]"),
                      "same")
    r = mfu("run", same, "--resume", run)
    assert r.returncode == 0, r.stderr
    assert "4 done, 0 to run" in r.stdout and len(rows(run / "results.csv")) == 4


@pytest.mark.slow
def test_resume_after_a_line_cut_short_recovers_every_row(run):
    full = rows(run / "results.csv")
    cases = run / "cases.jsonl"
    text = cases.read_text()
    cases.write_text(text[:-40])  # a crash in the middle of writing the last case
    r = mfu("run", "--resume", run)
    assert r.returncode == 0, r.stderr
    assert (f"warning: {cases}: line 4 was cut short (a crash while writing it); set aside in "
            f"cases.jsonl.corrupt, and its case runs again") in r.stdout
    assert "3 done, 1 to run" in r.stdout
    lines = cases.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert (run / "cases.jsonl.corrupt").read_text() == text.splitlines()[-1][:-39] + "\n"
    assert [x["case_id"] for x in rows(run / "results.csv")] == [x["case_id"] for x in full]


@pytest.mark.slow
def test_a_broken_line_before_the_last_is_corruption_and_is_kept(run):
    cases = run / "cases.jsonl"
    lines = cases.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:30] + "\n"
    cases.write_text("".join(lines))
    before = cases.read_bytes()
    message = one_line_error(mfu("run", "--resume", run))
    assert message == (f"mfu: {cases}: line 2 is not valid JSON, and it is not the last line: the file is corrupt "
                       f"(kept as it is; move the run aside and run it again)")
    assert cases.read_bytes() == before and not (run / "cases.jsonl.corrupt").exists()


@pytest.mark.slow
def test_resume_on_another_device_kind_is_refused(run):
    assert "was run on cpu: resume it without --device cuda" in one_line_error(
        mfu("run", "--resume", run, "--device", "cuda"))


# ------------------------------------------------------------------------------ outputs that cannot be written


@pytest.mark.parametrize("command", [
    ["run", "{tiny}", "--out", "{blocked}/run"],
    ["plan", "{tiny}", "--out", "{blocked}/plan"],
    ["report", "{run}", "--out", "{blocked}/report"],
    ["export", "{run}", "--out", "{blocked}/x/export.json"],
    ["compare", "{run}", "--format", "csv", "--out", "{blocked}/x/compare.csv"],
    ["history", "{run}", "--format", "csv", "--plot", "{blocked}/x/history.png"],
    ["ceilings", "--device", "cpu", "--out", "{blocked}/x/ceilings.json"],
])
@pytest.mark.slow
def test_an_output_that_cannot_be_written_is_one_line_naming_the_path(command, run, tiny, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    args = [a.format(tiny=tiny, run=run, blocked=blocked) for a in command]
    message = one_line_error(mfu(*args))
    assert message.startswith(f"mfu: {blocked}") and ("Not a directory" in message or "File exists" in message)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("command", [["export", "{run}", "--out", "/dev/full"],
                                     ["compare", "{run}", "--format", "json", "--out", "/dev/full"]])
@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file(command, run):
    message = one_line_error(mfu(*[a.format(run=run) for a in command]))
    assert message == "mfu: /dev/full: No space left on device"


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_keeps_the_finished_cases_and_says_how_to_continue(tiny, tmp_path, monkeypatch, capsys):
    appended = []
    real_append = RunDir.append

    def append_then_fill(self, row):
        if len(appended) == 2:
            raise OSError(28, "No space left on device")
        appended.append(row)
        real_append(self, row)

    monkeypatch.setattr(RunDir, "append", append_then_fill)
    out = tmp_path / "run"
    assert cli.main(["run", str(tiny), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"mfu: {out}: No space left on device; the 2 finished cases are kept in {out / 'cases.jsonl'}: "
                   f"continue with --resume {out}")
    monkeypatch.setattr(RunDir, "append", real_append)
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert len(rows(out / "results.csv")) == 4


# ------------------------------------------------------------------------------ damaged results read back


COMPARE, HISTORY, REPORT = ["compare", "--format", "csv"], ["history", "--format", "csv", "--plot", "{tmp}/h.png"], \
    ["report", "--out", "{tmp}/report"]


@pytest.mark.parametrize("damage, warning, command", [  # each damage under one of the reading commands
    (lambda p: p.unlink(), None, COMPARE),
    (lambda p: p.write_text(""), "results.csv: empty; read the rows from cases.jsonl instead", HISTORY),
    (lambda p: p.write_text(p.read_text()[:-60]), "results.csv: line 5 does not match the header (cut short?)", COMPARE),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "results.csv: unreadable", REPORT),
    (lambda p: p.write_text("a,b\n1,2\n"), "results.csv: no case_id and status columns", COMPARE),
])
@pytest.mark.slow
def test_a_damaged_results_csv_is_rebuilt_from_cases_jsonl(damage, warning, command, run, tmp_path):
    damage(run / "results.csv")
    name, *options = command
    r = mfu(name, run, *[o.format(tmp=tmp_path) for o in options])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    if warning:
        assert f"mfu: warning: {run}/{warning}" in r.stderr
    if name == "compare":
        assert len([line for line in r.stdout.splitlines() if ",gemm,torch," in line]) == 4
    assert len(runs.load(run).rows) == 4  # the one reader every command goes through


def test_a_stale_results_csv_gives_way_to_the_cases_it_lacks(run):
    table = run / "results.csv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:3]))  # 2 of 4 rows
    assert len(runs.load(run).rows) == 4


@pytest.mark.slow
@pytest.mark.parametrize("command", [["compare"], ["report"], ["history"], ["export"]])
def test_a_run_with_nothing_readable_is_one_line_naming_the_file(command, run):
    (run / "results.csv").write_text("case_id,status\ngemm:x")
    (run / "cases.jsonl").write_text("")
    message = one_line_error(mfu(*command, run))
    assert message == (f"mfu: {run}/results.csv: line 2 does not match the header (cut short?), "
                       f"and cases.jsonl has no rows to rebuild it from")


@pytest.mark.slow
def test_a_run_that_finished_no_case_is_refused_rather_than_an_empty_table(run):
    (run / "results.csv").write_text("case_id,status\n")
    (run / "cases.jsonl").write_text("")
    assert one_line_error(mfu("compare", run)) == f"mfu: {run}: no finished cases (cases.jsonl holds no rows)"


@pytest.mark.slow
def test_a_damaged_meta_json_is_one_line(run):
    (run / "meta.json").write_text('{"suite": "tiny", ')
    assert one_line_error(mfu("compare", run)).startswith(f"mfu: {run}/meta.json: not valid JSON")


# ------------------------------------------------------------------------------ the files themselves


def test_an_append_after_a_cut_short_line_starts_on_a_fresh_line(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.append({"case_id": "a", "status": "ok"})
    with run_dir.cases_file.open("a") as f:
        f.write('{"case_id": "b", "sta')
    run_dir.append({"case_id": "c", "status": "ok"})
    lines = run_dir.cases_file.read_text().splitlines()
    assert lines == ['{"case_id": "a", "status": "ok"}', '{"case_id": "b", "sta', '{"case_id": "c", "status": "ok"}']
    with pytest.raises(UsageError, match="line 2 is not valid JSON, and it is not the last line"):
        run_dir.rows()  # only a resume's repair() may set a cut-short line aside, before appending


def test_readers_skip_a_last_line_being_written_and_repair_sets_it_aside(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.append({"case_id": "a", "status": "ok"})
    run_dir.append_samples("a", [1.0, 2.0])
    with run_dir.cases_file.open("a") as f:
        f.write('{"case_id": "b", "sta')
    with (run_dir.path / "samples.jsonl").open("a") as f:
        f.write('{"case_id": "b", "samp')
    assert [r["case_id"] for r in run_dir.rows()] == ["a"] and run_dir.samples() == {"a": [1.0, 2.0]}
    assert "line 2 was cut short" in run_dir.repair()
    assert run_dir.cases_file.read_text() == '{"case_id": "a", "status": "ok"}\n'
    assert (run_dir.path / "samples.jsonl.corrupt").read_text() == '{"case_id": "b", "samp\n'
    assert run_dir.repair() is None  # nothing left to repair


def test_a_last_line_complete_but_for_its_newline_is_kept(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.cases_file.write_text('{"case_id": "a", "status": "ok"}')
    assert run_dir.repair() is None
    assert run_dir.cases_file.read_text() == '{"case_id": "a", "status": "ok"}\n'


def test_whole_file_writes_leave_no_partial_file(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.write_meta({"suite": "x"})
    run_dir.write_csv([{"case_id": "a", "status": "ok"}], [])
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["meta.json", "results.csv"]
    assert results.is_run_file(".meta.json.partial") and not results.is_run_file("notes.txt")
