"""The attention workload: parameters, formulas, masking semantics, the check, the backends' masks,
and a tiny suite end to end through the runner (CPU; Triton kernels under the interpreter).

The mask is bottom-right causal: query i sees keys j <= i + Skv - Sq. `brute_force` spells that
out one query at a time in float64, independently of the workload's own (chunked) reference.
"""

import io
import math
from pathlib import Path

import pytest
import torch
from conftest import rows as read_rows
from rich.console import Console

from harness import backends
from harness.measure import config, memory, runner
from harness.measure.check import compare
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DTYPES
from harness.workloads import attention as attn_module
from harness.workloads.attention import ATTENTION, attended_pairs, visible
from harness.workloads.attention import tolerance_for as attention_tolerance


def params(**kw):
    p = {"phase": "prefill", "batch": 1, "heads": 4, "kv_heads": 2, "seq_q": None, "seq_kv": 16,
         "head_dim": 16, "causal": True, "label": ""}
    p.update(kw)
    p = ATTENTION.complete(p)
    assert ATTENTION.validate(p) is None
    return p


def inputs(p, dtype="fp32", seed=0):
    return ATTENTION.make_inputs(p, DTYPES[dtype], "cpu", torch.Generator().manual_seed(seed))


def brute_force(q, k, v, causal):
    """out[b, h, i] = softmax over the keys query i may see, one query at a time, in float64."""
    b_, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(b_):
        for h in range(hq):
            kv = h // (hq // hkv)
            for i in range(sq):
                last = i + skv - sq if causal else skv - 1
                keys = k[b, kv, :last + 1].double()
                w = torch.softmax(keys @ q[b, h, i].double() / math.sqrt(d), dim=0)
                out[b, h, i] = w @ v[b, kv, :last + 1].double()
    return out


# ---- formulas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sq, skv, causal, pairs", [
    (4, 4, False, 16),
    (4, 4, True, 10),  # 1 + 2 + 3 + 4
    (2, 5, True, 9),  # query 0 sees keys 0..3, query 1 sees 0..4
    (3, 7, True, 18),  # 5 + 6 + 7
    (1, 7, True, 7),  # one decode query sees the whole cache
    (6, 3, False, 18),
])
def test_attended_pairs_by_hand(sq, skv, causal, pairs):
    assert attended_pairs(sq, skv, causal) == pairs
    assert int(visible(range(sq), sq, skv, causal).sum()) == pairs


def test_flops_bytes_and_exps_by_hand():
    p = params(batch=2, heads=4, kv_heads=2, seq_q=2, seq_kv=5, head_dim=8, causal=True)
    assert ATTENTION.flops(p) == 4 * 2 * 4 * 8 * 9 == 2304
    assert ATTENTION.exps(p) == 2 * 4 * 9
    # s·(2·B·Hq·Sq·D + 2·B·Hkv·Skv·D): q read and out written; k and v read once per kv head.
    assert ATTENTION.bytes(p, DTYPES["bf16"]) == 2 * (2 * 2 * 4 * 2 * 8 + 2 * 2 * 2 * 5 * 8) == 1152
    assert ATTENTION.bytes(p, DTYPES["fp32"]) == 2 * 1152


def test_flash_attention_convention_differs_by_s_over_s_plus_1_on_the_square():
    for s in (1024, 4096):
        p = params(batch=2, heads=16, kv_heads=16, seq_kv=s, head_dim=128, causal=True)
        fa = 4 * 2 * 16 * s * s * 128 // 2  # the FlashAttention benchmarks' causal count
        assert ATTENTION.flops(p) / fa == pytest.approx((s + 1) / s)
    # Where Sq < Skv the convention's x0.5 would be far off: one decode query sees every key.
    p = params(phase="decode", heads=32, kv_heads=8, seq_kv=4096, head_dim=128)
    assert ATTENTION.flops(p) == 4 * 32 * 128 * 4096


# ---- parameters ----------------------------------------------------------------------------------

def test_dependent_defaults():
    assert params(phase="decode")["seq_q"] == 1
    assert params(seq_kv=300)["seq_q"] == 300
    assert params(heads=8, kv_heads=None)["kv_heads"] == 8


@pytest.mark.parametrize("group, place, words", [
    ("heads: 30\n    kv_heads: 8", "cases[0].heads", "must be divisible by kv_heads (got 30, 8)"),
    ("heads: 4\n    seq_q: 20", "cases[0].seq_q", "at most seq_kv when causal"),
    ("heads: 4\n    phase: decode\n    seq_q: 65", "cases[0].seq_q", "use phase: prefill"),
    ("model: deepseek-v3", "cases[0].model", "must be one of"),
])
def test_config_errors_name_the_place(group, place, words):
    text = f"cases:\n  - workload: attention\n    seq_kv: 16\n    head_dim: 16\n    {group}\n"
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, "s.yaml")
    assert err.value.place == place and words in err.value.message


