"""A distributed run on the CPU (gloo): `mfu run --nproc N` starts torchrun, every rank runs every case
at once, rank 0 writes one run directory with a row per rank, a slow rank is called a straggler, and a
rank that raises, hangs or dies costs that case only, without hanging the others. Also the parts:
torchrun's environment, the store-based agreement between ranks, and what rank 0 records."""

import json
import os
import threading
import time

import pytest
import torch.distributed as dist
from conftest import QUICK, mfu, rows, suite_file

from harness.distributed import group, reasons
from harness.distributed.launch import Launch, World
from harness.measure import faults
from harness.measure.timing import Timer, TimingSettings

PAIR = f"""
suite: pair
{QUICK}
cases:
  - workload: gemm
    backends: [torch]
    dtype: fp32
    m: [16, 32, 48]
    n: 16
    k: 16
"""


def run_ranks(tmp_path, nproc: int, env=None, *args):
    out = tmp_path / "run"
    result = mfu("run", suite_file(tmp_path, PAIR), "--nproc", nproc, "--out", out, *args, env=env)
    return result, out


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_nproc_2_writes_one_run_with_a_row_per_rank_and_the_ranks_it_ran_on(tmp_path):
    result, out = run_ranks(tmp_path, 2)
    assert result.returncode == 0, result.stderr
    found = rows(out / "results.csv")
    assert [(r["case_id"].split(":")[2], r["rank"], r["status"]) for r in found] == [
        (f"m={m},n=16,k=16", str(rank), "ok") for m in (16, 32, 48) for rank in (0, 1)]
    assert {r["world_size"] for r in found} == {"2"} and {r["local_rank"] for r in found} == {"0", "1"}
    assert all(float(r["time_ms"]) > 0 and r["host"] for r in found)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and [r["rank"] for r in meta["ranks"]] == [0, 1]
    assert all(r["device"]["kind"] == "cpu" for r in meta["ranks"])
    assert (out / "worker.log").is_file() and (out / "worker.rank1.log").is_file()
    assert "ranks" in (out / "summary.md").read_text()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_three_ranks_and_a_slow_one_is_named_a_straggler(tmp_path):
    result, out = run_ranks(tmp_path, 3, {faults.VARIABLE: "m=32.=slow@2"})
    assert result.returncode == 0, result.stderr
    slow = [r for r in rows(out / "results.csv") if "m=32," in r["case_id"]]
    assert [r["rank"] for r in slow] == ["0", "1", "2"]
    assert [r["straggler"] for r in slow] == ["False", "False", "True"]
    assert float(slow[2]["vs_median"]) > 1  # 2 ms more on a call of microseconds
    assert "straggler: rank 2" in result.stdout
    # (The other cases are not checked: three ranks on CI's two cores differ by more than 5% by chance.)


@pytest.mark.slow
def test_failing_ranks_give_error_rows_naming_them_and_the_run_goes_on(tmp_path):
    suite = suite_file(tmp_path, PAIR.replace("m: [16, 32, 48]", "m: [16, 32, 48, 64]"))
    faults_on_rank_1 = "m=16.=raise@1;m=32.=abort@1;m=48.=hang@1"
    started = time.monotonic()
    result = mfu("run", suite, "--nproc", 2, "--out", tmp_path / "run", "--case-timeout", 15,
                 env={faults.VARIABLE: faults_on_rank_1})
    assert time.monotonic() - started < 150  # nobody waits out a 600 s default
    assert result.returncode == 1, result.stderr  # cases failed; the run finished
    found = {(r["case_id"].split(":")[2].split(",")[0], r["rank"]): r for r in rows(tmp_path / "run" / "results.csv")}
    for m, own in (("m=16", "fault injected"), ("m=32", "SIGABRT"), ("m=48", "no result after 15 s")):
        assert found[(m, "0")]["status"] == found[(m, "1")]["status"] == "error"
        assert "rank 1" in found[(m, "0")]["reason"]  # rank 0 was fine: its row names the rank that was not
        assert own in found[(m, "1")]["reason"]
    assert found[("m=64", "0")]["status"] == found[("m=64", "1")]["status"] == "ok"  # the group goes on


def test_nproc_under_torchrun_and_isolate_none_under_torchrun_are_usage_errors(tmp_path):
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    result = mfu("run", suite_file(tmp_path, PAIR), "--nproc", "2", env=env)
    assert result.returncode == 2 and "--nproc starts torchrun itself" in result.stderr
    result = mfu("run", suite_file(tmp_path, PAIR), "--isolate", "none", env=env)
    assert result.returncode == 2 and "--isolate none" in result.stderr
    result = mfu("run", suite_file(tmp_path, PAIR), "--straggler-threshold", "5")
    assert result.returncode == 2 and "fraction between 0 and 1" in result.stderr


