"""Compute against communication (harness/workloads/overlap_model.py): the derived columns on
synthetic timings, the communication phase's rates, a layer's peaks over its whole group, the
plan's pipeline model by hand, and this rank's group of consecutive ranks (gloo, 4 processes)."""

import dataclasses

import pytest
import torch
import torch.distributed as dist
from conftest import on_ranks

from harness.distributed import group
from harness.distributed.launch import World
from harness.hardware import specs
from harness.measure import metrics
from harness.workloads import overlap_model

H100 = dataclasses.replace(specs.lookup("h100-sxm"), nvlink_gbs=450.0, network_gbs=50.0)


def test_the_derived_columns_on_synthetic_timings():
    # compute 6, comm 4: a perfect overlap takes 6 (hides all 4 ms), none takes 10, half hides 2
    assert overlap_model.derived(6.0, 4.0, 6.0) == {"compute_comm_ratio": 1.5, "overlap_eff": 1.0, "exposed_comm_ms": 0.0}
    assert overlap_model.derived(6.0, 4.0, 10.0)["overlap_eff"] == 0.0
    half = overlap_model.derived(6.0, 4.0, 8.0)
    assert half["overlap_eff"] == pytest.approx(0.5) and half["exposed_comm_ms"] == pytest.approx(2.0)
    # communication-bound: the shorter phase is the compute; chunking that costs more than it hides is < 0
    bound = overlap_model.derived(2.0, 8.0, 9.0)
    assert bound["compute_comm_ratio"] == 0.25 and bound["overlap_eff"] == pytest.approx(0.5)
    assert overlap_model.derived(2.0, 8.0, 11.0)["overlap_eff"] == pytest.approx(-0.5)


def test_a_missing_phase_leaves_its_derived_columns_empty_never_invented():
    compute_only = overlap_model.derived(3.0, None, None)
    assert compute_only == {"compute_comm_ratio": None, "overlap_eff": None, "exposed_comm_ms": None}
    assert overlap_model.derived(3.0, 0.0, 3.0)["compute_comm_ratio"] is None  # no division by a zero time


def test_the_communication_phase_has_nccl_tests_rates_over_the_bytes_the_rank_sends():
    ops = [("all_to_all", 3 * 10**8), ("all_to_all", 10**8)]
    cols = overlap_model.layer_columns({"overlapped": 5.0, "compute": 4.0, "comm": 2.0}, ops, World(8, 8), H100)
    assert cols["comm_bytes"] == 4 * 10**8 and cols["algbw_gbps"] == pytest.approx(200.0)
    assert cols["busbw_gbps"] == pytest.approx(200.0 * 7 / 8) and cols["link_util"] == pytest.approx(175 / 450)
    assert (cols["compute_ms"], cols["comm_ms"], cols["overlapped_ms"]) == (4.0, 2.0, 5.0)
    assert cols["compute_comm_ratio"] == 2.0 and cols["overlap_eff"] == pytest.approx(0.5)
    mixed = overlap_model.comm_rates([("all_gather", 10**8), ("reduce_scatter", 10**8)], 1.0, World(2, 2), H100)
    assert mixed["algbw_gbps"] == pytest.approx(200.0) and "busbw_gbps" not in mixed and "no single" in mixed["link_note"]


def test_one_rank_in_the_group_is_compute_only_and_says_so():
    cols = overlap_model.layer_columns({"compute": 4.0}, [("all_reduce", 10**6)], World(1, 1), H100)
    assert cols["compute_ms"] == 4.0 and cols["comm_ms"] is None and cols["overlapped_ms"] is None
    assert cols["compute_comm_ratio"] is None and "compute only" in cols["link_note"]
    assert "busbw_gbps" not in cols and "comm_bytes" not in cols


def test_a_layer_group_spans_nodes_only_when_it_does_not_fit_in_one():
    assert not overlap_model.layer_world(8, World(64, 8)).crosses_nodes
    assert overlap_model.layer_world(64, World(64, 8)).crosses_nodes
    assert overlap_model.layer_world(4, World(4, 8)) == World(4, 4)


def test_a_layer_is_measured_against_its_whole_groups_peaks():
    ceilings = {"matmul_tflops": {"bf16": 700.0}, "bandwidth_gbps": 3000.0, "exp_per_s": 3e12, "launch_ms": 0.003}
    spec, ceil = metrics.over_gpus(H100, ceilings, 8)
    assert spec.peak_flops("bf16") == pytest.approx(8 * H100.peak_flops("bf16"))
    assert spec.bandwidth_bytes == pytest.approx(8 * H100.bandwidth_bytes)
    assert ceil == {"matmul_tflops": {"bf16": 5600.0}, "bandwidth_gbps": 24000.0, "exp_per_s": 24e12, "launch_ms": 0.003}
    # 8 GPUs doing 8x the FLOPs of one in the same time have one GPU's MFU
    flops, t = 10**12, 2.0
    one = metrics.achieved(flops, 10**9, t, H100, "bf16")
    group_of_8 = metrics.achieved(8 * flops, 8 * 10**9, t, spec, "bf16", ceil)
    assert group_of_8["mfu"] == pytest.approx(one["mfu"]) and group_of_8["mbu"] == pytest.approx(one["mbu"])
    assert group_of_8["roofline_ms"] == pytest.approx(one["roofline_ms"])
    assert metrics.over_gpus(H100, ceilings, 1) == (H100, ceilings)
    assert metrics.over_gpus(H100, ceilings, None) == (None, None)  # a collective: links only
    assert metrics.over_gpus(None, None, 8) == (None, None)  # no peak: never an invented one


