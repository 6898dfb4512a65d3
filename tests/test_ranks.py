"""Node health from a distributed run's rows (harness/present/ranks.py): stragglers against the
case's median rank, one row per case pooled over its ranks, and the summary's ranks table.

The rows are synthetic, shaped as the runner writes them (harness/store/columns.py): a single-GPU
case has one row per rank, a collective one row timed by its slowest rank."""

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from harness.present import ranks

ROOT = Path(__file__).resolve().parent.parent
GEMM = "gemm:bf16:m=8192,n=8192,k=8192:torch"
FLOPS = 2 * 8192 ** 3


def rank_rows(times, case_id=GEMM, hosts=None, per_node=8, telemetry=None):
    """One row per rank of a single-GPU case; `times` in ms, a status string for a failed rank;
    `telemetry` maps a rank to what its row has instead."""
    world = len(times)
    wl, dtype, args, backend = case_id.split(":")
    rows = []
    for rank, t in enumerate(times):
        host = hosts[rank] if hosts else f"node-{'abcdefgh'[rank // per_node]}"
        row = {"case_id": case_id, "workload": wl, "backend": backend, "dtype": dtype,
               **{k: int(v) for k, v in (a.split("=") for a in args.split(","))},
               "rank": rank, "local_rank": rank % per_node, "host": host, "world_size": world,
               "flops": FLOPS, "reason": None}
        if isinstance(t, str):
            row.update(status=t, reason=f"rank {rank}: {t} here")
        else:
            tflops = FLOPS / t / 1e9
            row.update(status="ok", time_ms=t, samples=100 + rank, tflops=tflops, mfu=tflops / 989.5,
                       sm_clock_mhz=1980.0 - rank, power_w=600.0 + rank, temp_c=50.0 + rank, energy_j=1.0,
                       throttle="", throttled=False)
        row.update((telemetry or {}).get(rank, {}))
        rows.append(row)
    return rows


def collective_row(world=8):
    return {"case_id": "comm:bf16:op=all_reduce,size=1048576:torch", "workload": "comm", "backend": "torch",
            "dtype": "bf16", "op": "all_reduce", "size": 1048576, "status": "ok", "time_ms": 0.05,
            "rank": 5, "local_rank": 5, "host": "node-a", "world_size": world, "busbw_gbps": 300.0}


def by_rank(rows):
    return {r["rank"]: r for r in rows}


# ------------------------------------------------------------------------------ mark_stragglers


def test_an_injected_slow_rank_is_a_straggler_and_a_3_percent_one_is_not():
    times = [1.0] * 8
    times[3], times[6] = 1.072, 1.03
    marked = by_rank(ranks.mark_stragglers(rank_rows(times)))
    assert marked[3]["straggler"] is True
    assert marked[3]["vs_median"] == pytest.approx(0.072)
    assert marked[6]["straggler"] is False and marked[6]["vs_median"] == pytest.approx(0.03)
    assert [r for r, row in marked.items() if row["straggler"]] == [3]


def test_the_threshold_is_a_setting():
    times = [1.0, 1.0, 1.03, 1.0]
    assert by_rank(ranks.mark_stragglers(rank_rows(times), threshold=0.02))[2]["straggler"] is True
    assert by_rank(ranks.mark_stragglers(rank_rows(times)))[2]["straggler"] is False


def test_marking_copies_and_leaves_failed_ranks_collectives_and_single_runs_unmarked():
    rows = rank_rows([1.0, "error", 1.2]) + [collective_row()] + rank_rows([2.0], case_id="gemm:bf16:m=8,n=8,k=8:torch")
    marked = ranks.mark_stragglers(rows)
    assert all("vs_median" not in r for r in rows)  # the input is not changed
    assert "vs_median" not in marked[1] and "straggler" not in marked[1]  # the failed rank
    assert marked[2]["straggler"] is True and marked[2]["vs_median"] == pytest.approx(1.2 / 1.1 - 1)
    assert marked[3:] == rows[3:]  # one row per case: nothing to compare with


# ------------------------------------------------------------------------------ by_case


@pytest.mark.parametrize("times, slowest", [
    ([1.0, 1.25], 1),
    ([2.0, 1.0, 1.5], 0),
    ([1.0, 1.01, 0.99, 1.02, 1.0, 1.3, 0.98, 1.0], 5),
])
def test_median_spread_and_slowest_rank_for_2_3_and_8_ranks(times, slowest):
    hosts = [f"host{r % 2}" for r in range(len(times))]
    (case,) = ranks.by_case(rank_rows(times, hosts=hosts))
    median = statistics.median(times)
    assert case["time_ms"] == pytest.approx(median)
    assert case["spread"] == pytest.approx((max(times) - min(times)) / median)
    assert case["slowest_rank"] == slowest and case["slowest_host"] == hosts[slowest]
    assert case["ranks"] == len(times)
    assert case["tflops"] == pytest.approx(statistics.median(FLOPS / t / 1e9 for t in times))
    assert case["rank"] is None and case["local_rank"] is None and case["host"] is None  # two hosts


