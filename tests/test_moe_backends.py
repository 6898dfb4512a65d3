"""MoE backends against the workload's float32 reference, their skip reasons, the columns they
add, and a tiny moe suite end to end through the runner (Triton under the interpreter)."""

import io

import pytest
import torch
from conftest import rows as read_rows
from rich.console import Console

from harness import backends
from harness.measure import config, runner
from harness.backends import Backend
from harness.backends.moe import FP8_ROWS, _expert_ffn, padded_rows
from harness.hardware.device import DeviceFacts, detect
from harness.measure.dtypes import DTYPES
from harness.workloads.moe import DENSE, MOE, dense_equivalent_bytes, rows_flops

CPU = DeviceFacts(kind="cpu", name="cpu")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FACTS = detect(DEVICE)


def moe(**kw):
    p = {"tokens": 5, "experts": 6, "top_k": 2, "hidden": 32, "intermediate": 16, "routing": "uniform",
         "seed": 0, "label": ""}
    return {**p, **kw}


def run_backend(name, p, dtype):
    backend = backends.get("moe", name)
    inputs = MOE.make_inputs(p, DTYPES[dtype], DEVICE, torch.Generator(DEVICE).manual_seed(3))
    fn = backend.build(inputs, p, DTYPES[dtype])
    columns = backend.columns(inputs, p, DTYPES[dtype]) if backend.columns else {}
    return MOE.check(inputs, fn(), p, DTYPES[dtype], backend.problem), columns


PROBLEMS = {
    "uniform": moe(),
    "experts without tokens": moe(tokens=1, routing="balanced"),  # experts 2..5 get nothing
    "skewed, top_k 1": moe(tokens=6, top_k=1, routing="zipf:2"),
}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8"])
@pytest.mark.parametrize("name", ["torch-loop", "torch-grouped", DENSE])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_torch_backends_match_the_reference(name, dtype, problem):
    p = PROBLEMS[problem]
    reason = backends.get("moe", name).unsupported(p, DTYPES[dtype], FACTS)
    if reason:
        pytest.skip(reason)
    problem_text, _ = run_backend(name, p, dtype)
    assert problem_text is None


@pytest.mark.parametrize("problem", PROBLEMS)
def test_triton_backend_matches_the_reference_and_reports_its_padding(problem):
    p = PROBLEMS[problem]
    problem_text, columns = run_backend("triton", p, "fp16")
    assert problem_text is None
    executed = columns["flops_executed"]
    assert executed >= MOE.flops(p) and executed % rows_flops(p, 16) == 0  # whole blocks of >= 16 rows


def test_dense_equivalent_is_checked_as_its_own_problem_and_reports_its_own_bytes():
    p = moe()
    inputs = MOE.make_inputs(p, DTYPES["fp16"], "cpu", torch.Generator().manual_seed(0))
    backend = backends.get("moe", DENSE)
    out = backend.build(inputs, p, DTYPES["fp16"])()
    assert backend.problem == DENSE and out.shape == (5 * 2, 32)
    assert MOE.check(inputs, out, p, DTYPES["fp16"], DENSE) is None
    # the same rows judged as the MoE layer's output are wrong
    assert "expected (5, 32)" in MOE.check(inputs, out, p, DTYPES["fp16"], None)
    dense_bytes = dense_equivalent_bytes(p, DTYPES["fp16"])
    assert backends.get("moe", DENSE).bytes(p, DTYPES["fp16"]) == dense_bytes < MOE.bytes(p, DTYPES["fp16"])
    # its own bytes are known before anything runs: in plans and on skipped rows too
    from harness.measure.case import Context, base_row
    from harness.measure.config import Case

    row = base_row(Case("moe", DENSE, "fp16", tuple(p.items())), Context("plan", DeviceFacts(kind="plan", name=""), None))
    assert row["bytes"] == dense_bytes


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17])
def test_fp8_row_padding_keeps_the_real_rows_and_their_results(n):
    # cuBLASLt refuses fp8 GEMMs whose M is not 16-byte aligned (an expert with 2 tokens on the
    # H200): torch-loop and dense-equivalent gather a padded block and keep its first n rows.
    tokens = torch.arange(3, 3 + n)
    rows = padded_rows(tokens, FP8_ROWS)
    assert len(rows) % FP8_ROWS == 0 and len(rows) - n < FP8_ROWS
    assert torch.equal(rows[:n], tokens) and set(rows[n:].tolist()) <= set(tokens.tolist())
    p = moe(tokens=40, hidden=32, intermediate=16)
    inputs = MOE.make_inputs(p, DTYPES["fp8"], "cpu", torch.Generator().manual_seed(1))
    ffn = _expert_ffn(inputs, p["intermediate"])
    padded = ffn(2, inputs["x"].index_select(0, rows))[:n]
    assert torch.equal(padded, ffn(2, inputs["x"].index_select(0, tokens)))
    assert torch.equal(padded_rows(tokens, 1), tokens)  # bf16 and fp16 never pad


@pytest.mark.parametrize("name", ["torch-loop", DENSE])
def test_fp8_torch_backends_count_their_padding(name):
    p = moe(tokens=5, experts=6, top_k=2, routing="balanced")  # 10 pairs: experts of 2, 2, 2, 2, 1, 1
    problem_text, columns = run_backend(name, p, "fp8")
    assert problem_text is None
    rows = 6 * FP8_ROWS if name == "torch-loop" else FP8_ROWS  # each active expert's group, or 10 -> 16
    assert columns == {"flops_executed": rows_flops(p, rows)}
    assert run_backend(name, p, "fp16")[1] == {}  # nothing padded, nothing added


def gpu(cc, vendor="nvidia"):
    return DeviceFacts(kind="cuda", name="gpu", vendor=vendor, compute_capability=cc)


