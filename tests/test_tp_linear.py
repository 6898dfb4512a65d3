"""The `tp-linear` workload and its backends: formulas by hand, presets, the splits it refuses, the
tp = 1 path in this process, row- and column-parallel on 2 gloo ranks checked against the
single-process reference (with a partial, a corrupted and an unwritten output caught), `mfu run
--nproc 2` with its three phases, and on 2+ GPUs that overlap beats compute + comm."""


import pytest
import torch
from conftest import QUICK, median_event_ms, mfu, on_ranks, rows, suite_file

from harness import backends, workloads
from harness.distributed.launch import World
from harness.hardware.device import DeviceFacts
from harness.measure import config
from harness.measure.check import tolerance
from harness.measure.dtypes import DTYPES
from harness.workloads import overlap_model, tp_linear

TPL = workloads.REGISTRY["tp-linear"]
CPU = DeviceFacts(kind="cpu", name="cpu")
BACKENDS = ("torch", "triton")


def _p(**given) -> dict:
    return {"tokens": 6, "in_features": 8, "out_features": 4, "tp": 2, "parallel": "row", "chunks": 4,
            "label": "", **given}


# ------------------------------------------------------------------------------ formulas by hand

def test_flops_bytes_and_collectives_by_hand():
    bf16 = DTYPES["bf16"]
    row, column = _p(), _p(parallel="column")
    assert TPL.flops(row) == TPL.flops(column) == 2 * 6 * 8 * 4
    # row: X and W once, each of the 2 ranks writes its partial Y [6, 4]
    assert TPL.bytes(row, bf16) == (6 * 8 + 8 * 4) * 2 + 2 * 6 * 4 * 2
    # column: each rank reads the whole gathered X, W once, Y written once (in column shards)
    assert TPL.bytes(column, bf16) == 2 * 6 * 8 * 2 + 8 * 4 * 2 + 6 * 4 * 2
    assert TPL.bytes(_p(tp=1), bf16) == TPL.bytes(_p(tp=1, parallel="column"), bf16) == (48 + 32 + 24) * 2
    world = World(2, 2)
    assert TPL.comm_ops(row, bf16, world, 0) == [("all_reduce", 6 * 4 * 2)]  # the whole Y
    assert TPL.comm_ops(column, bf16, world) == [("all_gather", 6 * 8 * 2)]  # the gathered X
    assert TPL.comm_ops(_p(tp=1), bf16, world) == []
    assert TPL.collective and TPL.phases == overlap_model.PHASES


def test_tp_0_is_every_rank_of_the_run_and_the_rates_are_over_the_group():
    assert TPL.placed(_p(tp=0), World(8, 8))["tp"] == 8
    assert TPL.placed(_p(tp=2), World(8, 8))["tp"] == 2
    assert TPL.peak_gpus(TPL.placed(_p(tp=0), World(4, 4)), World(4, 4)) == 4


def test_memory_is_what_a_rank_holds_and_the_check_needs_by_hand():
    fp32, ref = DTYPES["fp32"], 8  # fp32's reference is fp64
    # row, tp 2: whole X [6,8] and W [4,8], their K shards, the output [6,4]; the check upcasts W
    # and takes X in one block of 6 rows (X, ref and error)
    held = (48 + 32) * 4 + (48 + 32) // 2 * 4 + 24 * 4
    assert TPL.memory_bytes(_p(), fp32) == held + 8 * 4 * ref + 6 * (8 + 3 * 4) * ref
    # column, tp 2, 2 chunks: X and W (shards are views), output [6,2], staging [6,8], one chunk's
    # result of 2 ranks x 2 rows (3 rows each, in chunks of 2 and 1)
    held = (48 + 32) * 4 + 12 * 4 + 48 * 4 + 2 * 2 * 2 * 4
    assert TPL.memory_bytes(_p(parallel="column", chunks=2), fp32) == held + 8 * 2 * ref + 6 * (8 + 3 * 2) * ref


def test_row_parallel_tolerates_its_partial_sums_roundings():
    bf16 = DTYPES["bf16"]
    assert tp_linear.tolerance_for(_p(tp=4, in_features=64), bf16) == tolerance(bf16, 64, roundings=7)
    assert tp_linear.tolerance_for(_p(tp=4, in_features=64, parallel="column"), bf16) == tolerance(bf16, 64)
    assert tp_linear.tolerance_for(_p(tp=1, in_features=64), bf16) == tolerance(bf16, 64)