# ------------------------------------------------------------------------------ the parts


def test_launch_reads_torchrun_environment():
    assert Launch.from_environment({}) is None
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "node-a", "MASTER_PORT": "29500"}
    launch = Launch.from_environment(env)
    assert (launch.rank, launch.local_rank, launch.master_port) == (5, 1, 29500)
    assert launch.world == World(8, 4) and launch.world.nodes == 2 and launch.world.crosses_nodes
    assert not World(8, 8).crosses_nodes
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        Launch.from_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "1"})


def test_nproc_is_taken_out_of_the_command_line_the_ranks_run():
    from harness.cli import _without_nproc

    assert _without_nproc(["run", "s.yaml", "--nproc", "4", "--out", "d"]) == ["run", "s.yaml", "--out", "d"]
    assert _without_nproc(["run", "--nproc=4", "s.yaml"]) == ["run", "s.yaml"]


def test_faults_can_target_one_rank(monkeypatch):
    monkeypatch.setenv(faults.VARIABLE, "m=8=raise@1")
    monkeypatch.setenv("RANK", "0")
    faults.inject("gemm:fp32:m=8", "cpu")  # not this rank
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="fault injected"):
        faults.inject("gemm:fp32:m=8", "cpu")


def _ranks(n: int, store=None, limit_s: float = 5.0) -> list[group.Ranks]:
    store = store or dist.HashStore()
    out = [group.Ranks(store, r, World(n, n), "cpu") for r in range(n)]
    for ranks in out:
        ranks.start_case(limit_s)
    return out


