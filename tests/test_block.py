"""The block workload: hand-computed formulas, suite validation and presets, the training step's
forward and backward, the decode step's use of its KV cache, and each backend against the reference."""

import contextlib
import gc
import re
import weakref

import pytest
import torch

from harness import backends
from harness.measure import config
from harness.backends import block as block_backends
from harness.workloads import block as block_workload
from harness.hardware.device import DeviceFacts, detect
from harness.measure.dtypes import DTYPES
from harness.workloads.block import BLOCK, expert_groups, weight_shapes
from harness.workloads.block_model import Ops, causal_attend, expert_loop, forward, rope_tables

CPU = DeviceFacts(kind="cpu", name="cpu")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FACTS = detect(DEVICE)
DEFAULTS = {p.name: p.default for p in BLOCK.params}


def block(**kw) -> dict:
    p = BLOCK.complete({**DEFAULTS, **kw})
    assert BLOCK.validate(p) is None
    return p


DENSE = dict(hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16)
MOE = dict(hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=4, experts=4, top_k=2, shared_experts=1)
TINY_MOE = dict(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=16, experts=4, top_k=2, routing="uniform")
TINY_DENSE = dict(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=48)


def build(name, p, dtype="fp32", seed=0):
    inputs = BLOCK.make_inputs(p, DTYPES[dtype], DEVICE, torch.Generator(DEVICE).manual_seed(seed))
    return inputs, backends.get("block", name).build(inputs, p, DTYPES[dtype])


# ---- formulas -------------------------------------------------------------------------------

def test_dense_formulas_by_hand():
    # N = attention 2·8·2·4 + 2·8·1·4 = 192, plus MLP 3·8·16 = 384: 576.
    train = block(**DENSE, phase="train", batch=2, seq=3)
    assert BLOCK.extra_columns(train, DTYPES["bf16"])["params_active"] == 576
    # 6·N·B·S + 12·B·Hq·D·P with P = 3·4/2 = 6 attended pairs.
    assert BLOCK.flops(train) == 6 * 576 * 6 + 12 * 2 * 2 * 4 * 6 == 21888
    assert BLOCK.bytes(train, DTYPES["bf16"]) == 2 * (3 * 576 + 4 * 6 * 8)  # weights x3, x, y, dx, dy
    assert BLOCK.exps(train) == 2 * 2 * 2 * 6  # forward + FlashAttention backward's recompute
    decode = block(**DENSE, phase="decode", batch=2, seq_kv=5)
    assert BLOCK.flops(decode) == 2 * 576 * 2 + 4 * 2 * 2 * 4 * 5 == 2624
    assert BLOCK.bytes(decode, DTYPES["bf16"]) == 2 * (576 + 2 * 2 * 1 * 5 * 4)  # weights + K/V cache
    assert BLOCK.exps(decode) == 2 * 2 * 5


def test_moe_formulas_count_active_experts():
    # N = 192 + router 8·4 + (k 2 + shared 1)·3·8·4 = 192 + 32 + 288 = 512.
    one = block(**MOE, phase="decode", batch=1, seq_kv=6)
    assert BLOCK.extra_columns(one, DTYPES["fp16"]) == {"params_active": 512, "experts_active": 2}
    assert BLOCK.bytes(one, DTYPES["fp16"]) == 2 * (512 + 2 * 1 * 1 * 6 * 4)
    # Batch 4, balanced: tokens use experts {0,1}, {2,3}, {0,1}, {2,3}: all 4 are read.
    four = block(**MOE, phase="decode", batch=4, seq_kv=6)
    assert BLOCK.extra_columns(four, DTYPES["fp16"])["experts_active"] == 4
    assert BLOCK.flops(four) == 2 * 512 * 4 + 4 * 4 * 2 * 4 * 6
    assert BLOCK.bytes(four, DTYPES["fp16"]) == 2 * (192 + 32 + (4 + 1) * 96 + 2 * 4 * 1 * 6 * 4)


def test_dense_equivalent_has_the_active_parameters_of_its_moe_less_the_router():
    moe = block(**MOE, phase="train", batch=1, seq=4)
    dense = block(**MOE, phase="train", batch=1, seq=4, mlp="dense-equivalent")
    assert weight_shapes(dense)["w_gate_up"] == (2 * (2 + 1) * 4, 8)  # width (k + shared)·I
    assert BLOCK.extra_columns(dense, DTYPES["bf16"])["params_active"] == 512 - 32
    assert BLOCK.flops(moe) - BLOCK.flops(dense) == 6 * 32 * 4


