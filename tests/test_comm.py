"""The `comm` workload and its torch backend: nccl-tests' formulas by hand, link utilization, the
exact input patterns, and every op run through make_inputs, build, fn and check on gloo with 1, 2
and 3 ranks, where a corrupted or unwritten output must fail the check."""

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
from conftest import QUICK, ROOT, mfu, on_ranks, rows, suite_file

from harness import backends, workloads
from harness.distributed.launch import World
from harness.hardware import specs
from harness.hardware.device import DeviceFacts
from harness.measure import config
from harness.measure.dtypes import DTYPES
from harness.workloads import comm, comm_model

COMM = workloads.REGISTRY["comm"]
TORCH = backends.get("comm", "torch")
CPU = DeviceFacts(kind="cpu", name="cpu")
H200 = dataclasses.replace(specs.lookup("h200-sxm"), nvlink_gbs=450.0, network_gbs=50.0)


# ------------------------------------------------------------------------------ formulas by hand

@pytest.mark.parametrize("op, n, factor", [
    ("all_reduce", 2, 1.0), ("all_reduce", 3, 4 / 3), ("all_reduce", 4, 1.5),
    ("all_gather", 2, 0.5), ("all_gather", 3, 2 / 3), ("all_gather", 4, 0.75),
    ("reduce_scatter", 2, 0.5), ("reduce_scatter", 3, 2 / 3), ("reduce_scatter", 4, 0.75),
    ("all_to_all", 2, 0.5), ("all_to_all", 3, 2 / 3), ("all_to_all", 4, 0.75),
    ("broadcast", 2, 1.0), ("broadcast", 3, 1.0), ("broadcast", 4, 1.0),
    ("send_recv", 2, 1.0), ("send_recv", 3, 1.0), ("send_recv", 4, 1.0),
])
def test_bus_factors_are_nccl_tests(op, n, factor):
    assert comm_model.bus_factor(op, n) == pytest.approx(factor)


def test_algbw_and_busbw_by_hand():
    # 1 GB in 4 ms is 250 GB/s; an all_reduce over 4 ranks moves 2·3/4 of it over each link
    assert comm_model.algbw_gbps(10**9, 4.0) == pytest.approx(250.0)
    assert comm_model.busbw_gbps("all_reduce", 10**9, 4.0, 4) == pytest.approx(375.0)
    assert comm_model.busbw_gbps("all_gather", 3 * 10**9, 10.0, 3) == pytest.approx(200.0)
    assert comm_model.busbw_gbps("send_recv", 10**9, 4.0, 2) == pytest.approx(250.0)
    with pytest.raises(ValueError, match="unknown collective"):
        comm_model.bus_factor("gather", 2)


def test_link_util_is_over_nvlink_in_a_node_and_the_network_across_nodes():
    in_node = COMM.timed_columns({"op": "all_reduce", "size": 10**9}, DTYPES["bf16"], {"time": 4.0}, World(4, 4), H200)
    assert in_node["busbw_gbps"] == pytest.approx(375.0)
    assert in_node["link_util"] == pytest.approx(375.0 / 450.0) and in_node["link_note"] is None
    across = COMM.timed_columns({"op": "all_reduce", "size": 10**9}, DTYPES["bf16"], {"time": 4.0}, World(8, 4), H200)
    assert across["busbw_gbps"] == pytest.approx(250.0 * 2 * 7 / 8)
    assert across["link_util"] == pytest.approx(250.0 * 1.75 / 50.0)
    # NVLS can pass the per-direction bound: reported as measured, never capped
    fast = comm_model.link_columns("all_reduce", 8 * 2**30, 8 * 2**30 / 270e9 * 1e3, World(8, 8), H200)
    assert fast["link_util"] > 1.0