def test_model_presets_fill_the_head_layout():
    s = config.parse("cases:\n  - workload: attention\n    model: [llama3-70b, gpt-oss-120b]\n"
                     "    phase: decode\n    seq_kv: 1024\n    backends: [torch]\n", "s.yaml")
    layouts = {c.p["label"]: (c.p["heads"], c.p["kv_heads"], c.p["head_dim"], c.p["seq_q"]) for c in s.cases}
    assert layouts == {"llama3-70b": (64, 8, 128, 1), "gpt-oss-120b": (64, 8, 64, 1)}
    assert "deepseek-v3" not in ATTENTION.presets  # MLA is not a GQA shape


def test_the_shipped_suite_loads():
    s = config.load(Path(__file__).parent.parent / "configs" / "attention.yaml")
    assert {c.backend for c in s.cases} >= {"sdpa-flash", "sdpa-cudnn", "flex", "triton", "triton-decode"}
    assert any(c.p["seq_q"] < c.p["seq_kv"] and c.p["seq_q"] > 1 for c in s.cases)


# ---- memory --------------------------------------------------------------------------------------

def test_memory_estimate_is_the_tensors_plus_a_bounded_check():
    p = params(phase="decode", batch=256, heads=32, kv_heads=8, seq_kv=131072, head_dim=128)
    need, tensors = ATTENTION.memory_bytes(p, DTYPES["bf16"]), ATTENTION.bytes(p, DTYPES["bf16"])
    assert tensors == 2 * (2 * 256 * 32 * 128 + 2 * 256 * 8 * 131072 * 128)  # the 128 GiB cache dominates
    assert tensors < need < tensors + (2 << 30)
    prefill = params(batch=1, heads=64, kv_heads=8, seq_kv=32768, head_dim=128)
    need, tensors = ATTENTION.memory_bytes(prefill, DTYPES["fp32"]), ATTENTION.bytes(prefill, DTYPES["fp32"])
    assert tensors < need < tensors + (2 << 30)


def test_a_cache_that_does_not_fit_is_skipped_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 80 << 30)
    s = config.parse("timing: {warmup_ms: 0, min_samples: 1, max_time_s: 0.01, l2_flush: false}\n"
                     "cases:\n  - workload: attention\n    model: llama3-8b\n    phase: decode\n"
                     "    batch: 256\n    seq_kv: 131072\n    backends: [triton-decode, torch]\n"
                     "    dtype: fp16\n", "s.yaml")
    # isolate="none": free_bytes is patched in this process only
    assert runner.run(s, "cpu", tmp_path, Console(file=io.StringIO()), isolate="none") == 0
    rows = read_rows(tmp_path / "results.csv")
    assert len(rows) == 2 and all(r["status"] == "skipped" and "needs 1" in r["reason"] for r in rows)


# ---- the check -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_brute_force_result_passes_and_poison_fails(dtype):
    p = params(batch=2, seq_q=5, seq_kv=11)
    x = inputs(p, dtype)
    assert torch.isnan(x["out"]).all() and x["k"].float().std() > 0.5
    assert "unwritten" in ATTENTION.check(x, x["out"], p, DTYPES[dtype])
    good = brute_force(x["q"], x["k"], x["v"], True).to(DTYPES[dtype].storage)
    assert ATTENTION.check(x, good, p, DTYPES[dtype]) is None


def test_the_workload_mask_is_bottom_right():
    i = visible(range(3), 3, 5, True)
    assert i.tolist() == [[True, True, True, False, False],
                          [True, True, True, True, False],
                          [True, True, True, True, True]]


@pytest.mark.parametrize("wrong", ["top-left mask", "no scale", "kv head h % Hkv", "one block unwritten",
                                   "tf32-like fp32"])
def test_wrong_results_are_caught(wrong, monkeypatch):
    monkeypatch.setattr(attn_module, "_CHUNK_BYTES", 2048)  # many small chunks: the loops are exercised
    p = params(batch=2, heads=4, kv_heads=2, seq_q=6, seq_kv=13, head_dim=16)
    x = inputs(p)
    q, k, v = x["q"], x["k"], x["v"]
    if wrong == "top-left mask":  # what SDPA's is_causal=True computes when Sq < Skv
        out = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                               v.repeat_interleave(2, 1), is_causal=True)
    elif wrong == "no scale":
        out = brute_force(q * math.sqrt(16), k, v, True).float()
    elif wrong == "kv head h % Hkv":
        out = brute_force(q[:, [0, 2, 1, 3]], k, v, True)[:, [0, 2, 1, 3]].float()
    elif wrong == "one block unwritten":
        out = brute_force(q, k, v, True).float()
        out[1, 3, 4:, 8:] = float("nan")
    else:  # 10-bit mantissas, as TF32 tensor cores would read q and k
        def chop(t):
            return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)
        out = brute_force(chop(q), chop(k), v, True).float()
    problem = ATTENTION.check(x, out, p, DTYPES["fp32"])
    assert problem is not None
    if wrong == "one block unwritten":
        assert "unwritten" in problem and "[1, 3, 4, 8]" in problem
    else:
        assert "exceeds tolerance" in problem


