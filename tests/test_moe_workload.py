"""The MoE workload without any backend: formulas by hand, routings, presets, validation, memory,
`mfu plan` without allocating, and the check catching wrong or unwritten outputs."""

from pathlib import Path

import pytest
import torch

from harness.measure import config, memory, plan
from harness.hardware import specs
from harness.measure.case import Context, run_case
from harness.hardware.device import detect
from harness.measure.dtypes import DTYPES
from harness.workloads.moe import MOE, dense_equivalent_bytes, realize, reference

ROOT = Path(__file__).resolve().parent.parent
BF16, FP16, FP8 = DTYPES["bf16"], DTYPES["fp16"], DTYPES["fp8"]


def moe(**kw):
    p = {"tokens": 3, "experts": 8, "top_k": 2, "hidden": 16, "intermediate": 8, "routing": "balanced",
         "seed": 0, "label": ""}
    return {**p, **kw}


def suite(group: str):
    return config.parse("cases:\n  - workload: moe\n" + group, "moe.yaml")


def test_balanced_formulas_by_hand():
    # token t takes experts 2t and 2t+1: tokens 0..2 touch experts 0..5, so E_act = 6
    p = moe()
    assert realize(3, 8, 2, "balanced", 0).ids.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert MOE.flops(p) == 6 * 3 * 2 * 16 * 8
    assert MOE.bytes(p, BF16) == 6 * 3 * 16 * 8 * 2 + 2 * 3 * 16 * 2
    assert MOE.extra_columns(p, BF16) == {"experts_active": 6, "expert_tokens_max": 1}
    # 5 tokens x 2 = 10 pairs wrap around 8 experts: all active, experts 0 and 1 get two each
    assert MOE.extra_columns(moe(tokens=5), FP16) == {"experts_active": 8, "expert_tokens_max": 2}
    assert MOE.bytes(moe(tokens=5), FP16) == 8 * 3 * 16 * 8 * 2 + 2 * 5 * 16 * 2
    # fp8 reads e4m3 weights and x (1 byte) and writes bf16 (2 bytes)
    assert MOE.bytes(p, FP8) == 6 * 3 * 16 * 8 * 1 + 3 * 16 * (1 + 2)


def test_decode_moves_only_the_active_experts():
    ds = moe(tokens=1, experts=256, top_k=8, hidden=7168, intermediate=2048)
    assert MOE.extra_columns(ds, BF16)["experts_active"] == 8
    assert MOE.bytes(ds, BF16) == 8 * 3 * 7168 * 2048 * 2 + 2 * 7168 * 2
    assert dense_equivalent_bytes(ds, BF16) == 3 * 7168 * 2048 * 2 + 2 * 8 * 7168 * 2


@pytest.mark.parametrize("routing", ["uniform", "zipf:1.2"])
def test_random_routings_pick_distinct_experts_reproducibly(routing):
    r = realize(300, 16, 4, routing, 7)
    assert all(len(set(row)) == 4 for row in r.ids.tolist())
    assert r.ids.min() >= 0 and r.ids.max() < 16
    assert torch.allclose(r.weights.sum(1), torch.ones(300)) and (r.weights > 0).all()
    assert int(r.counts.sum()) == 300 * 4
    realize.cache_clear()
    again = realize(300, 16, 4, routing, 7)
    assert torch.equal(again.ids, r.ids) and torch.equal(again.weights, r.weights)
    assert not torch.equal(realize(300, 16, 4, routing, 8).ids, r.ids)


def test_zipf_skew_concentrates_tokens_on_fewer_experts():
    loads = [realize(64, 64, 2, routing, 0) for routing in ("uniform", "zipf:0.5", "zipf:1.5")]
    busiest = [int(r.counts.max()) for r in loads]
    active = [r.experts_active for r in loads]
    assert busiest[0] < busiest[1] < busiest[2]
    assert active[0] > active[1] > active[2]


