"""The expert-parallel MoE layer (`ep-moe`): its formulas and traffic by hand from known routings,
its placement on the run's ranks, the layer on one rank (compute only) and on 2 gloo ranks (every
phase, chunked and not, balanced and skewed routings) against the single-process moe reference,
corrupted and unexchanged outputs caught; on 2+ GPUs the overlap pays (gpu); and `mfu run --nproc
2` end to end (slow)."""

import zlib

import pytest
import torch
import torch.distributed as dist
from conftest import QUICK, median_event_ms, mfu, on_ranks, rows, suite_file

from harness import backends
from harness.distributed.launch import World
from harness.hardware.device import DeviceFacts, detect
from harness.measure.dtypes import DTYPES
from harness.workloads import ep_moe
from harness.workloads.ep_moe import EP_MOE

BF16, FP16 = DTYPES["bf16"], DTYPES["fp16"]
CPU = DeviceFacts(kind="cpu", name="cpu")
TORCH_BACKENDS = ("torch-loop", "torch-grouped")


def layer(**kw) -> dict:
    p = {"tokens": 4, "experts": 8, "top_k": 2, "hidden": 16, "intermediate": 8, "routing": "balanced",
         "seed": 0, "ep": 2, "chunks": 2, "label": ""}
    return {**p, **kw}


# ------------------------------------------------------------------------------ formulas by hand

def test_balanced_traffic_and_formulas_by_hand():
    # Balanced: token t takes experts 2t and 2t+1 on every rank; rank 0 owns experts 0-3, rank 1 4-7.
    # Chunk 0 (tokens 0, 1) sends its 4 rows to rank 0, chunk 1 (tokens 2, 3) its 4 rows to rank 1.
    p = layer()
    x = ep_moe.exchange(p)
    assert x.rows.tolist() == [[[4, 0], [0, 4]], [[4, 0], [0, 4]]] and x.received.tolist() == [8, 8]
    assert EP_MOE.flops(p) == 6 * (2 * 4) * 2 * 16 * 8
    # all 8 experts active, each read once; 2 ranks x 4 tokens read and written in bf16
    assert EP_MOE.bytes(p, BF16) == 8 * 3 * 16 * 8 * 2 + 2 * 4 * 16 * (2 + 2)
    # dispatch: every rank sends its T·k = 8 rows of 16 bf16; combine: the 8 rows it received
    ops = [("all_to_all", 8 * 16 * 2), ("all_to_all", 8 * 16 * 2)]
    assert EP_MOE.comm_ops(p, BF16, World(2, 2), 0) == ops == EP_MOE.comm_ops(p, BF16, World(2, 2))
    assert EP_MOE.extra_columns(p, BF16) == {"rows_received_max": 8, "load_imbalance": 1.0}


def test_uneven_traffic_by_hand_the_busiest_rank_is_the_plans():
    # k = 1, token t -> expert t: tokens 0, 1 go to rank 0's experts 0, 1 and token 2 to rank 1's
    # expert 2, on both ranks: rank 0 receives 4 rows, rank 1 two; expert 3 receives nothing.
    p = layer(tokens=3, experts=4, top_k=1, chunks=1)
    assert ep_moe.exchange(p).received.tolist() == [4, 2]
    dispatch = ("all_to_all", 3 * 16 * 2)
    assert EP_MOE.comm_ops(p, BF16, World(2, 2), 0) == [dispatch, ("all_to_all", 4 * 16 * 2)]
    assert EP_MOE.comm_ops(p, BF16, World(2, 2), 1) == [dispatch, ("all_to_all", 2 * 16 * 2)]
    assert EP_MOE.comm_ops(p, BF16, World(2, 2)) == [dispatch, ("all_to_all", 4 * 16 * 2)]
    assert EP_MOE.bytes(p, FP16) == 3 * 3 * 16 * 8 * 2 + 2 * 3 * 16 * 4
    assert EP_MOE.extra_columns(p, BF16) == {"rows_received_max": 4, "load_imbalance": 4 / 3}
    assert EP_MOE.comm_ops({**p, "ep": 1}, BF16, World(1, 1), 0) == []  # nothing leaves a lone rank