@pytest.mark.parametrize("p, dtype, facts, reason", [
    (moe(), "bf16", gpu((9, 0)), None),
    (moe(), "bf16", gpu((10, 0)), None),
    (moe(), "bf16", CPU, None),
    (moe(), "fp16", gpu((9, 0)), "bf16-only"),
    (moe(), "fp8", gpu((9, 0)), "writes bf16 only"),
    (moe(), "bf16", gpu((8, 0)), "needs sm_90 or sm_100 (this GPU is sm_80)"),
    (moe(hidden=20), "bf16", gpu((9, 0)), "16-byte aligned rows"),
    (moe(experts=1024), "bf16", gpu((9, 0)), "at most 1023 groups"),
    (moe(), "bf16", gpu((9, 4), "amd"), "ROCm"),
])
def test_torch_grouped_says_why_it_cannot_run(p, dtype, facts, reason):
    got = backends.get("moe", "torch-grouped").unsupported(p, DTYPES[dtype], facts)
    assert got == reason or (reason and reason in got)


@pytest.mark.parametrize("p, facts, reason", [
    (moe(hidden=32, intermediate=16), gpu((9, 0)), None),
    (moe(hidden=32, intermediate=16), CPU, None),
    (moe(hidden=32, intermediate=16), gpu((8, 0)), "sm_89 or newer (this GPU is sm_80)"),
    (moe(hidden=32, intermediate=24), gpu((9, 0)), "divisible by 16"),
    (moe(hidden=32, intermediate=16), gpu((9, 4), "amd"), "fnuz"),
])
def test_torch_fp8_says_why_it_cannot_run(p, facts, reason):
    for name in ("torch-loop", DENSE):
        got = backends.get("moe", name).unsupported(p, DTYPES["fp8"], facts)
        assert got == reason or (reason and reason in got)


SUITE = """
suite: moe-unit
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: moe
    backends: [torch-loop, torch-grouped, triton, dense-equivalent, wrong]
    dtype: [fp16, bf16, fp8]
    shapes:
      - {tokens: 3, experts: 4, top_k: 2, hidden: 32, intermediate: 16, routing: balanced}
"""


def skips_token_0(inputs, p, dtype):
    def run():
        inputs["out"][1:] = 0
        return inputs["out"]
    return run


@pytest.mark.slow
@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU statuses (Triton under the interpreter)")
def test_a_tiny_moe_suite_runs_end_to_end(tmp_path, monkeypatch):
    wrong = Backend("moe", "wrong", "test double", lambda p, d, dev: None, skips_token_0)
    monkeypatch.setitem(backends._REGISTRY["moe"], "wrong", wrong)
    suite = config.parse(SUITE, "moe-unit.yaml")
    # isolate="none": the `wrong` double is registered in this process only
    assert runner.run(suite, "cpu", tmp_path, Console(file=io.StringIO()), isolate="none") == 1  # the mismatch
    rows = {(r["backend"], r["dtype"]): r for r in read_rows(tmp_path / "results.csv")}
    for name in ("torch-loop", "torch-grouped", "triton", "dense-equivalent"):
        assert rows[(name, "fp16")]["status"] == "ok", rows[(name, "fp16")]["reason"]
        assert rows[(name, "fp16")]["experts_active"] == "4"  # 6 pairs wrap around 4 experts
    assert rows[("triton", "bf16")]["status"] == "skipped"  # the interpreter's bf16 and fp8 are wrong
    assert rows[("triton", "fp8")]["status"] == rows[("torch-grouped", "fp8")]["status"] == "skipped"
    for name in ("torch-loop", "dense-equivalent"):
        assert rows[(name, "fp8")]["status"] == "ok", rows[(name, "fp8")]["reason"]
    assert rows[("wrong", "fp16")]["status"] == "mismatch" and "unwritten" in rows[("wrong", "fp16")]["reason"]
    triton = rows[("triton", "fp16")]
    assert int(triton["flops_executed"]) == 6 * 16 * 32 * 16 * 4 > int(triton["flops"])  # 4 blocks of 16 rows
    assert int(rows[("dense-equivalent", "fp16")]["bytes"]) < int(rows[("torch-loop", "fp16")]["bytes"])
    summary = (tmp_path / "summary.md").read_text()
    assert "× dense-equivalent" in summary and "experts_active" in summary and "flops_executed" in summary


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-loop", DENSE])
def test_fp8_torch_backends_at_decode_sizes_on_a_gpu(name):
    # The H200 run: deepseek-v3 at 64 tokens gives each expert 2 tokens, which cuBLASLt refused
    # unpadded; dense-equivalent's K = 7168 row was a mismatch under the old elementwise rule.
    if FACTS.compute_capability < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer")
    p = {**MOE.presets["deepseek-v3"]()[0], "tokens": 64, "routing": "balanced", "seed": 0}
    problem_text, columns = run_backend(name, p, "fp8")
    assert problem_text is None
    if name == "torch-loop":  # 2 tokens per expert, padded to 16
        assert columns["flops_executed"] == 8 * MOE.flops(p)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-loop", "torch-grouped", "triton", DENSE])
@pytest.mark.parametrize("model", ["deepseek-v3", "qwen3-30b-a3b"])
def test_bf16_backends_at_preset_shapes_on_a_gpu(name, model, fixed_kernel_configs):
    p = {**MOE.presets[model]()[0], "tokens": 512, "routing": "zipf:1.0", "seed": 0}
    reason = backends.get("moe", name).unsupported(p, DTYPES["bf16"], FACTS)
    if reason:
        pytest.skip(reason)
    problem_text, _ = run_backend(name, p, "bf16")
    assert problem_text is None
