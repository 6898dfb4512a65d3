"""One transformer block, as a training step or one decode step: parameters, accounting, the block's
math (shared by every backend and the reference), inputs and the check.

The block (pre-norm, as in Llama, Mixtral, Qwen 3, gpt-oss): x → h = x + Wo·attn(rope(Wq·n), rope(Wk·n),
Wv·n), n = RMSNorm(x); y = h + mlp(RMSNorm(h)). Attention is GQA (query head i reads kv head
i // (Hq/Hkv)), bottom-right causal; the MLP is SwiGLU, W_down(silu(W_gate·m) ⊙ W_up·m), or a routed MoE
of SwiGLU experts (a router W_r [E, H], top-k, the k weights a softmax over the chosen logits, as in
Mixtral and Qwen 3) plus `shared_experts` always-active experts of the routed width (DeepSeek-V3).
Left out, since they do not change the matmul work: biases, QK-norm (Qwen 3), attention sinks and
sliding windows (gpt-oss: the suite's seq says which layer it is), MoE load-balancing losses.
deepseek-v3's attention is MLA; its preset runs a 128-head GQA stand-in with head_dim 128 (labelled
so): its MLP side is exact, its attention is not.

Phases. `train`: forward and backward over `batch` sequences of `seq` tokens, causal (the closure
sets every gradient to None first, as `zero_grad(set_to_none=True)` does, so each step writes its
gradients instead of accumulating into old ones; no optimizer step). `decode`: one new token per
sequence against a KV cache of `seq_kv` positions: the new token's k and v are written at the last
position (seq_kv − 1) and the query attends to all seq_kv keys. Each call writes the same slot, so
repeated calls are identical work. `cuda_graph: true` (decode only) replays the step from a CUDA
graph captured once, as vLLM, SGLang and gpt-fast run decode: launch overhead is then out of the
time. Train steps are never captured: real MoE training routes differently every step.

Routing. Which experts each token uses is the MoE workload's realized routing (harness/workloads/
moe.py: balanced, uniform or zipf, from the parameters alone), not the router's top-k: with random
weights a router's choice is arbitrary anyway, and this way E_act, the byte count and every backend
are fixed by the case. The router still runs: the k weights are a softmax of its logits at the
chosen experts, so it is in the forward and the backward like a real router.
`mlp: dense-equivalent` replaces a MoE's experts (routed and shared) by one dense SwiGLU of width
(top_k + shared_experts)·I: the same active matmul parameters (less the router), the dense block
MoE training MFU is compared with.

Accounting (FLOPs count a multiply-add as 2; s = bytes per element):
  N = H·Hq·D + 2·H·Hkv·D + Hq·D·H  (q, k, v and o projections)
      + 3·H·F for a dense MLP of width F, or H·E + (k + shared)·3·H·I for a MoE:
      the matmul parameters one token passes through (norms are not matmuls).
  train:  flops = 6·N·B·S + 12·B·Hq·D·P,  P = S(S+1)/2 attended pairs per sequence and head.
          6·N per token is 2·N forward plus 4·N backward (input and weight gradients), as in Kaplan
          et al. (arXiv:2001.08361) and PaLM's MFU (arXiv:2204.02311, appendix B); 12·D per pair is
          attention's 4·D forward (QKᵀ and PV) tripled for its backward. PaLM (6N + 12·L·H·Q·T per
          token) and torchtitan (the same formula) count 12·Hq·D·S per token and layer, i.e. S²
          pairs per sequence, for causal models too: 2S/(S+1), about twice, the pairs a causal mask
          lets through, so their attention term reads about 2x ours and their MFU is higher by that
          term's share. FlashAttention's benchmarks halve S² for causal: S/(S+1) of ours.
          bytes = s·(3·W + 4·B·S·H): a lower bound, not a traffic count. W = weights touched
          (attention + router + the E_act experts that receive tokens, or the dense MLP); they
          are read in the forward and again in the backward, and their gradients written once;
          the block's input and output are read or written once each, and so are their
          gradients. Saved activations are left out: an implementation may recompute them.
  decode: flops = 2·N·B + 4·B·Hq·D·seq_kv.
          bytes = s·(W + 2·B·Hkv·seq_kv·D): every weight touched, read once, and the K/V cache.
  exps:   softmax exponentials of the attention: B·Hq·P forward, doubled in train because
          FlashAttention's backward recomputes them; B·Hq·seq_kv at decode. SiLU's are left out.
  MFU and MBU follow DESIGN.md (datasheet peak of the dtype; datasheet bandwidth).

Check. The reference is this module's math on the same inputs and weights in float32 (float64 for
fp32 cases), experts upcast one at a time; train also compares the input gradient and every weight
gradient, from torch.autograd.grad on the reference (rounded once to the weight dtype).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.measure import models
from harness.measure.check import Tolerance, compare, rows_from, tolerance
from harness.measure.dtypes import DType, matmul_precision
from harness.workloads import LABEL, Param, Workload
from harness.workloads.attention import attended_pairs
from harness.workloads.block_model import Ops, expert_loop, forward, rope_tables
from harness.workloads.moe import ROUTINGS, by_expert, parse_routing, realize, spans

DENSE_EQUIVALENT = "dense-equivalent"
# Roundings to the storage dtype along the chain, for harness/measure/check.py's rule: the forward rounds
# a dozen intermediates (norms, q/k/v, attention, projections, residuals, k expert terms), and
# gradients go through about twice as many. (Measured on CPU blocks of 65K outputs with the
# |out - ref| / (|ref| + rms) metric: bf16 output up to 2e-2, gradients up to 5e-2, the fused qkv
# weight's; fp16 about 8x less.) A wrong expert, weight or mask is O(1).
OUTPUT_ROUNDINGS = 16
GRAD_ROUNDINGS = 32


# ---- sizes and formulas ---------------------------------------------------------------------

def is_moe(p: dict) -> bool:
    """Whether the block routes tokens (a MoE preset run as itself, not its dense-equivalent)."""
    return p["experts"] > 0 and p["mlp"] == "model"


def tokens(p: dict) -> int:
    return p["batch"] * (p["seq"] if p["phase"] == "train" else 1)


def mlp_width(p: dict) -> int:
    """The dense MLP's width: the preset's, or (top_k + shared)·I for a MoE's dense-equivalent."""
    if p["experts"] == 0:
        return p["intermediate"]
    return (p["top_k"] + p["shared_experts"]) * p["intermediate"]