def test_the_plans_pipeline_by_hand():
    # all_reduce of 128 MiB over 8 GPUs on NVLink, in 4 chunks of 32 MiB: each 6.6 + 14 x 0.6 us
    # of latency plus 32 MiB x 7/4 at 450 GB/s
    size = 128 * 2**20
    one = (15.0e-6 + size * 1.75 / 450e9) * 1e3
    chunk = (15.0e-6 + size / 4 * 1.75 / 450e9) * 1e3
    whole, why = overlap_model.predicted_comm_ms([("all_reduce", size)], World(8, 8), H100)
    assert whole == pytest.approx(one) and why is None
    chunked, _ = overlap_model.predicted_comm_ms([("all_reduce", size)], World(8, 8), H100, chunks=4)
    assert chunked == pytest.approx(4 * chunk)
    # compute 2 ms against that: the first chunk's compute and the last one's communication show
    assert overlap_model.predicted_overlap_ms(2.0, chunked, 4) == pytest.approx(2.0 + 4 * chunk / 4)
    assert overlap_model.predicted_overlap_ms(0.1, 1.0, 4) == pytest.approx(1.0 + 0.1 / 4)
    none, why = overlap_model.predicted_comm_ms([("all_reduce", size)], World(1, 1), H100)
    assert none is None and "compute only" in why


def _group_of_two(rank: int, n: int) -> str:
    pair = group.subgroup(2)
    value = torch.tensor([float(rank)])
    dist.all_reduce(value, group=pair)
    return f"{dist.get_rank(pair)} {value.item():g} {group.subgroup(n) is None}"


@pytest.mark.slow
def test_a_ranks_group_is_its_run_of_consecutive_ranks(tmp_path):
    found = on_ranks(_group_of_two, 4, tmp_path)
    # ranks 0 and 1 sum to 1, ranks 2 and 3 to 5; the whole world is the default group (None)
    assert found == ["0 1 True", "1 1 True", "0 5 True", "1 5 True"]


LAYERS = """
suite: cluster
cases:
  - workload: tp-linear
    model: llama3-70b
    tokens: 8192
    tp: 8
    dtype: bf16
    backends: [torch]
  - workload: ep-moe
    model: [deepseek-v3, mixtral-8x7b]
    tokens: 4096
    dtype: bf16
    backends: [torch-grouped]
"""


def test_the_plan_of_a_cluster_by_hand():
    from harness.measure import config, plan

    rows = plan.plan(config.parse(LAYERS, "cluster.yaml"), H100, World(64, 8))
    down = next(r for r in rows if r.get("label") == "llama3-70b.mlp_down")
    # TP=8 inside a node: compute at the roofline of 8 GPUs, the all_reduce of Y over NVLink
    t, k, n = 8192, 28672, 8192
    compute = 2 * t * k * n / (8 * H100.peak_flops("bf16")) * 1e3  # compute-bound
    comm = (6.6e-6 + 14 * 0.6e-6 + t * n * 2 * 1.75 / 450e9) * 1e3
    chunked = 4 * (15.0e-6 + t * n * 2 / 4 * 1.75 / 450e9) * 1e3
    assert down["compute_ms"] == pytest.approx(compute) and down["comm_ms"] == pytest.approx(comm)
    assert down["overlapped_ms"] == pytest.approx(max(compute, chunked) + min(compute, chunked) / 4)
    assert down["compute_comm_ratio"] == pytest.approx(compute / comm) and down["time_ms"] == down["overlapped_ms"]
    # EP=64 over 8 nodes: each all_to_all sends T·k rows of H bf16 values over the network
    ds = next(r for r in rows if r.get("label") == "deepseek-v3")
    send = 4096 * 8 * 7168 * 2
    one = (6.6e-6 + 63 * 2.7e-6 + send * 63 / 64 / 50e9) * 1e3
    assert ds["comm_ms"] == pytest.approx(2 * one)  # dispatch and combine (balanced: as many rows back)
    assert ds["compute_comm_ratio"] < 1 and ds["world_size"] == 64
    mixtral = next(r for r in rows if r.get("label") == "mixtral-8x7b")
    assert mixtral["reason"] == "a run would skip it: experts=8 do not split evenly over ep=64 ranks"
    text = plan.tables(config.parse(LAYERS, "cluster.yaml"), rows, H100, world=World(64, 8))
    notes = " ".join(n for table in text for n in table.notes)
    assert "compute/comm below 1 in 2 of 2 cases" in notes and "compute/comm below 1 in 1 of 2 cases" in notes
    assert "64 ranks on 8 nodes" in notes