def test_the_check_never_builds_the_whole_score_matrix():
    big = params(batch=4, heads=64, kv_heads=8, seq_kv=32768, head_dim=128)
    groups, rows = attn_module._chunks(big, 4)
    assert groups * 8 * rows * 32768 * 4 <= attn_module._CHUNK_BYTES
    decode = params(phase="decode", batch=256, heads=32, kv_heads=8, seq_kv=512, head_dim=128)
    groups, rows = attn_module._chunks(decode, 4)
    assert rows == 1 and groups > 100  # short caches are checked many kv heads at a time


# ---- backends ------------------------------------------------------------------------------------

CPU = DeviceFacts(kind="cpu", name="cpu")


@pytest.mark.parametrize("backend", ["sdpa-math", "sdpa-flash", "torch"])
@pytest.mark.parametrize("sq, skv", [(5, 12), (12, 12), (1, 9)])
def test_backends_run_the_bottom_right_mask(backend, sq, skv):
    p = params(batch=2, seq_q=sq, seq_kv=skv)
    x = inputs(p)
    b = backends.get("attention", backend)
    assert b.unsupported(p, DTYPES["fp32"], CPU) is None
    out = b.build(x, p, DTYPES["fp32"])()
    if not backend.startswith(("sdpa", "flex")):  # library kernels return their own tensor
        assert out is x["out"]  # written into the poisoned buffer
    problem = compare(out.double(), brute_force(x["q"], x["k"], x["v"], True),
                      attention_tolerance(p, DTYPES["fp32"]), rms_dim=-1)
    assert problem is None, problem


def test_sdpa_backends_without_a_kernel_are_skipped_with_the_reason():
    p = params(seq_q=5, seq_kv=12)
    for name in ("sdpa-efficient", "sdpa-cudnn"):
        reason = backends.get("attention", name).unsupported(p, DTYPES["fp16"], CPU)
        assert reason.startswith(f"torch SDPA has no {name[5:]} kernel for this case on cpu")


def test_the_naive_paths_skip_what_their_score_matrix_would_not_fit(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 8 << 30)
    p = params(batch=8, heads=32, kv_heads=8, seq_kv=16384, head_dim=128)
    for name in ("torch", "sdpa-math"):
        reason = backends.get("attention", name).unsupported(p, DTYPES["bf16"], CPU)
        assert reason.startswith("materializes the 8x32x16384x16384 scores: needs")


# ---- end to end ----------------------------------------------------------------------------------

SUITE = """
suite: tiny-attention
timing: {warmup_ms: 0, min_samples: 2, max_time_s: 0.01, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: attention
    heads: 4
    kv_heads: 2
    head_dim: 16
    shapes: [{seq_q: 7, seq_kv: 23}, {phase: decode, seq_q: 2, seq_kv: 40}]
    backends: [sdpa-flash, sdpa-cudnn, sdpa-math, triton, triton-decode, torch]
    dtype: [fp32, fp16, bf16]
  - workload: attention
    heads: 2
    head_dim: 16
    seq_q: 7
    seq_kv: 23
    backends: [flex]
    dtype: fp32
"""


@pytest.mark.slow
def test_a_tiny_suite_runs_through_the_runner(tmp_path):
    s = config.parse(SUITE, "tiny.yaml")
    assert runner.run(s, "cpu", tmp_path, Console(file=io.StringIO())) == 0
    rows = read_rows(tmp_path / "results.csv")
    by = {(r["backend"], r["dtype"], r["seq_q"]): r for r in rows}
    for backend in ("sdpa-flash", "sdpa-math", "triton", "triton-decode", "torch"):
        for dtype in ("fp32", "fp16"):
            for sq in ("7", "2"):
                assert by[(backend, dtype, sq)]["status"] == "ok", by[(backend, dtype, sq)]["reason"]
    assert by[("flex", "fp32", "7")]["status"] == "ok", by[("flex", "fp32", "7")]["reason"]
    assert by[("triton", "bf16", "7")]["status"] == "skipped"  # the interpreter has no bf16
    assert by[("sdpa-cudnn", "fp16", "7")]["status"] == "skipped"
    assert by[("triton-decode", "fp32", "2")]["splits"] == "1"
    for r in rows:
        p = {k: int(r[k]) for k in ("batch", "heads", "seq_q", "seq_kv", "head_dim")}
        assert int(r["flops"]) == 4 * p["batch"] * p["heads"] * p["head_dim"] * attended_pairs(
            p["seq_q"], p["seq_kv"], True)
    assert "## attention" in (tmp_path / "summary.md").read_text()