def routing(p: dict):
    return realize(tokens(p), p["experts"], p["top_k"], p["routing"], p["seed"])


def experts_active(p: dict) -> int | None:
    return routing(p).experts_active if is_moe(p) else None


def attention_params(p: dict) -> int:
    h, d = p["hidden"], p["head_dim"]
    return 2 * h * p["heads"] * d + 2 * h * p["kv_heads"] * d


def active_params(p: dict) -> int:
    """N: the matmul parameters one token passes through."""
    h, i = p["hidden"], p["intermediate"]
    if is_moe(p):
        return attention_params(p) + h * p["experts"] + (p["top_k"] + p["shared_experts"]) * 3 * h * i
    return attention_params(p) + 3 * h * mlp_width(p)


def weights_touched(p: dict) -> int:
    """W: weight elements a step reads (routed experts only where tokens go)."""
    h, i = p["hidden"], p["intermediate"]
    if is_moe(p):
        return (attention_params(p) + h * p["experts"]
                + (experts_active(p) + p["shared_experts"]) * 3 * h * i)
    return attention_params(p) + 3 * h * mlp_width(p)


def weight_shapes(p: dict) -> dict[str, tuple]:
    """Every weight of the block. Routed experts are stacked [E, ...] (the kernels' layout)."""
    h, hq, hkv, d, i = p["hidden"], p["heads"], p["kv_heads"], p["head_dim"], p["intermediate"]
    shapes = {"attn_norm": (h,), "wqkv": ((hq + 2 * hkv) * d, h), "wo": (h, hq * d), "mlp_norm": (h,)}
    if not is_moe(p):
        return {**shapes, "w_gate_up": (2 * mlp_width(p), h), "w_down": (h, mlp_width(p))}
    shapes.update(router=(p["experts"], h), experts_gate_up=(p["experts"], 2 * i, h),
                  experts_down=(p["experts"], h, i))
    if p["shared_experts"]:
        width = p["shared_experts"] * i
        shapes.update(shared_gate_up=(2 * width, h), shared_down=(h, width))
    return shapes


def _preset_rows(model: str):
    def rows() -> list[dict]:
        m = models.get(model)
        label = model if m.attention_exact else f"{model} (GQA stand-in)"
        return [{"hidden": m.hidden, "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim,
                 "intermediate": m.intermediate, "experts": m.experts, "top_k": m.top_k,
                 "shared_experts": m.shared_experts, "label": label}]
    return rows