# ---- suites, presets, memory ------------------------------------------------------------------

def parse(group: str):
    return config.parse(f"cases:\n  - workload: block\n{group}", "s.yaml").cases


@pytest.mark.parametrize("group, message", [
    ("    model: llama3-8b\n    phase: train\n", "cases[0].seq: required for phase train"),
    ("    model: llama3-8b\n    phase: decode\n    seq_kv: 8\n    seq: 4\n", "cases[0].seq: not used by phase decode"),
    ("    model: llama3-8b\n    seq: 8\n    cuda_graph: true\n", "cases[0].cuda_graph: only for phase decode"),
    ("    model: llama3-8b\n    seq: 8\n    mlp: dense-equivalent\n", "mlp: only for a MoE block"),
    ("    model: mixtral-8x7b\n    seq: 8\n    top_k: 9\n", "top_k: must be between 1 and experts (8)"),
    ("    model: qwen3-30b-a3b\n    seq: 8\n    routing: zipf\n", "routing: must be balanced, uniform"),
])
def test_suite_mistakes_name_the_key(group, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        parse(group)


def test_presets_fill_the_block_and_label_the_deepseek_stand_in():
    cases = parse("    model: [deepseek-v3, llama3-70b]\n    phase: decode\n    seq_kv: 16\n    backends: eager\n")
    deepseek, llama = (c.p for c in cases)
    assert deepseek["label"] == "deepseek-v3 (GQA stand-in)"
    assert (deepseek["experts"], deepseek["top_k"], deepseek["shared_experts"], deepseek["heads"]) == (256, 8, 1, 128)
    assert (llama["experts"], llama["intermediate"], llama["label"]) == (0, 28672, "llama3-70b")
    # Its experts alone are 256·3·7168·2048 bf16 values (22.5 GB): the estimate must cover them.
    assert BLOCK.memory_bytes(deepseek, DTYPES["bf16"]) > 256 * 3 * 7168 * 2048 * 2
    train = {**deepseek, "phase": "train", "seq": 4096, "seq_kv": None}
    assert BLOCK.memory_bytes(train, DTYPES["bf16"]) > 80e9  # weights, gradients and a float reference


# ---- the training step ------------------------------------------------------------------------

def test_train_step_runs_forward_and_backward_and_matches_the_reference():
    p = block(**TINY_MOE, phase="train", batch=2, seq=6, shared_experts=1)
    inputs, step = build("eager", p)
    out = step()
    assert BLOCK.check(inputs, out, p, DTYPES["fp32"]) is None  # output and every gradient
    w = inputs["weights"]
    assert inputs["x"].grad is not None and w["wqkv"].grad is not None and w["router"].grad is not None
    used = {e for e in range(4) if bool((inputs["topk_ids"] == e).any())}
    assert all((w["experts_gate_up"][e].grad is not None) == (e in used) for e in range(4))
    first = inputs["x"].grad.clone()
    step()  # gradients are set to None first, not accumulated
    torch.testing.assert_close(inputs["x"].grad, first)


def test_train_gradients_agree_with_finite_differences():
    p = block(**TINY_DENSE, phase="train", batch=1, seq=5)
    inputs = BLOCK.make_inputs(p, DTYPES["fp32"], "cpu", torch.Generator().manual_seed(1))
    w = {k: v.detach().double() for k, v in inputs["weights"].items()}
    x, dy = inputs["x"].detach().double(), inputs["dy"].double()
    rope = rope_tables(p, "cpu", torch.float64)

    def loss(wo: torch.Tensor) -> torch.Tensor:
        return (forward({**w, "wo": wo}, x, p, Ops(causal_attend), rope) * dy).sum()

    wo = w["wo"].clone().requires_grad_(True)
    loss(wo).backward()
    direction = torch.randn(wo.shape, dtype=wo.dtype, generator=torch.Generator().manual_seed(2))
    # Central differences err by about eps^2 * f''' and 1e-16 / eps: at 1e-5 both are near 1e-10.
    eps = 1e-5
    numeric = (loss(w["wo"] + eps * direction) - loss(w["wo"] - eps * direction)) / (2 * eps)
    assert float((wo.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-6)


# ---- the decode step ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eager", "kernels"])
@pytest.mark.parametrize("shape", [TINY_DENSE, dict(TINY_MOE, top_k=4, routing="balanced")], ids=["dense", "moe"])
def test_decode_with_a_filled_cache_equals_the_full_sequence(name, shape):
    """The last token's output from the cache equals a full causal forward's last row. (The MoE uses
    every expert per token, so its routing does not depend on the token count.)"""
    length = 7
    train = block(**shape, phase="train", batch=2, seq=length)
    decode = block(**shape, phase="decode", batch=2, seq_kv=length)
    inputs = BLOCK.make_inputs(decode, DTYPES["fp32"], DEVICE, torch.Generator(DEVICE).manual_seed(2))
    x = torch.randn(2, length, shape["hidden"], device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(3))
    kept = {}

    def attend(q, k, v):
        kept.update(k=k, v=v)
        return causal_attend(q, k, v)
    ops = Ops(attend)
    if "experts_gate_up" in inputs["weights"]:  # balanced with k = E: every token's ids are 0, 1, 2, 3
        ops.experts, ops.ids = expert_loop(expert_groups(train, DEVICE)), inputs["topk_ids"][:1].repeat(2 * length, 1)
    with torch.no_grad():
        full = forward(inputs["weights"], x.flatten(0, 1), train, ops, rope_tables(train, DEVICE, x.dtype))
    inputs["k_cache"][:, :, :-1] = kept["k"][:, :, :-1]
    inputs["v_cache"][:, :, :-1] = kept["v"][:, :, :-1]
    inputs["x"] = x[:, -1].contiguous()
    reason = backends.get("block", name).unsupported(decode, DTYPES["fp32"], FACTS)
    if reason:
        pytest.skip(reason)
    out = backends.get("block", name).build(inputs, decode, DTYPES["fp32"])()
    tol = 1e-4 if DEVICE == "cpu" else 2e-3  # GPU SDPA kernels may round fp32 differently per path
    torch.testing.assert_close(out, full.view(2, length, -1)[:, -1], rtol=tol, atol=tol)
    torch.testing.assert_close(inputs["k_cache"][:, :, -1], kept["k"][:, :, -1])  # the new token's k


def test_decode_output_depends_on_the_cache():
    p = block(**TINY_DENSE, phase="decode", batch=1, seq_kv=9)
    inputs, step = build("eager", p)
    first = step().clone()
    inputs["v_cache"][:, :, 0] += 1.0  # an old position, not the slot the step writes
    assert not torch.allclose(step(), first)


# ---- backends -----------------------------------------------------------------------------------

CASES = {
    "dense train": block(**TINY_DENSE, phase="train", batch=2, seq=5),
    "moe train": block(**TINY_MOE, phase="train", batch=2, seq=5),
    "dense decode": block(**TINY_DENSE, phase="decode", batch=3, seq_kv=20),
    "moe decode": block(**TINY_MOE, phase="decode", batch=3, seq_kv=20, shared_experts=1),
    "moe dense-equivalent decode": block(**TINY_MOE, phase="decode", batch=2, seq_kv=9, mlp="dense-equivalent"),
}


@pytest.mark.parametrize("name", ["eager", "kernels"])
@pytest.mark.parametrize("case", CASES)
def test_backends_match_the_reference(name, case):
    p = CASES[case]
    dtype = "fp32" if DEVICE == "cpu" else "bf16"
    reason = backends.get("block", name).unsupported(p, DTYPES[dtype], FACTS)
    if reason:
        assert name == "kernels" and p["phase"] == "train" and "forward-only" in reason
        pytest.skip(reason)
    inputs, step = build(name, p, dtype)
    assert BLOCK.check(inputs, step(), p, DTYPES[dtype]) is None


def test_the_check_catches_a_wrong_output_and_a_wrong_gradient():
    p = CASES["moe train"]
    inputs, step = build("eager", p)
    out = step()
    inputs["weights"]["router"].grad[0, 0] += 1.0
    assert "gradient of router" in BLOCK.check(inputs, out, p, DTYPES["fp32"])
    decode = CASES["dense decode"]
    inputs, step = build("eager", decode)
    out = step()
    out[1, 3] = float("nan")
    assert "non-finite" in BLOCK.check(inputs, out, decode, DTYPES["fp32"])


@pytest.mark.slow
def test_compiled_runs_the_same_block():
    """torch.compile of a MoE training step (the expert loop unrolled, forward and backward)."""
    p = block(**TINY_MOE, phase="train", batch=1, seq=4)
    dtype = "fp32" if DEVICE == "cpu" else "bf16"
    reason = backends.get("block", "compiled").unsupported(p, DTYPES[dtype], FACTS)
    if reason:
        pytest.skip(reason)
    inputs, step = build("compiled", p, dtype)
    assert BLOCK.check(inputs, step(), p, DTYPES[dtype]) is None


def test_cuda_graph_needs_a_gpu():
    p = block(**TINY_DENSE, phase="decode", batch=1, seq_kv=4, cuda_graph=True)
    for name in ("eager", "compiled", "kernels"):
        assert "CUDA GPU" in backends.get("block", name).unsupported(p, DTYPES["fp32"], CPU)


@pytest.fixture
def cpu_stand_ins_for_cuda_graphs(monkeypatch):
    """torch.cuda's stream and graph API as no-ops, so build() runs its graph path on a CPU. A real
    graph keeps no tensor alive either: only what the returned closure holds survives."""
    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        def replay(self):
            pass
    for name, value in (("Stream", Stream), ("current_stream", Stream), ("CUDAGraph", Graph),
                        ("stream", lambda s: contextlib.nullcontext()),
                        ("graph", lambda g: contextlib.nullcontext())):
        monkeypatch.setattr(torch.cuda, name, value)


@pytest.mark.parametrize("name", ["eager", "kernels"])
def test_the_graphed_step_keeps_alive_what_the_graph_reads(name, cpu_stand_ins_for_cuda_graphs, monkeypatch):
    """The regression of the first H200 run: the replay closure dropped the step, so the module's RoPE
    tables and the expert loop's index tensors went back to the allocator while the graph still read
    them; once the reference check reused that memory, a replay's index_select read garbage ids."""
    p = block(**{**TINY_MOE, "routing": "balanced"}, phase="decode", batch=3, seq_kv=6, cuda_graph=True)
    watched = []
    make_module, make_groups = block_backends._module, block_workload.expert_groups

    def module(*args):
        m = make_module(*args)
        watched.extend(weakref.ref(t) for t in (m, m.cos, m.sin))
        return m

    def groups(*args):
        g = make_groups(*args)
        watched.extend(weakref.ref(t) for _, rows, pairs in g for t in (rows, pairs))
        return g
    monkeypatch.setattr(block_backends, "_module", module)
    monkeypatch.setattr(block_workload, "expert_groups", groups)
    inputs = BLOCK.make_inputs(p, DTYPES["fp32"], "cpu", torch.Generator().manual_seed(0))
    replay = backends.get("block", name).build(inputs, p, DTYPES["fp32"])
    gc.collect()
    assert len(watched) == (3 + 2 * 4 if name == "eager" else 3)  # balanced: 3 tokens x 2 slots reach all 4 experts
    assert all(ref() is not None for ref in watched)
    assert replay() is inputs["out"]
    del replay
    gc.collect()
    assert all(ref() is None for ref in watched)  # held by the closure, not leaked elsewhere


def _overwrite_freed_small_blocks_with_zeros() -> list:
    """Hand every free block of the caching allocator's small pool (this stream's) to a new zeroed
    tensor: a graph that still reads a freed buffer now reads zeros: RoPE tables of 0 (so q = k = 0),
    expert ids of 0, a stale output. Returns the tensors, which must stay alive while the test runs."""
    gc.collect()
    stream = torch.cuda.current_stream().cuda_stream
    sizes = [b["size"] for seg in torch.cuda.memory_snapshot()
             if seg["segment_type"] == "small" and seg["stream"] == stream
             for b in seg["blocks"] if b["state"] == "inactive"]
    return [torch.zeros(n, dtype=torch.uint8, device="cuda") for n in sorted(sizes, reverse=True)]


# compiled runs with graphs only: each torch.compile costs seconds, and graph capture of compiled
# code is the riskier path (compiled without graphs runs on the CPU, in training, above).
@pytest.mark.gpu
@pytest.mark.parametrize("name, graph", [("eager", False), ("eager", True), ("kernels", False), ("kernels", True),
                                         ("compiled", True)])
def test_gpu_decode_in_bf16_with_and_without_graphs(name, graph, fixed_kernel_configs):
    """The checked call, then the timed calls' situation: the check's allocations come and go, freed
    memory is reused, and a replay must still compute the block (mixtral-style routing: 8 pairs)."""
    p = block(**TINY_MOE, phase="decode", batch=4, seq_kv=300, cuda_graph=graph)
    inputs, step = build(name, p, "bf16")
    assert BLOCK.check(inputs, step(), p, DTYPES["bf16"]) is None
    zeros = _overwrite_freed_small_blocks_with_zeros()
    out = step()
    torch.cuda.synchronize()  # a device-side assert surfaces here
    assert BLOCK.check(inputs, out, p, DTYPES["bf16"]) is None
    del zeros