def test_chunks_are_contiguous_row_blocks_as_even_as_integers_allow():
    assert tp_linear.row_blocks(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert tp_linear.row_blocks(4, 1) == [slice(0, 4)]
    from harness.backends.tp_linear import local_problems

    assert local_problems(_p(tokens=10, chunks=3)) == [{"m": 10, "n": 4, "k": 4}, {"m": 3, "n": 4, "k": 4},
                                                       {"m": 4, "n": 4, "k": 4}]
    # column, 12 tokens over 2 ranks in 4 chunks: 1, 1, 2, 2 rows of each rank per chunk
    assert local_problems(_p(tokens=12, parallel="column")) == [{"m": 12, "n": 2, "k": 8}, {"m": 2, "n": 2, "k": 8},
                                                               {"m": 4, "n": 2, "k": 8}]
    assert local_problems(_p(tp=1, chunks=3)) == [{"m": 6, "n": 4, "k": 8}]


# ------------------------------------------------------------------------------ suites and refusals

SUITE = """
suite: t
cases:
  - workload: tp-linear
    dtype: bf16
    backends: [torch]
"""


def test_model_presets_fill_the_o_and_mlp_down_projections_and_the_suite_gives_tokens():
    suite = config.parse(SUITE + "    model: [llama3-8b, llama3-70b]\n    tokens: 4096\n", "t.yaml")
    got = [(c.p["in_features"], c.p["out_features"], c.p["label"], c.p["tokens"], c.p["tp"], c.p["parallel"],
            c.p["chunks"]) for c in suite.cases]
    assert got == [(4096, 4096, "llama3-8b.o", 4096, 0, "row", 4),
                   (14336, 4096, "llama3-8b.mlp_down", 4096, 0, "row", 4),
                   (8192, 8192, "llama3-70b.o", 4096, 0, "row", 4),
                   (28672, 8192, "llama3-70b.mlp_down", 4096, 0, "row", 4)]


@pytest.mark.parametrize("given, place, message", [
    ({"tp": 3, "in_features": 16}, "in_features", "row-parallel splits in_features over tp=3 ranks: 16 is not a multiple"),
    ({"tp": 2, "parallel": "column", "tokens": 7}, "tokens", "column-parallel splits tokens over tp=2 ranks: 7 is not a multiple"),
    ({"tp": 2, "parallel": "column", "out_features": 9}, "out_features", "splits out_features over tp=2 ranks: 9"),
    ({"tp": 2, "chunks": 9}, "chunks", "chunks=9 exceeds the 8 token rows"),
    ({"tp": 4, "parallel": "column", "chunks": 3}, "chunks", "chunks=3 exceeds the 2 token rows each of the tp=4 ranks holds"),
])
def test_a_split_that_tp_does_not_divide_is_a_suite_error_when_tp_is_given(given, place, message):
    values = {"tokens": 8, "in_features": 8, "out_features": 8, **given}
    text = SUITE + "".join(f"    {k}: {v}\n" for k, v in values.items())
    with pytest.raises(config.ConfigError, match=rf"cases\[0\]\.{place}: .*{message}"):
        config.parse(text, "t.yaml")


def test_tp_0_is_checked_once_placed_and_tp_1_ignores_chunks():
    text = SUITE + "    tokens: 2\n    in_features: 7\n    out_features: 8\n    chunks: 4\n    tp: [0, 1]\n"
    assert len(config.parse(text, "t.yaml").cases) == 2  # 7 and 4 chunks of 2 rows are refused only on 2+ ranks


def test_groups_the_run_cannot_form_and_uneven_splits_are_refused_in_one_line():
    refused = TPL.placement_problem
    assert refused(_p(tp=2), World(1, 1)) == "tp=2 needs 2 ranks; the run has 1"
    assert refused(_p(tp=1), World(1, 1)) is None
    assert refused(_p(tp=3), World(4, 4)) == "tp=3 does not divide the 4 ranks of the run into groups"
    assert refused(_p(tp=4, in_features=6), World(4, 4)) == \
        "row-parallel splits in_features over tp=4 ranks: 6 is not a multiple"
    assert refused(_p(tp=2, tokens=8, chunks=5, parallel="column"), World(4, 4)) == \
        "chunks=5 exceeds the 4 token rows each of the tp=2 ranks holds"
    assert refused(_p(tp=4, tokens=8, chunks=2, parallel="column"), World(4, 4)) is None
    # and a run skips such a case before any formula or backend sees it
    from harness.measure.case import Context, run_case

    case = config.parse(SUITE + "    tokens: 8\n    in_features: 8\n    out_features: 4\n    tp: 2\n", "t.yaml").cases[0]
    row, samples = run_case(case, Context("cpu", CPU, None))
    assert (row["status"], row["reason"], samples) == ("skipped", "tp=2 needs 2 ranks; the run has 1", [])
    assert "flops" not in row


def test_the_gemm_backends_reasons_for_the_local_problem_are_passed_on():
    reason = backends.get("tp-linear", "torch").unsupported(_p(tp=1), DTYPES["tf32"], CPU)
    assert reason == backends.get("gemm", "torch").unsupported({"m": 6, "n": 4, "k": 8}, DTYPES["tf32"], CPU)
    assert reason.startswith("TF32 is an NVIDIA tensor-core mode")


# ------------------------------------------------------------------------------ one rank, in this process

@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("parallel", ["row", "column"])
def test_tp_1_is_the_compute_phase_alone_and_is_the_whole_layer(name, parallel, own_group):
    p, fp32 = TPL.placed(_p(tp=0, parallel=parallel, tokens=5, chunks=3), World(1, 1)), DTYPES["fp32"]
    assert p["tp"] == 1 and backends.get("tp-linear", name).unsupported(p, fp32, CPU) is None
    inputs = TPL.make_inputs(p, fp32, "cpu", torch.Generator().manual_seed(1))
    assert TPL.check(inputs, inputs["out"], p, fp32).startswith("fp32 rank 0 of tp=1: output has 20 non-finite")
    phases = backends.get("tp-linear", name).build(inputs, p, fp32)
    assert list(phases) == ["compute"]
    out = phases["compute"]()
    assert TPL.check(inputs, out, p, fp32) is None
    out[4, 3] += 0.5
    assert "at [4, 3]" in TPL.check(inputs, out, p, fp32)


# ------------------------------------------------------------------------------ 2 ranks on gloo

GLOO_CASES = [(name, parallel, chunks, dtype) for name in ("torch",) for parallel in ("row", "column")
              for chunks in (1, 3) for dtype in ("fp32", "fp16")]
GLOO_CASES += [("triton", parallel, 3, "fp32") for parallel in ("row", "column")]


def _case_on_ranks(name: str, parallel: str, chunks: int, dtype: str) -> dict:
    """One case as the runner does it, plus the other phases and the outputs that must fail."""
    p, d = _p(tp=2, tokens=12, in_features=16, out_features=8, parallel=parallel, chunks=chunks), DTYPES[dtype]
    backend = backends.get("tp-linear", name)
    result = {"unsupported": backend.unsupported(p, d, CPU)}
    inputs = TPL.make_inputs(p, d, "cpu", torch.Generator().manual_seed(5))  # the same seed on every rank
    phases = backend.build(inputs, p, d)
    result["phases"] = list(phases)
    out = phases["overlapped"]()
    result["overlapped"] = TPL.check(inputs, out, p, d)
    phases["overlapped"]()  # called again, as timing does: the same answer
    result["again"] = TPL.check(inputs, out, p, d)
    corrupted = out.clone()
    corrupted[11, 0] += 1.0
    result["corrupted"] = TPL.check(inputs, corrupted, p, d)
    result["unwritten"] = TPL.check(inputs, torch.full_like(out, float("nan")), p, d)
    partial = phases["compute"]()
    if parallel == "row":  # the compute alone is this rank's partial sum: not the layer's output
        result["partial"] = TPL.check(inputs, partial.clone(), p, d)
        phases["comm"]()  # its all_reduce completes it: compute then comm is the unchunked layer
        result["compute_then_comm"] = TPL.check(inputs, partial, p, d)
    else:  # the compute is on the whole X, and the comm phase gathers exactly that
        result["compute"] = TPL.check(inputs, partial, p, d)
        result["gathered_is_x"] = bool(torch.equal(phases["comm"](), inputs["x"]))
    return result


def _gloo_cases(rank: int, n: int) -> dict:
    return {":".join(map(str, case)): _case_on_ranks(*case) for case in GLOO_CASES}


def test_row_and_column_parallel_on_2_gloo_ranks_match_the_single_process_reference(tmp_path):
    for rank, results in enumerate(on_ranks(_gloo_cases, 2, tmp_path)):
        assert len(results) == len(GLOO_CASES)
        for key, r in results.items():
            where = f"{key.split(':')[-1]} rank {rank} of tp=2: "
            assert r["unsupported"] is None and r["phases"] == ["overlapped", "compute", "comm"], (rank, key)
            assert r["overlapped"] is None and r["again"] is None, (rank, key, r)
            assert r["corrupted"].startswith(where) and "at [11, 0]" in r["corrupted"], (rank, key, r)
            assert r["unwritten"].startswith(where + "output has") and "non-finite" in r["unwritten"], (rank, key)
            if ":row:" in key:
                assert r["partial"] and r["partial"].startswith(where), (rank, key)
                assert r["compute_then_comm"] is None, (rank, key, r)
            else:
                assert r["compute"] is None and r["gathered_is_x"], (rank, key, r)


@pytest.mark.slow
def test_mfu_run_nproc_2_times_a_tp_linear_layer_in_three_phases(tmp_path):
    suite = suite_file(tmp_path, f"""
suite: tp
{QUICK}
cases:
  - workload: tp-linear
    backends: [torch]
    dtype: fp32
    tokens: 12
    in_features: 16
    out_features: 8
    chunks: 3
    shapes: [{{parallel: row}}, {{parallel: column}}, {{parallel: row, tp: 1}}]
""")
    result = mfu("run", suite, "--nproc", 2, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    got = {(r["parallel"], r["tp"]): r for r in rows(tmp_path / "run" / "results.csv")}
    assert set(got) == {("row", "2"), ("column", "2"), ("row", "1")}  # one row per case: a collective
    for (parallel, tp), row in got.items():
        assert row["status"] == "ok", row
        assert float(row["compute_ms"]) > 0 and row["flops"] == str(2 * 12 * 16 * 8)
        if tp == "1":
            assert row["comm_ms"] == "" and row["overlapped_ms"] == "" and "compute only" in row["link_note"]
            assert float(row["time_ms"]) == float(row["compute_ms"])
            continue
        compute, comm, overlapped = (float(row[c]) for c in ("compute_ms", "comm_ms", "overlapped_ms"))
        assert comm > 0 and float(row["time_ms"]) == overlapped
        assert float(row["compute_comm_ratio"]) == pytest.approx(compute / comm)
        assert row["comm_bytes"] == str(12 * 8 * 4 if parallel == "row" else 12 * 16 * 4)


# ------------------------------------------------------------------------------ 2+ GPUs (NCCL)

def _on_gpu(rank: int, n: int) -> dict:
    results = {}
    for parallel in ("row", "column"):
        p, bf16 = _p(tp=n, tokens=8192, in_features=8192, out_features=8192, parallel=parallel), DTYPES["bf16"]
        inputs = TPL.make_inputs(p, bf16, "cuda", torch.Generator(device="cuda").manual_seed(5))
        phases = backends.get("tp-linear", "torch").build(inputs, p, bf16)
        result = {"check": TPL.check(inputs, phases["overlapped"](), p, bf16)}
        for phase, fn in phases.items():
            result[phase] = median_event_ms(fn)
        results[parallel] = result
    return results


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2+ GPUs")
def test_on_gpus_the_overlapped_layer_beats_compute_plus_comm(tmp_path):
    n = torch.cuda.device_count()
    for rank, results in enumerate(on_ranks(_on_gpu, n, tmp_path, backend="nccl")):
        for parallel, r in results.items():
            assert r["check"] is None, (rank, parallel, r)
            assert r["overlapped"] < r["compute"] + r["comm"], (rank, parallel, r)