def test_two_ranks_compare_against_their_mean():
    """With two ranks the median is their mean: 10% apart is under 5% from it, 12% apart is over."""
    assert ranks.by_case(rank_rows([1.0, 1.1]))[0]["stragglers"] == ""
    assert ranks.by_case(rank_rows([1.0, 1.12]))[0]["stragglers"] == "1"


def test_a_case_row_pools_telemetry_as_the_registry_says():
    rows = rank_rows([1.0, 1.0, 1.0, 1.2], hosts=["n"] * 4,
                     telemetry={3: {"throttle": "sw_power_cap", "throttled": True, "sm_clock_mhz": 1410.0}})
    (case,) = ranks.by_case(rows)
    assert case["sm_clock_mhz"] == 1410.0  # the slowest clock
    assert case["power_w"] == pytest.approx(601.5) and case["temp_c"] == 53.0 and case["energy_j"] == 4.0
    assert case["throttle"] == "sw_power_cap" and case["throttled"] is True
    assert case["samples"] == 101  # an int column stays a value some rank had
    assert case["stragglers"] == "3" and case["host"] == "n"
    assert case["vs_median"] is None and case["straggler"] is None  # per-rank columns


def test_the_worst_status_wins_with_its_reason():
    rows = rank_rows([1.0, 1.1, "error", "skipped"])
    (case,) = ranks.by_case(rows)
    assert case["status"] == "error" and case["reason"] == "rank 2: error here"
    assert case.get("time_ms") is None  # no number next to a failed case
    assert case["ranks"] == 4 and case["slowest_rank"] == 1

    suspect = rank_rows([1.0, 0.5, 1.0])
    suspect[1].update(status="suspect", reason="above the peak")
    (case,) = ranks.by_case(suspect)
    assert case["status"] == "suspect" and case["reason"] == "above the peak"
    assert case["time_ms"] == 1.0  # the median over every timed rank


def test_by_case_leaves_collectives_and_single_process_runs_unchanged():
    single = rank_rows([1.0]) + rank_rows([2.0], case_id="gemm:bf16:m=8,n=8,k=8:torch")
    assert ranks.by_case(single) == single
    comm = [collective_row()]
    assert ranks.by_case(comm) == comm
    mixed = rank_rows([1.0, 1.5]) + comm + rank_rows([3.0, 3.0], case_id="gemm:bf16:m=8,n=8,k=8:torch")
    cases = ranks.by_case(mixed)
    assert [c["case_id"] for c in cases] == [GEMM, comm[0]["case_id"], "gemm:bf16:m=8,n=8,k=8:torch"]
    assert cases[1] == comm[0]


def test_rows_already_marked_keep_the_runs_threshold():
    marked = ranks.mark_stragglers(rank_rows([1.0, 1.0, 1.03]), threshold=0.01)
    assert ranks.by_case(marked)[0]["stragglers"] == "2"  # not re-marked at the 5% default
    assert ranks.by_case(rank_rows([1.0, 1.0, 1.03]))[0]["stragglers"] == ""


# ------------------------------------------------------------------------------ the ranks table


def test_the_ranks_table_names_the_slowest_gpu_and_each_straggler():
    times = [1.0] * 8
    times[3] = 1.072
    rows = rank_rows(times, telemetry={3: {"sm_clock_mhz": 1410.0, "power_w": 690.0, "throttle": "sw_power_cap"}})
    rows += rank_rows([2.0, 2.0], case_id="gemm:bf16:m=8,n=8,k=8:torch", hosts=["x", "y"])
    rows += [collective_row()]
    t = ranks.table(rows)
    assert t.headers == ["case", "ranks", "median ms", "slowest (host:GPU)", "spread", "stragglers"]
    assert t.rows[0] == [GEMM, "8", "1", "node-a:3 (rank 3)", "7.2%", "3"]
    assert len(t.rows) == 2  # the collective is its own slowest rank already
    assert t.notes == ["straggler: rank 3 (node-a GPU 3) is 7.2% slower than the median on " + GEMM
                       + "; SM clock 1410 MHz, 690 W, clock reasons sw_power_cap"]


def test_a_failed_case_shows_its_status_not_numbers():
    t = ranks.table(rank_rows([1.0, 1.5, "error"]))
    assert t.rows[0][2] == "error [1]" and t.notes == ["[1] rank 2: error here"]
    assert not any("straggler" in n for n in t.notes)