def test_a_chunk_is_sent_in_expert_order_with_its_splits():
    p = layer(routing="uniform", seed=3, tokens=6, chunks=2)
    for r in range(2):
        routing = ep_moe.rank_routing(p, r)
        for c, (t0, t1) in enumerate([(0, 3), (3, 6)]):
            rows = ep_moe.chunk_rows(p, r, c)
            assert rows.experts.tolist() == sorted(rows.experts.tolist())
            assert torch.equal(rows.experts, routing.ids.flatten()[rows.pairs + t0 * 2])
            assert sorted((rows.tokens - t0).tolist()) == sorted(list(range(3)) * 2)
            assert rows.splits == [int((rows.experts < 4).sum()), int((rows.experts >= 4).sum())]
    # each rank's tokens are routed with their own seed: the same problem's ranks differ
    assert not torch.equal(ep_moe.rank_routing(p, 0).ids, ep_moe.rank_routing(p, 1).ids)
    assert int(ep_moe.exchange(p).rows.sum()) == 2 * 6 * 2


def test_placement_and_what_cannot_run_is_said_in_one_line():
    p = layer(ep=0)
    placed = EP_MOE.placed(p, World(4, 4))
    assert placed["ep"] == 4 and EP_MOE.peak_gpus(placed, World(4, 4)) == 4
    assert EP_MOE.placed(layer(ep=2), World(4, 4))["ep"] == 2
    assert EP_MOE.placement_problem(layer(ep=8), World(2, 2)) == "ep=8 needs 8 ranks; the run has 2"
    assert EP_MOE.placement_problem(layer(ep=2), World(3, 3)) == "ep=2 does not divide the 3 ranks of the run into groups"
    assert EP_MOE.placement_problem(layer(ep=2, experts=5), World(2, 2)) == "experts=5 do not split evenly over ep=2 ranks"
    assert EP_MOE.placement_problem(layer(ep=2), World(4, 4)) is None
    assert EP_MOE.validate(layer(chunks=5))[0] == "chunks"
    assert EP_MOE.validate(layer(top_k=9))[0] == "top_k" and EP_MOE.validate(layer(routing="zipf"))[0] == "routing"
    assert set(backends.names("ep-moe")) == {"torch-loop", "torch-grouped", "triton"}


# ------------------------------------------------------------------------------ one rank: compute only

@pytest.mark.parametrize("name", TORCH_BACKENDS)
def test_a_group_of_one_rank_is_the_whole_layer_in_its_compute_phase(name):
    p, d = EP_MOE.placed(layer(ep=0, tokens=5, experts=4, routing="zipf:1.2", chunks=3), World(1, 1)), FP16
    backend = backends.get("ep-moe", name)
    assert p["ep"] == 1 and backend.unsupported(p, d, CPU) is None
    inputs = EP_MOE.make_inputs(p, d, "cpu", torch.Generator().manual_seed(1))
    assert EP_MOE.check(inputs, inputs["out"], p, d).startswith("rank 0 of ep=1: fp16 output has")
    phases = backend.build(inputs, p, d)
    assert list(phases) == ["compute"]
    out = phases["compute"]()
    assert EP_MOE.check(inputs, out, p, d) is None
    out[4, 3] += 1.0
    assert "exceeds tolerance" in EP_MOE.check(inputs, out, p, d)
    assert not dist.is_initialized()  # a lone rank needs no process group