class Block(Workload):
    name = "block"
    params = (
        Param("phase", str, "train (forward + backward) or decode (one token against a KV cache)",
              default="train", choices=("train", "decode")),
        Param("batch", int, "sequences in the batch (B)", default=1, minimum=1),
        Param("seq", int, "tokens per sequence (S), for phase train", minimum=1),
        Param("seq_kv", int, "KV cache length including the new token, for phase decode", minimum=1),
        Param("hidden", int, "model width (H); a model preset fills it", required=True, minimum=1),
        Param("heads", int, "query heads (Hq); a model preset fills it", required=True, minimum=1),
        Param("kv_heads", int, "key/value heads (Hkv); default heads", minimum=1),
        Param("head_dim", int, "dimension of each head (D, even)", required=True, minimum=2),
        Param("intermediate", int, "MLP width, or each expert's (I)", required=True, minimum=1),
        Param("experts", int, "routed experts (E); 0 for a dense MLP", default=0, minimum=0),
        Param("top_k", int, "experts per token (k)", default=0, minimum=0),
        Param("shared_experts", int, "always-active experts of width I", default=0, minimum=0),
        Param("mlp", str, "model (the preset's MLP) or dense-equivalent (a MoE's experts as one dense "
              "SwiGLU of width (top_k + shared)·I)", default="model", choices=("model", DENSE_EQUIVALENT)),
        Param("routing", str, f"MoE routing: {ROUTINGS}", default="balanced"),
        Param("seed", int, "seed of the routing", default=0, minimum=0),
        Param("cuda_graph", bool, "decode on a GPU: capture the step once into a CUDA graph and replay it, "
              "as serving engines run decode", default=False),
        LABEL,
    )
    dtypes = ("bf16", "fp16", "fp32")
    default_dtype = "bf16"
    baseline = "eager"
    summary_columns = ("params_active", "experts_active")
    presets = {name: _preset_rows(name) for name in models.MODELS}

    def complete(self, p: dict) -> dict:
        return {**p, "kv_heads": p["heads"] if p["kv_heads"] is None else p["kv_heads"]}

    def validate(self, p: dict) -> tuple[str, str] | None:
        for phase, need, other in (("train", "seq", "seq_kv"), ("decode", "seq_kv", "seq")):
            if p["phase"] == phase and p[need] is None:
                return need, f"required for phase {phase}"
            if p["phase"] == phase and p[other] is not None:
                return other, f"not used by phase {phase} (give {need})"
        if p["cuda_graph"] and p["phase"] != "decode":
            return "cuda_graph", ("only for phase decode: a training step with routed experts changes shape "
                                  "every step in real training, so replaying one graph would flatter it")
        if p["heads"] % p["kv_heads"]:
            return "heads", f"must be divisible by kv_heads (got {p['heads']}, {p['kv_heads']})"
        if p["head_dim"] % 2:
            return "head_dim", f"must be even: rotary embeddings rotate pairs (got {p['head_dim']})"
        if p["experts"] == 0:
            for key, value in (("top_k", 0), ("shared_experts", 0), ("mlp", "model")):
                if p[key] != value:
                    return key, f"only for a MoE block (experts > 0); a dense block takes {value!r}"
            return None
        if not 1 <= p["top_k"] <= p["experts"]:
            return "top_k", f"must be between 1 and experts ({p['experts']}) (got {p['top_k']})"
        try:
            parse_routing(p["routing"])
        except ValueError as exc:
            return "routing", str(exc)
        return None

    def flops(self, p: dict) -> int:
        b, hq, d, n = p["batch"], p["heads"], p["head_dim"], active_params(p)
        if p["phase"] == "train":
            s = p["seq"]
            return 6 * n * b * s + 12 * b * hq * d * attended_pairs(s, s, causal=True)
        return 2 * n * b + 4 * b * hq * d * p["seq_kv"]

    def bytes(self, p: dict, dtype: DType) -> int:
        if p["phase"] == "train":
            return dtype.size * (3 * weights_touched(p) + 4 * tokens(p) * p["hidden"])
        cache = 2 * p["batch"] * p["kv_heads"] * p["seq_kv"] * p["head_dim"]
        return dtype.size * (weights_touched(p) + cache)

    def exps(self, p: dict) -> int:
        if p["phase"] == "train":
            return 2 * p["batch"] * p["heads"] * (p["seq"] * (p["seq"] + 1) // 2)
        return p["batch"] * p["heads"] * p["seq_kv"]

    def extra_columns(self, p: dict, dtype: DType) -> dict:
        return {"params_active": active_params(p), "experts_active": experts_active(p)}

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        s, r = dtype.size, _ref_size(dtype)
        total = sum(math.prod(shape) for shape in weight_shapes(p).values())
        w, t, h = weights_touched(p), tokens(p), p["hidden"]
        if p["phase"] == "decode":
            cache = 2 * p["batch"] * p["kv_heads"] * p["seq_kv"] * p["head_dim"]
            ref = (attention_params(p) + 3 * h * (p["intermediate"] + mlp_width(p))) * r  # dense parts, one expert
            ref += 2 * p["seq_kv"] * p["kv_heads"] * p["head_dim"] * r  # one sequence's K/V upcast
            return (total + cache) * s + ref + 16 * t * _activations_per_token(p) * r
        acts = t * _activations_per_token(p)
        # Timing: weights, gradients and activations, twice over for the latter two when a CUDA
        # graph's private pool holds its own copy. Check: the backend's gradients plus the
        # reference's upcast weights, gradients and activations (float64 attention scores for fp32).
        timing = total * s + 2 * w * s + 4 * acts * s
        scores = p["batch"] * p["heads"] * p["seq"] ** 2 * r * 3 if dtype.name == "fp32" else 0
        check = total * s + w * s + w * (r + s) + 2 * acts * r + scores
        return max(timing, check) + 4 * t * h * r

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        train = p["phase"] == "train"
        weights = {}
        for name, shape in weight_shapes(p).items():
            t = torch.randn(shape, dtype=dtype.storage, device=device, generator=gen)
            # Norm weights near 1, matrices ~ N(0, 1/fan-in): activations stay O(1) (far from fp16's range).
            t = t.mul_(0.1).add_(1.0) if len(shape) == 1 else t.mul_(shape[-1] ** -0.5)
            if train and name.startswith("experts_"):  # one leaf per expert: separate gradients
                weights[name] = [torch.nn.Parameter(e, requires_grad=True) for e in t.unbind()]
            else:
                weights[name] = torch.nn.Parameter(t, requires_grad=train)
        t, h = tokens(p), p["hidden"]
        inputs = {"weights": weights, "x": torch.randn((t, h), dtype=dtype.storage, device=device, generator=gen),
                  "out": torch.full((t, h), float("nan"), dtype=dtype.storage, device=device)}
        if is_moe(p):
            inputs["topk_ids"] = routing(p).ids.to(device, copy=True)
        if train:
            inputs["x"].requires_grad_(True)
            inputs["dy"] = torch.randn((t, h), dtype=dtype.storage, device=device, generator=gen)
        else:
            shape = (p["batch"], p["kv_heads"], p["seq_kv"], p["head_dim"])
            inputs["k_cache"], inputs["v_cache"] = (torch.randn(shape, dtype=dtype.storage, device=device,
                                                                generator=gen) for _ in range(2))
        return inputs

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        want = (tokens(p), p["hidden"])
        if tuple(out.shape) != want or out.dtype != dtype.storage:
            return f"output is {tuple(out.shape)} {out.dtype}, expected {want} {dtype.storage}"
        with matmul_precision("highest"):  # the reference never runs on TF32
            ref, ref_grads = reference(inputs, p, dtype)
        rd = ref.dtype
        wrong = compare(out.to(rd), ref.detach(), tolerance_for(p, dtype, OUTPUT_ROUNDINGS), rows_from(0), rms_dim=-1)
        if wrong:
            return f"{dtype.name} output {wrong}"
        for name, (leaf, want_grad) in ref_grads.items():
            wrong = _compare_grad(leaf.grad, want_grad, rd, tolerance_for(p, dtype, GRAD_ROUNDINGS), name == "x")
            if wrong:
                return f"{dtype.name} gradient of {name}: {wrong}"
        return None


def _ref_size(dtype: DType) -> int:
    return 8 if dtype.name == "fp32" else 4


def _activations_per_token(p: dict) -> int:
    """Elements a token keeps for the backward (an estimate: inputs of every matmul and nonlinearity)."""
    h, q, kv = p["hidden"], p["heads"] * p["head_dim"], p["kv_heads"] * p["head_dim"]
    if is_moe(p):
        k, i = p["top_k"], p["intermediate"]
        mlp = k * (2 * h + 4 * i) + 4 * p["shared_experts"] * i + 2 * p["experts"]
    else:
        mlp = 4 * mlp_width(p)
    return 6 * h + 3 * q + 4 * kv + mlp


def tolerance_for(p: dict, dtype: DType, roundings: int) -> Tolerance:
    """harness/measure/check.py's rule for the block: its longest reduction (hidden, the MLP width, the
    keys attended, and for weight gradients the tokens) and its roundings."""
    keys = p["seq"] if p["phase"] == "train" else p["seq_kv"]
    k = max(p["hidden"], mlp_width(p), p["intermediate"], keys + p["head_dim"], tokens(p))
    return tolerance(dtype, k, roundings=roundings)


def _compare_grad(got, want, rd, tol, per_row: bool) -> str | None:
    if got is None or want is None:  # a leaf outside the graph (an expert without tokens)
        other = want if got is None else got
        if other is not None and bool(other.ne(0).any()):
            return "one side has no gradient while the other is non-zero"
        return None
    return compare(got.to(rd), want.to(rd), tol, rms_dim=-1 if per_row else None)


# ---- routing for the block's expert loop ------------------------------------------------------

def expert_groups(p: dict, device) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, its tokens, their (token, slot) pair ids) for each expert that receives tokens."""
    order, counts = by_expert(routing(p).ids, p["experts"])
    return [(e, (order[start:end] // p["top_k"]).to(device), order[start:end].to(device))
            for e, start, end in spans(counts)]


# ---- the reference --------------------------------------------------------------------------

class _Upcast:
    """Expert e's weight in the reference dtype, made when used: one expert in float at a time."""

    def __init__(self, experts, dtype: torch.dtype):
        self.experts, self.dtype = experts, dtype

    def __getitem__(self, e: int) -> torch.Tensor:
        return self.experts[e].to(self.dtype)


