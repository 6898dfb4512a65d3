"""`mfu plan` for collectives: the α-β model against hand-computed times, plan rows over a planned
World (`--nproc`, `--nnodes`), and refused flag values."""

import csv
import dataclasses

import pytest
from conftest import suite_file

from harness import cli
from harness.distributed.launch import World
from harness.hardware import specs
from harness.measure import config, plan
from harness.workloads import comm_model

H100 = dataclasses.replace(specs.lookup("h100-sxm"), nvlink_gbs=450.0, network_gbs=50.0)
SUITE = """
suite: mixed
cases:
  - workload: comm
    op: [all_reduce, all_gather, send_recv]
    size: [8, 1073741824]
    dtype: bf16
    backends: [torch]
  - workload: gemm
    m: 1024
    n: 1024
    k: 1024
    dtype: bf16
    backends: [torch]
"""


def test_alpha_beta_inside_a_node_by_hand():
    # all_reduce of 1 GiB over 8 GPUs on NVLink: 6.6 us + 14 hops x 0.6 us, then 2^30 B x 7/4 at 450 GB/s
    p = comm_model.predict("all_reduce", 2**30, World(8, 8), H100)
    seconds = 15.0e-6 + 2**30 * 1.75 / 450e9
    assert p.time_ms == pytest.approx(seconds * 1e3) and p.link == "NVLink" and p.note is None
    assert p.algbw_gbps == pytest.approx(2**30 / seconds / 1e9)
    assert p.busbw_gbps == pytest.approx(2**30 * 1.75 / seconds / 1e9)  # just under 450 at 1 GiB
    # latency-bound: 8 B all_gather over 4 GPUs is 6.6 + 3 x 0.6 us, and 8 x 3/4 B on the wire
    assert comm_model.predict("all_gather", 8, World(4, 4), H100).time_ms == pytest.approx(
        (8.4e-6 + 6 / 450e9) * 1e3)
    # send_recv is one hop of the whole size, whatever the ring's length
    assert comm_model.predict("send_recv", 10**9, World(8, 8), H100).time_ms == pytest.approx(
        (7.2e-6 + 10**9 / 450e9) * 1e3)


def test_alpha_beta_across_nodes_runs_on_the_network():
    # 2 nodes x 8: every one of the 30 ring hops waits for the network (2.7 us), at 50 GB/s per GPU
    p = comm_model.predict("all_reduce", 10**9, World(16, 8), H100)
    assert p.link == "network"
    assert p.time_ms == pytest.approx((6.6e-6 + 30 * 2.7e-6 + 10**9 * 30 / 16 / 50e9) * 1e3)
    assert comm_model.predict("broadcast", 10**9, World(16, 8), H100).time_ms == pytest.approx(
        (6.6e-6 + 15 * 2.7e-6 + 10**9 / 50e9) * 1e3)


def test_no_prediction_for_one_rank_or_an_unknown_link():
    solo = comm_model.predict("all_reduce", 10**6, World(1, 1), H100)
    assert solo.time_ms is None and solo.note.startswith("a single rank measures no interconnect")
    unknown = comm_model.predict("all_reduce", 10**6, World(16, 8), dataclasses.replace(H100, network_gbs=None))
    assert unknown.time_ms is None and unknown.note == "the peak table has no network bandwidth for H100 SXM"


def test_plan_rows_predict_collectives_and_leave_kernels_to_the_roofline():
    suite = config.parse(SUITE, "mixed.yaml")
    rows = {(r["workload"], r.get("op"), r.get("size")): r for r in plan.plan(suite, H100, World(8, 8))}
    big = rows[("comm", "all_reduce", 2**30)]
    assert big["status"] == "planned" and big["world_size"] == 8
    assert big["time_ms"] == pytest.approx(comm_model.predict("all_reduce", 2**30, World(8, 8), H100).time_ms)
    assert big["busbw_gbps"] == pytest.approx(2**30 * 1.75 / (big["time_ms"] / 1e3) / 1e9)
    assert big["roofline_ms"] is None and big["bound"] is None  # no FLOP or HBM roofline for a collective
    small = rows[("comm", "all_gather", 8)]  # 8 B is 4 bf16 values: not 8 equal chunks
    assert small.get("time_ms") is None and small["reason"].startswith("a run would skip it: all_gather splits the array over 8")
    gemm = rows[("gemm", None, None)]
    assert gemm["roofline_ms"] == pytest.approx(2 * 1024**3 / 989.5e12 * 1e3) and "time_ms" not in gemm
    solo = {r.get("op"): r for r in plan.plan(suite, H100) if r.get("size") == 2**30}
    assert solo["send_recv"]["reason"] == "a run would skip it: send_recv needs at least 2 ranks: plan with --nproc 2 or more"
    assert solo["all_reduce"]["time_ms"] is None and "no interconnect" in solo["all_reduce"]["reason"]


@pytest.mark.parametrize("every", [True, False])
def test_plan_tables_show_predictions_and_the_world(every):
    suite = config.parse(SUITE, "mixed.yaml")
    rows = plan.plan(suite, H100, World(16, 8))
    shown = plan.tables(suite, rows, H100, every=every, world=World(16, 8))
    comm_table = next(t for t in shown if "comm" in t.title)
    assert "predicted ms" in comm_table.headers and "busbw GB/s" in comm_table.headers
    if every:
        assert "16 ranks on 2 nodes, over network at 50 GB/s per GPU and direction" in comm_table.notes
        assert any(n.startswith("latency: NCCL's tuning model") for n in comm_table.notes)
    else:
        assert shown[0].headers[-1] == "predicted ms"


def test_mfu_plan_with_nproc_and_nnodes_writes_predictions(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(specs, "lookup", lambda key: H100)
    suite = suite_file(tmp_path, SUITE)
    assert cli.main(["plan", str(suite), "--gpu", "h100-sxm", "--nproc", "8", "--nnodes", "2",
                     "--out", str(tmp_path / "plan")]) == 0
    with open(tmp_path / "plan" / "results.csv", newline="") as f:
        got = {(r["workload"], r["op"], r["size"]): r for r in csv.DictReader(f)}
    row = got[("comm", "all_reduce", str(2**30))]
    assert row["world_size"] == "16"
    assert float(row["time_ms"]) == pytest.approx(comm_model.predict("all_reduce", 2**30, World(16, 8), H100).time_ms)
    assert float(row["algbw_gbps"]) > 0 and float(row["busbw_gbps"]) > 0
    assert "16 ranks on 2 nodes" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "0"], "mfu: --nproc: must be a whole number of at least 1 (got '0')"),
    (["--nproc", "eight"], "mfu: --nproc: must be a whole number of at least 1 (got 'eight')"),
    (["--nnodes", "-2"], "mfu: --nnodes: must be a whole number of at least 1 (got '-2')"),
])
def test_bad_nproc_and_nnodes_are_one_line_and_exit_2(flags, message, tmp_path, capsys):
    suite = suite_file(tmp_path, SUITE)
    assert cli.main(["plan", str(suite), *flags]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"