def _each(ranks, work):
    """work(ranks) on a thread per rank; the results (or exceptions) in rank order."""
    results = [None] * len(ranks)

    def one(i):
        try:
            results[i] = work(ranks[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ranks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_ranks_exchange_their_values_in_rank_order():
    got = _each(_ranks(3), lambda r: r.exchange("a test", {"rank": r.rank}))
    assert got == [[{"rank": 0}, {"rank": 1}, {"rank": 2}]] * 3
    assert _each(_ranks(2), lambda r: r.agree_max("x", r.rank * 10)) == [10, 10]


def test_a_rank_that_never_comes_is_named_at_the_deadline_and_the_group_is_broken():
    ranks = _ranks(3, limit_s=1.5)
    started = time.monotonic()
    got = _each(ranks[:2], lambda r: r.exchange("the check before timing", "ready"))  # rank 2 never comes
    assert 1.4 < time.monotonic() - started < 10
    assert all(isinstance(e, group.RanksMissing) and e.missing == [2] for e in got)
    assert "rank 2 did not reach the check before timing" in str(got[0])
    assert reasons.MISSING == type(got[0]).__name__  # a row's reason starts with the class name
    assert ranks[0].broken and reasons.blames_another_rank(f"RanksMissing: {got[0]}")


def test_a_rank_marked_gone_stops_the_wait_at_once():
    store = dist.HashStore()
    ranks = _ranks(2, store, limit_s=60)
    store.set(f"{group.GONE}1", "1")  # what mark_gone writes, in the agree store
    started = time.monotonic()
    with pytest.raises(group.RanksMissing, match="its worker is gone"):
        ranks[0].exchange("the warm-up", 1)
    assert time.monotonic() - started < 5


def test_the_timer_makes_ranks_of_different_speeds_take_as_many_samples():
    settings = TimingSettings(warmup_ms=5, min_samples=3, max_time_s=0.3, rel_ci=0.01, l2_flush=False)
    timer = Timer("cpu", settings, None)
    calls = [0, 0]

    def work(ranks):
        def fn():
            calls[ranks.rank] += 1
            time.sleep(0.0002 if ranks.rank == 0 else 0.002)  # rank 1 ten times slower

        return len(timer.measure(fn, ranks).samples_ms)

    counts = _each(_ranks(2), work)
    assert counts[0] == counts[1] and counts[0] >= 3
    assert calls[0] == calls[1]  # warm-up included: a collective would be called equally often


def test_rank_zero_records_every_rank_of_a_single_gpu_case_and_one_row_of_a_collective():
    from harness.measure.config import Case
    from harness.measure.runner import _recorded

    def row(rank, status="ok", ms=1.0, reason=None):
        return {"case_id": "x", "rank": rank, "status": status, "time_ms": ms, "reason": reason}

    gemm = Case("gemm", "torch", "fp32", (("m", 1), ("n", 1), ("k", 1)))
    gathered = [(row(0), [1.0]), (row(1, ms=2.0), [2.0])]
    assert _recorded(gemm, gathered) == gathered

    class Collective:
        collective = True

    import harness.workloads as workloads

    workloads.REGISTRY["_collective_test"] = Collective()
    try:
        coll = Case("_collective_test", "torch", "fp32", ())
        assert _recorded(coll, gathered) == [(row(1, ms=2.0), [2.0])]  # timed by its slowest rank
        failed = [(row(0, "error", None, f"{reasons.NOT_TIMED} 1 was error (boom)"), []),
                  (row(1, "error", None, "RuntimeError: boom"), [])]
        [(kept, _)] = _recorded(coll, failed)
        assert kept["rank"] == 1 and kept["reason"] == "rank 1: RuntimeError: boom"
    finally:
        del workloads.REGISTRY["_collective_test"]


def test_rows_and_samples_of_ranks_are_kept_apart(tmp_path):
    from harness.store.results import RunDir, is_run_file

    run = RunDir(tmp_path)
    for rank in (0, 1):
        run.append({"case_id": "x", "status": "ok", "rank": rank})
        run.append_samples("x", [1.0 + rank], None, rank)
    assert [r["rank"] for r in run.rows()] == [0, 1]
    assert run.samples(by_rank=True) == {("x", 0): [1.0], ("x", 1): [2.0]}
    assert run.samples() == {"x": [1.0, 2.0]}
    assert is_run_file("worker.rank3.log") and not is_run_file("worker.rankx.log")


def test_a_single_process_run_has_its_placement_on_every_row(tmp_path):
    result = mfu("run", suite_file(tmp_path, PAIR), "--out", tmp_path / "one")
    assert result.returncode == 0, result.stderr
    found = rows(tmp_path / "one" / "results.csv")
    assert {(r["rank"], r["local_rank"], r["world_size"]) for r in found} == {("0", "0", "1")}
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["world_size"] == 1
    assert os.environ.get("RANK") is None


def _two_rank_run(path, slow_rank_ms: float):
    """A run directory of 2 ranks and one gemm case, as rank 0 writes it."""
    from harness.store.results import RunDir

    run = RunDir(path)
    run.write_meta({"suite": "pair", "started": str(path), "device": {"name": "GPU"}, "world_size": 2})
    for rank, ms in ((0, 1.0), (1, slow_rank_ms)):
        run.append({"case_id": "gemm:fp32:m=8,n=8,k=8:torch", "workload": "gemm", "backend": "torch",
                    "dtype": "fp32", "m": 8, "n": 8, "k": 8, "status": "ok", "time_ms": ms, "tflops": 1 / ms,
                    "rank": rank, "local_rank": rank, "host": "a", "world_size": 2})
        run.append_samples("gemm:fp32:m=8,n=8,k=8:torch", [ms] * 20, None, rank)
    return path


def test_compare_and_history_read_distributed_runs_pooled_per_case_or_rank_by_rank(tmp_path):
    a = _two_rank_run(tmp_path / "a", 1.0)
    b = _two_rank_run(tmp_path / "b", 2.0)  # rank 1 twice as slow in B, rank 0 the same
    pooled = mfu("compare", a, b, "--format", "json")
    assert pooled.returncode == 0, pooled.stderr
    [record] = json.loads(pooled.stdout)["cases"]
    assert (record["time_ms_ref"], record["time_ms_run"]) == (1.0, 1.5)  # the median over the 2 ranks
    per_rank = mfu("compare", a, b, "--by", "rank", "--format", "md")
    assert per_rank.returncode == 0, per_rank.stderr
    assert "rank 0: gemm" in per_rank.stdout and "rank 1: gemm" in per_rank.stdout
    rank1 = per_rank.stdout.split("rank 1: gemm")[1]
    assert "slower" in rank1 and "slower" not in per_rank.stdout.split("rank 1: gemm")[0].split("rank 0: gemm")[1]
    history = mfu("history", a, b, "--ranks", "rank", "--format", "md", "--plot", tmp_path / "h.png")
    assert history.returncode == 0, history.stderr
    assert "GPU rank 0" in history.stdout and "GPU rank 1" in history.stdout