def test_model_presets_fill_the_expert_shape_and_explicit_keys_win():
    cases = suite("    model: [deepseek-v3, qwen3-30b-a3b]\n    tokens: [1, 64]\n    backends: [triton]\n").cases
    by = {(c.p["label"], c.p["tokens"]): c.p for c in cases}
    assert len(cases) == 4
    ds = by[("deepseek-v3", 64)]
    assert (ds["experts"], ds["top_k"], ds["hidden"], ds["intermediate"]) == (256, 8, 7168, 2048)
    assert by[("qwen3-30b-a3b", 1)]["experts"] == 128 and ds["routing"] == "balanced"
    small = suite("    model: mixtral-8x7b\n    tokens: 4\n    experts: 4\n    backends: [triton]\n").cases
    assert small[0].p["experts"] == 4 and small[0].p["hidden"] == 4096
    assert set(MOE.presets) == {"mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "llama4-scout",
                                "llama4-maverick", "gpt-oss-120b", "gpt-oss-20b"}


@pytest.mark.parametrize("key, value, message", [
    ("routing", "zipf", "must be balanced, uniform or zipf:<s> with s > 0"),
    ("routing", "zipf:-1", "(got 'zipf:-1')"),
    ("top_k", 9, "must be at most experts (8)"),
])
def test_impossible_parameters_name_what_is_allowed(key, value, message):
    p = {"tokens": 4, "experts": 8, "top_k": 2, "hidden": 16, "intermediate": 8, key: value}
    with pytest.raises(config.ConfigError) as err:
        suite("".join(f"    {k}: {v!r}\n" for k, v in p.items()))
    assert err.value.place == f"cases[0].{key}" and message in err.value.message


def test_memory_estimate_counts_every_weight_of_a_big_preset():
    ds = moe(tokens=8192, experts=256, top_k=8, hidden=7168, intermediate=2048)
    weights = 256 * 3 * 7168 * 2048 * 2
    need = MOE.memory_bytes(ds, BF16)
    assert weights < need < weights + (10 << 30)
    assert need > MOE.memory_bytes({**ds, "tokens": 1}, BF16)


def test_a_preset_that_does_not_fit_is_skipped_before_allocating(monkeypatch):
    case = suite("    model: deepseek-v3\n    tokens: 1\n    backends: [torch-loop]\n    dtype: bf16\n").cases[0]
    monkeypatch.setattr(memory, "free_bytes", lambda device: 8 << 30)
    monkeypatch.setattr(MOE, "make_inputs", lambda *a: pytest.fail("allocated"))
    row, samples = run_case(case, Context("cpu", detect("cpu"), None))
    assert row["status"] == "skipped" and row["reason"].startswith("needs 2")
    assert row["experts_active"] == 8 and samples == []


def test_plan_of_the_shipped_suite_shows_deepseek_without_allocating(monkeypatch):
    monkeypatch.setattr(MOE, "make_inputs", lambda *a: pytest.fail("plan allocated inputs"))
    rows = plan.plan(config.load(ROOT / "configs" / "moe.yaml"), specs.lookup("h100-sxm"))
    ds = [r for r in rows if r["label"] == "deepseek-v3"]
    tokens = {r["tokens"] for r in ds}
    assert min(tokens) == 1 and max(tokens) == 16384
    assert {r["routing"] for r in ds} >= {"balanced", "uniform", "zipf:1.0"}
    for r in ds:
        assert r["flops"] == 6 * r["tokens"] * 8 * 7168 * 2048 and r["bytes"] > 0
        weights_gib = 256 * 3 * 7168 * 2048 * DTYPES[r["dtype"]].size / 2**30  # 21 GiB in bf16
        assert r["memory_gib"] > weights_gib and 1 <= r["experts_active"] <= 256


def small_inputs(p, dtype=FP16):
    return MOE.make_inputs(p, dtype, "cpu", torch.Generator().manual_seed(0))