def _reference_attend(p: dict, inputs: dict, rd: torch.dtype):
    g = p["heads"] // p["kv_heads"]
    if p["phase"] == "train":
        return lambda q, k, v: F.scaled_dot_product_attention(
            q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), is_causal=True)

    def attend(q, k, v):  # the cache without the slot a backend wrote, one sequence at a time
        outs = []
        for i in range(p["batch"]):
            keys = torch.cat([inputs["k_cache"][i, :, :-1].to(rd), k[i]], dim=1)  # [Hkv, L, D]
            values = torch.cat([inputs["v_cache"][i, :, :-1].to(rd), v[i]], dim=1)
            scores = q[i].unflatten(0, (p["kv_heads"], g)) @ keys.transpose(1, 2)[:, None]
            probs = torch.softmax(scores / math.sqrt(p["head_dim"]), dim=-1)
            outs.append((probs @ values[:, None]).flatten(0, 1))
        return torch.stack(outs)
    return attend


def reference(inputs: dict, p: dict, dtype: DType) -> tuple[torch.Tensor, dict]:
    """The block in float32 (float64 for fp32) on the same inputs and weights; for train also
    {name: (leaf, reference gradient)} for the input and every weight."""
    rd = torch.float64 if dtype.name == "fp32" else torch.float32
    weights = inputs["weights"]
    w = {k: (_Upcast(v, rd) if k.startswith("experts_") else v.to(rd)) for k, v in weights.items()}
    ops = Ops(_reference_attend(p, inputs, rd))
    if is_moe(p):
        ops.experts = expert_loop(expert_groups(p, inputs["x"].device))
        ops.ids = inputs["topk_ids"]
    train = p["phase"] == "train"
    with torch.set_grad_enabled(train):
        y = forward(w, inputs["x"].to(rd), p, ops, rope_tables(p, inputs["x"].device, rd))
    if not train:
        return y, {}
    leaves = {"x": inputs["x"]}
    for name, v in weights.items():
        leaves.update({f"{name}[{e}]": t for e, t in enumerate(v)} if isinstance(v, list) else {name: v})
    grads = torch.autograd.grad(y, list(leaves.values()), inputs["dy"].to(rd), allow_unused=True)
    return y.detach(), {name: (leaf, g) for (name, leaf), g in zip(leaves.items(), grads)}


BLOCK = WORKLOAD = Block()