def test_every_rank_can_make_any_experts_weights_and_keeps_its_own():
    p, d = layer(ep=2), BF16
    one = EP_MOE.make_inputs(p, d, "cpu", torch.Generator().manual_seed(5))
    again = EP_MOE.make_inputs(p, d, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(one["x"], again["x"]) and one["w_gate_up"].shape == (4, 16, 16)
    for j in range(4):  # this process is rank 0: experts 0-3
        w_gate_up, w_down = ep_moe.expert(p, d, "cpu", one["seed"], j)
        assert torch.equal(one["w_gate_up"][j], w_gate_up) and torch.equal(one["w_down"][j], w_down)
    assert not torch.equal(ep_moe.expert(p, d, "cpu", one["seed"], 4)[0], one["w_gate_up"][0])


# ------------------------------------------------------------------------------ two gloo ranks

# triton runs in Triton's interpreter here (conftest sets TRITON_INTERPRET=1), which mishandles bf16
GLOO_CASES = [(name, "bf16", routing, chunks) for name in TORCH_BACKENDS for routing in ("balanced", "zipf:1.2")
              for chunks in (1, 3)] + [("torch-grouped", "fp16", "uniform", 2), ("triton", "fp16", "zipf:1.2", 3)]


def _case(name: str, dtype: str, routing: str, chunks: int) -> dict:
    """One case as a run does it on this rank, then each phase again, the layer again, a corrupted
    output, and a fresh layer whose compute phase (no exchange) runs alone."""
    p, d = EP_MOE.placed(layer(ep=0, tokens=6, experts=4, routing=routing, chunks=chunks), World(2, 2)), DTYPES[dtype]
    backend = backends.get("ep-moe", name)
    result = {"unsupported": backend.unsupported(p, d, CPU)}
    seed = zlib.crc32(f"{name}{dtype}{routing}{chunks}".encode())  # the case's: the same on every rank
    inputs = EP_MOE.make_inputs(p, d, "cpu", torch.Generator().manual_seed(seed))
    phases = backend.build(inputs, p, d)
    result["phases"] = list(phases)
    result["check"] = EP_MOE.check(inputs, phases["overlapped"](), p, d)
    for fn in phases.values():
        fn()
    out = phases["overlapped"]()
    result["again"] = EP_MOE.check(inputs, out, p, d)
    out[-1, -1] = -out[-1, -1] + 1.0
    result["corrupted"] = EP_MOE.check(inputs, out, p, d)
    fresh = EP_MOE.make_inputs(p, d, "cpu", torch.Generator().manual_seed(seed))
    result["unexchanged"] = EP_MOE.check(fresh, backend.build(fresh, p, d)["compute"](), p, d)
    return result


def _gloo_cases(rank: int, n: int) -> dict:
    return {":".join(map(str, case)): _case(*case) for case in GLOO_CASES}


def test_two_gloo_ranks_run_every_phase_and_the_layer_matches_the_single_process_reference(tmp_path):
    for rank, results in enumerate(on_ranks(_gloo_cases, 2, tmp_path)):
        assert len(results) == len(GLOO_CASES)
        for key, r in results.items():
            assert r["unsupported"] is None and r["phases"] == ["overlapped", "compute", "comm"], key
            assert r["check"] is None and r["again"] is None, (rank, key, r)
            assert r["corrupted"].startswith(f"rank {rank} of ep=2: ") and "exceeds tolerance" in r["corrupted"], key
            assert r["unexchanged"] and r["unexchanged"].startswith(f"rank {rank} of ep=2: "), key


# ------------------------------------------------------------------------------ two GPUs: the overlap pays

def _on_gpu(rank: int, n: int) -> dict:
    # Qwen3-30B-A3B's experts, 4096 tokens per rank: about 0.5 ms of GEMMs and of NVLink each.
    p = EP_MOE.placed({"tokens": 4096, "experts": 128, "top_k": 8, "hidden": 2048, "intermediate": 768,
                       "routing": "uniform", "seed": 0, "ep": 0, "chunks": 4, "label": ""}, World(n, n))
    facts = detect("cuda")
    name = "torch-grouped" if backends.get("ep-moe", "torch-grouped").unsupported(p, BF16, facts) is None \
        else "torch-loop"
    inputs = EP_MOE.make_inputs(p, BF16, "cuda", torch.Generator(device="cuda").manual_seed(0))
    phases = backends.get("ep-moe", name).build(inputs, p, BF16)
    check = EP_MOE.check(inputs, phases["overlapped"](), p, BF16)
    return {"check": check, "backend": name, **{phase: median_event_ms(fn) for phase, fn in phases.items()}}


@pytest.mark.gpu
def test_on_two_gpus_the_overlapped_layer_is_faster_than_compute_then_comm(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    for r in on_ranks(_on_gpu, 2, tmp_path, backend="nccl"):
        assert r["check"] is None, r
        assert r["overlapped"] < r["compute"] + r["comm"], r


# ------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_mfu_run_on_two_ranks_measures_the_three_phases(tmp_path):
    suite = suite_file(tmp_path, f"""
suite: ep
{QUICK}
cases:
  - workload: ep-moe
    backends: [torch-loop]
    dtype: bf16
    tokens: 8
    experts: 4
    top_k: 2
    hidden: 16
    intermediate: 8
    routing: [balanced, zipf:1.2]
""")
    result = mfu("run", suite, "--nproc", 2, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(tmp_path / "run" / "results.csv")
    assert {r["routing"] for r in found} == {"balanced", "zipf:1.2"}
    for r in found:
        assert r["status"] == "ok" and r["ep"] == "2", r
        assert all(float(r[c]) > 0 for c in ("compute_ms", "comm_ms", "overlapped_ms", "compute_comm_ratio")), r
        assert float(r["time_ms"]) == pytest.approx(float(r["overlapped_ms"]))
        assert int(r["comm_bytes"]) > 0 and float(r["load_imbalance"]) >= 1.0