def test_the_check_passes_the_reference_and_catches_wrong_or_unwritten_rows():
    p = moe(tokens=6, routing="uniform")
    inputs = small_inputs(p)
    good = reference(inputs, p).to(torch.float16)
    assert MOE.check(inputs, good, p, FP16) is None
    wrong = good.clone()
    wrong[4, 3] += 0.5
    assert "exceeds tolerance" in MOE.check(inputs, wrong, p, FP16) and "[4, 3]" in MOE.check(inputs, wrong, p, FP16)
    unwritten = good.clone()
    unwritten[5] = float("nan")
    assert "unwritten" in MOE.check(inputs, unwritten, p, FP16)
    assert "expected (6, 16)" in MOE.check(inputs, good[:5], p, FP16)


def test_inputs_are_random_scaled_and_the_output_poisoned():
    p = moe(tokens=4)
    inputs = small_inputs(p)
    assert inputs["w_gate_up"].shape == (8, 16, 16) and inputs["w_down"].shape == (8, 16, 8)
    assert inputs["x"].abs().sum() > 0 and inputs["w_down"].abs().max() < 3
    assert inputs["out"].isnan().all() and "w_down_scale" not in inputs
    assert torch.equal(inputs["topk_ids"], realize(4, 8, 2, "balanced", 0).ids)


def test_fp8_inputs_carry_per_expert_scales_and_the_reference_quantizes_h():
    p = moe(tokens=4)
    inputs = small_inputs(p, FP8)
    assert inputs["w_gate_up"].dtype == inputs["x"].dtype == torch.float8_e4m3fn
    assert inputs["out"].dtype == torch.bfloat16 and inputs["out"].isnan().all()
    assert torch.allclose(inputs["w_gate_up_scale"], torch.full((8,), 16 ** -0.5))
    assert torch.allclose(inputs["w_down_scale"], torch.full((8,), 8 ** -0.5))
    assert inputs["w_down"].float().std() > 0.5  # N(0, 1) in e4m3, the scale kept apart
    ref = reference(inputs, p)
    assert MOE.check(inputs, ref.to(torch.bfloat16), p, FP8) is None
    unquantized = reference({**inputs, "x": inputs["x"].float()}, p)  # the same chain without fp8 h
    assert 0 < (unquantized - ref).abs().max() < 0.2 * ref.abs().max()


@pytest.mark.parametrize("skip_last_k_block", [False, True], ids=["hopper-fp8", "skipped-k-block"])
def test_fp8_dense_equivalent_at_large_k_passes_hopper_rounding_and_fails_a_wrong_k_loop(skip_last_k_block):
    # The H200 run's `dense-equivalent` fp8 row (K = 7168) was a mismatch under the old elementwise
    # rule: gate/up from a 13-bit truncating accumulator (promoted to fp32 every 128 K) differs a
    # little from the fp32 reference, which flips some of h's e4m3 roundings by a whole step.
    from test_check import reduced_accumulator

    from harness.workloads.moe import DENSE, expert_weights, quantize_h

    p = moe(tokens=8, experts=2, top_k=4, hidden=7168, intermediate=128)
    inputs = small_inputs(p, FP8)
    x = inputs["x"].double().repeat_interleave(p["top_k"], dim=0)
    w_gate_up, w_down = (w.double() for w in expert_weights(inputs, 0))
    k = p["hidden"] - (128 if skip_last_k_block else 0)
    # the per-tensor scale is applied after the fp8 sum, as torch._scaled_mm does
    gate_up = reduced_accumulator(x[:, :k], inputs["w_gate_up"][0].double().T[:k], 13, 32, 128, truncate=True)
    gate_up = (gate_up * inputs["w_gate_up_scale"][0].double()).float()
    i = p["intermediate"]
    h = quantize_h(torch.nn.functional.silu(gate_up[:, :i]) * gate_up[:, i:]).double()
    out = (h @ w_down.T).to(torch.bfloat16)
    problem = MOE.check(inputs, out, p, FP8, DENSE)
    assert (problem is not None) == skip_last_k_block, problem