def test_no_ranks_table_for_a_single_process_run():
    assert ranks.table(rank_rows([1.0]) + [collective_row(world=1)]) is None
    assert not ranks.distributed(rank_rows([1.0]))
    assert ranks.distributed(rank_rows([1.0, 1.0]))


def test_the_ranks_table_reads_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            "sys.path.insert(0, 'tests')\n"
            "from test_ranks import rank_rows\n"
            "from harness.present import ranks, summary\n"
            "t = ranks.table(rank_rows([1.0, 1.0, 1.2]))\n"
            "print(t.notes[0])\n"
            "assert not [m for m in sys.modules if m.startswith(('harness.workloads', 'harness.backends'))]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("straggler: rank 2 (node-a GPU 2) is 20.0% slower")


# ------------------------------------------------------------------------------ the run's summary


GEMM_DECLARED = {"gemm": {"params": ["m", "n", "k", "label"], "baseline": "torch", "summary_columns": []}}


def summary_md(rows):
    from harness.present import summary
    from harness.store import schema

    meta = {"suite": "node", "device": {"name": "NVIDIA H200"}, "schema": schema.build(GEMM_DECLARED, {"bf16": "bf16"}, rows)}
    return summary.markdown(rows, meta)


def distributed_run():
    times = [1.0] * 8
    times[3] = 1.072
    return (rank_rows(times, telemetry={3: {"sm_clock_mhz": 1410.0, "power_w": 690.0, "throttle": "sw_power_cap"}})
            + rank_rows([0.1] * 8, case_id="gemm:bf16:m=1024,n=1024,k=1024:torch"))


def test_a_distributed_runs_summary_has_one_row_per_case_and_the_ranks_table():
    from harness.present import summary

    shown = summary.console_tables(distributed_run())
    gemm, table = shown
    assert len(gemm.rows) == 2  # one row per problem, not per rank
    assert table.title.startswith("ranks: each case on 8 GPUs")
    assert [row[0] for row in table.rows] == [GEMM, "gemm:bf16:m=1024,n=1024,k=1024:torch"]
    assert any(n.startswith("straggler: rank 3 (node-a GPU 3) is 7.2% slower") for n in table.notes)

    md = summary_md(distributed_run())
    assert "- cases: 2 (2 ok)" in md
    assert "- ranks: 8 GPUs on 1 host(s) (node-a: 8)" in md
    assert "## ranks: each case on 8 GPUs" in md
    assert f"| {GEMM} | 8 | 1 | node-a:3 (rank 3) | 7.2% | 3 |" in md
    assert ("- straggler: rank 3 (node-a GPU 3) is 7.2% slower than the median on " + GEMM
            + "; SM clock 1410 MHz, 690 W, clock reasons sw_power_cap") in md


def test_a_single_process_runs_summary_has_nothing_new():
    from harness.present import summary

    rows = rank_rows([1.0]) + rank_rows([0.1], case_id="gemm:bf16:m=1024,n=1024,k=1024:torch")
    bare = [{k: v for k, v in r.items() if k not in ("rank", "local_rank", "host", "world_size")} for r in rows]
    md = summary_md(rows)
    assert md == summary_md(bare)
    assert "ranks" not in md and "straggler" not in md
    shown = summary.console_tables(rows)
    assert [t.title for t in shown] == [t.title for t in summary.console_tables(bare)] and len(shown) == 1


def write_run(path, rows):
    from harness.store import schema
    from harness.store.results import RunDir

    run_dir = RunDir(path)
    for r in rows:
        run_dir.append(r)
    run_dir.write_meta({"suite": "node", "device": {"name": "NVIDIA H200", "kind": "cuda"},
                        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
                        "schema": schema.build(GEMM_DECLARED, {"bf16": "bf16"}, rows)})
    run_dir.write_csv(rows, ["m", "n", "k", "label"])
    return path


def test_marks_written_to_results_csv_read_back_and_the_report_shows_the_ranks_table(tmp_path):
    from harness.present import report
    from harness.store import runs

    rows = ranks.mark_stragglers(distributed_run(), threshold=0.05)
    run = runs.load(write_run(tmp_path / "run", rows))
    back = by_rank(r for r in run.rows if r["case_id"] == GEMM)
    assert back[3]["straggler"] is True and back[0]["straggler"] is False
    assert back[3]["vs_median"] == pytest.approx(0.072)
    assert [c["stragglers"] for c in ranks.by_case(run.rows)] == ["3", ""]

    report.build(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## ranks: each case on 8 GPUs" in md and "straggler: rank 3 (node-a GPU 3) is 7.2% slower" in md
    assert "- cases: 2 (2 ok)" in md
    every = md.split("## gemm: every case")[1].split("##")[0]
    assert every.count("| 8192 | 8192 | 8192 | 1 |") == 1  # one row per case, not one per rank