def test_one_rank_measures_no_interconnect_and_an_unknown_link_stays_empty():
    solo = comm_model.link_columns("broadcast", 10**6, 1.0, World(1, 1), H200)
    assert solo["algbw_gbps"] == pytest.approx(1.0)
    assert solo["busbw_gbps"] is None and solo["link_util"] is None
    assert solo["link_note"] == "a single rank measures no interconnect"
    unknown = comm_model.link_columns("broadcast", 10**6, 1.0, World(2, 2), dataclasses.replace(H200, nvlink_gbs=None))
    assert unknown["busbw_gbps"] == pytest.approx(1.0) and unknown["link_util"] is None
    assert "no NVLink bandwidth for H200" in unknown["link_note"]
    assert "no peak table entry" in comm_model.link_columns("broadcast", 10**6, 1.0, World(2, 1), None)["link_note"]


def test_sizes_that_do_not_split_over_the_ranks_are_refused_in_one_line():
    assert comm_model.size_problem("all_reduce", 6, 2, 3) is None  # not split: any whole number of elements
    assert comm_model.size_problem("all_reduce", 7, 2, 1) == "size must be a multiple of the element size (2 B), got 7"
    assert comm_model.size_problem("all_gather", 12, 2, 3) is None
    assert comm_model.size_problem("all_to_all", 8, 2, 3) == ("all_to_all splits the array over 3 ranks: size must be "
                                                             "a multiple of 3 x 2 B = 6 B, got 8")


# ------------------------------------------------------------------------------ the suite format

def test_the_portable_suite_format_expands_to_one_case_per_op_and_size():
    text = ("cases:\n  - workload: comm\n    op: [all_reduce, all_gather, reduce_scatter, all_to_all, broadcast,"
            " send_recv]\n    size: [1048576, 268435456]\n    dtype: bf16\n    backends: [torch]\n")
    suite = config.parse(text, "comm.yaml")
    assert len(suite.cases) == 12 and suite.cases[0].case_id == "comm:bf16:op=all_reduce,size=1048576:torch"
    assert COMM.collective and COMM.flops(suite.cases[0].p) == 0 and COMM.bytes(suite.cases[0].p, DTYPES["bf16"]) == 1048576
    with pytest.raises(config.ConfigError, match=r"cases\[0\]\.op: must be one of all_reduce, .* \(got 'gather'\)"):
        config.parse(text.replace("send_recv]", "gather]"), "comm.yaml")


def test_the_shipped_sweep_parses():
    suite = config.load(ROOT / "configs" / "comm.yaml")
    assert {c.p["op"] for c in suite.cases} == set(comm_model.OPS)
    assert min(c.p["size"] for c in suite.cases) == 8 and max(c.p["size"] for c in suite.cases) >= 2**31
    assert {c.dtype for c in suite.cases} == {"bf16", "fp32"}


# ------------------------------------------------------------------------------ the input patterns

@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33, 300])
def test_the_sum_patterns_closed_form_is_the_sum_and_exact(dtype, n, monkeypatch):
    d = DTYPES[dtype]
    index = torch.arange(0, 200)
    brute = sum(comm._sum_summand(index, r, n, 5, d) for r in range(n))
    assert torch.equal(comm._sum_pattern(index, n, 5, d), brute)
    assert int(brute.max()) <= comm.SUM_EXACT[dtype] and int(brute.min()) >= 1  # never zero, always exact
    # every partial sum is exact in the dtype: summed there in rank order, nothing is lost
    partial = torch.zeros(200, dtype=d.storage)
    for r in range(n):
        partial += comm._sum_summand(index, r, n, 5, d).to(d.storage)
    assert torch.equal(partial.to(torch.int64), brute)


@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp8"])
def test_movement_patterns_are_exact_distinct_per_rank_and_never_the_poison(dtype):
    d = DTYPES[dtype]
    index = torch.arange(1000)
    values = [comm._move_pattern(index, r, 11, d) for r in range(4)]
    for v in values:
        stored = comm._encode(v, d)
        assert torch.equal((stored.view(torch.uint8) if dtype == "fp8" else stored).to(torch.int64), v)
    assert all(not torch.equal(values[0], v) for v in values[1:])
    if dtype == "fp8":
        assert int(torch.stack(values).max()) < comm.FP8_POISON


# ------------------------------------------------------------------------------ one rank, in this process

def _run_and_check(op: str, dtype: str, size: int, device: str = "cpu") -> dict:
    """One case as the runner does it: unsupported, make_inputs, build, first call, check; then a
    second (timed-like) call, and the checks of a corrupted and of an unwritten output."""
    p, d = {"op": op, "size": size, "label": ""}, DTYPES[dtype]
    reason = TORCH.unsupported(p, d, DeviceFacts(kind=device, name=device))
    if reason:
        return {"skipped": reason}
    gen = torch.Generator(device=device).manual_seed(7)
    inputs = COMM.make_inputs(p, d, device, gen)
    fn = TORCH.build(inputs, p, d)
    out = fn()
    result = {"check": COMM.check(inputs, out, p, d)}
    fn()  # what timing does next must not raise
    rank, n = comm.placement()
    fresh = COMM.make_inputs(p, d, device, torch.Generator(device=device).manual_seed(7))
    fresh_fn = TORCH.build(fresh, p, d)
    out = fresh_fn()
    bits = comm._bits(out.reshape(-1))
    bits[-1] ^= 1  # one bit of one element
    result["corrupted"] = COMM.check(fresh, out, p, d)
    if not _input_is_the_answer(op, rank, n):
        unwritten = COMM.make_inputs(p, d, device, torch.Generator(device=device).manual_seed(7))
        result["unwritten"] = COMM.check(unwritten, unwritten["out"], p, d)
    return result


def _input_is_the_answer(op: str, rank: int, n: int) -> bool:
    """In place, where doing nothing is right: broadcast's source, and an all_reduce of one rank."""
    return (op == "broadcast" and rank == 0) or (op == "all_reduce" and n == 1)


@pytest.mark.parametrize("op", comm_model.OPS)
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp8"])
def test_one_rank_runs_each_op_checked_and_a_flipped_bit_fails(op, dtype, own_group):
    result = _run_and_check(op, dtype, 96)
    if op == "send_recv":
        assert result == {"skipped": "send_recv needs at least 2 ranks: a single rank has no peer "
                                     "(run under torchrun or with --nproc 2)"}
    elif dtype == "fp8" and op in comm_model.REDUCTIONS:
        assert result["skipped"].startswith("fp8 sums are not measured: NCCL adds fp8 only from 2.24 and on sm90+")
    else:
        assert result["check"] is None
        assert result["corrupted"] and result["corrupted"].startswith(f"{op} on rank 0 of 1: element ")
        if "unwritten" in result:
            assert result["unwritten"] and "element 0 is" in result["unwritten"]


@pytest.mark.gpu
@pytest.mark.parametrize("op", comm_model.OPS)
def test_one_gpu_rank_runs_each_op_on_nccl_checked(op, own_group):
    """NCCL with world size 1: every op but send_recv runs and checks; fp8 moves as bytes."""
    for dtype in ("bf16", "fp32", "fp8"):
        result = _run_and_check(op, dtype, 3 * 2**20, device="cuda")
        if op == "send_recv" or (dtype == "fp8" and op in comm_model.REDUCTIONS):
            assert "skipped" in result, (dtype, result)
            continue
        assert result["check"] is None and result["corrupted"], (dtype, result)
    assert dist.get_backend() == "nccl"


@pytest.mark.parametrize("op", ["all_reduce", "all_to_all", "broadcast"])
def test_the_check_in_uneven_chunks_still_finds_the_last_element(op, own_group, monkeypatch):
    monkeypatch.setattr(comm, "CHUNK", 7)
    result = _run_and_check(op, "fp32", 96)  # 24 elements: chunks of 7, 7, 7 and 3
    assert result["check"] is None
    assert "element 23 is" in result["corrupted"] and "among elements 21-23 of 24" in result["corrupted"]


def test_a_wrong_output_shape_is_named(own_group):
    p, d = {"op": "all_gather", "size": 64, "label": ""}, DTYPES["fp32"]
    inputs = COMM.make_inputs(p, d, "cpu", torch.Generator().manual_seed(1))
    assert COMM.check(inputs, inputs["out"][:8], p, d) == "all_gather: output is 8 torch.float32, expected 16 torch.float32"


def test_memory_is_send_and_output_and_one_chunk_of_temporaries():
    small = COMM.memory_bytes({"op": "all_to_all", "size": 1024}, DTYPES["bf16"])
    assert small == 2 * 1024 + 512 * (3 * 8 + 2)
    huge = COMM.memory_bytes({"op": "all_reduce", "size": 8 * 2**30}, DTYPES["fp32"])
    assert huge == 16 * 2**30 + comm.CHUNK * (3 * 8 + 4)


def test_inputs_are_made_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(comm, "CHUNK", 7)  # chunks that split the array unevenly
    d = DTYPES["bf16"]
    whole = comm._encode(comm._move_pattern(torch.arange(50), 2, 3, d), d)
    assert torch.equal(comm._filled(50, d, "cpu", lambda i: comm._move_pattern(i, 2, 3, d)), whole)


# ------------------------------------------------------------------------------ 2 and 3 ranks on gloo

def _every_op(rank: int, n: int, size: int) -> dict:
    results = {f"{op}:{dtype}": _run_and_check(op, dtype, size)
               for op in comm_model.OPS for dtype in ("bf16", "fp32", "fp8")}
    results["refused"] = TORCH.unsupported({"op": "all_to_all", "size": 2 * n + 2, "label": ""}, DTYPES["bf16"], CPU)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_every_op_on_2_and_3_gloo_ranks_is_right_and_a_corruption_fails(n, tmp_path):
    size = 4 * 3 * 2 * 5  # splits over 2 and 3 ranks for every element size
    for rank, results in enumerate(on_ranks(_every_op, n, tmp_path, size)):
        assert results.pop("refused").startswith(f"all_to_all splits the array over {n} ranks")
        for key, result in results.items():
            op, dtype = key.split(":")
            if dtype == "fp8" and op in comm_model.REDUCTIONS:
                assert "skipped" in result, key
                continue
            assert result["check"] is None, (rank, key, result)
            assert result["corrupted"] and f"on rank {rank} of {n}" in result["corrupted"], (rank, key)
            if not _input_is_the_answer(op, rank, n):
                assert result["unwritten"], (rank, key)


# ------------------------------------------------------------------------------ `mfu run`, one process

@pytest.mark.slow
def test_mfu_run_of_a_comm_suite_on_one_cpu_rank(tmp_path):
    suite = suite_file(tmp_path, f"""
suite: comm-tiny
{QUICK}
cases:
  - workload: comm
    op: [all_reduce, all_gather, reduce_scatter, all_to_all, broadcast, send_recv]
    size: [64]
    dtype: [fp32, fp8]
    backends: [torch]
""")
    r = mfu("run", suite, "--device", "cpu", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "algbw GB/s" in r.stdout  # the summary shows a rate over links, not 0 TFLOPS
    got = {(x["op"], x["dtype"]): x for x in rows(tmp_path / "run" / "results.csv")}
    assert len(got) == 12
    for (op, dtype), row in got.items():
        if op == "send_recv":
            assert row["status"] == "skipped" and "single rank has no peer" in row["reason"]
        elif dtype == "fp8" and op in comm_model.REDUCTIONS:
            assert row["status"] == "skipped" and row["reason"].startswith("fp8 sums are not measured")
        else:
            assert row["status"] == "ok", row
            assert math.isclose(float(row["algbw_gbps"]), 64 / (float(row["time_ms"]) / 1e3) / 1e9, rel_tol=1e-6)
            assert row["busbw_gbps"] == "" and row["link_util"] == "" and row["mfu"] == ""
            assert row["link_note"] == "a single rank measures no interconnect"
        assert row["bytes"] == "64" and row["flops"] == "0"
