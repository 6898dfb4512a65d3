"""Block backends: `eager` (PyTorch modules), `compiled` (torch.compile of the same module) and
`kernels` (our Triton decode attention and fused MoE inside the same block).

All three run harness/workloads/block_model.py's `forward`, so they differ only where they say so:
- eager: SDPA for attention (FlashAttention-2 on a GPU, with GQA by enable_gqa; causal in train,
  unmasked over the whole cache at decode) and the Hugging Face style expert loop (gather, SwiGLU,
  index_add per expert that receives tokens) for a MoE. Each routed expert is its own parameter in
  train (as with an nn.ModuleList of experts), so each gets its own gradient.
- compiled: torch.compile(module, fullgraph=True, dynamic=False), from a reset compiler so no case
  inherits another's recompile limit. Compilation happens in the first, checked call, outside the
  timed region. A graph break is an error row, never a silent eager fallback.
- kernels: decode only. kernels/decode_attention.py (split-KV flash-decoding) for attention and
  kernels/moe.py for the routed experts; norms, projections, RoPE, the router, shared experts
  and a dense MLP stay in torch (cuBLAS). Our kernels are forward-only, so a training step, which
  needs their backward, is skipped with that reason. The kernels read fixed buffers bound in
  build(): each call copies q, the normed MoE input and the routing weights into them (three
  copies of B·(Hq·D + H + k) elements, a few microseconds). The buffers the kernels write start
  NaN, and so does the routing-weight buffer, so a kernel that misses a write, or reads a stale
  copy, fails the check.

`cuda_graph: true` (decode on a GPU): build() runs the step twice (compilation, autotuning,
allocations), captures it into a CUDA graph, poisons `out` again, and the closure replays the
graph: the checked call is a replay. The closure holds the step (module, routing indices, kernel
buffers): the graph replays their addresses but keeps none of them alive. The graph freezes the
realized routing, as every call of the step does anyway: its expert groups are built from the case's
parameters in build(), so no tensor shape in the step depends on data.

Train steps: the closure sets every gradient (weights and the block's input) to None, runs the
forward and `y.backward(dy)`, and copies y into the workload's poisoned `out` (B·S·H elements,
under 0.1% of a step). Decode steps write the block's output into `out` with the final residual
add (out=), and their new k, v into the cache's last slot.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from harness.backends import Backend, register
from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DType
from harness.measure.timing import capture_graph
from harness.workloads import block
from harness.workloads.block import is_moe
from harness.workloads.block_model import (
    Ops,
    cached_attend,
    causal_attend,
    expert_loop,
    forward,
    rope_tables,
)


class BlockModule(nn.Module):
    """The block as an nn.Module over the inputs' own Parameter objects (so gradients land there)."""

    def __init__(self, weights: dict, p: dict, ops: Ops, rope: tuple):
        super().__init__()
        self.tensors = nn.ParameterDict({k: v for k, v in weights.items() if not isinstance(v, list)})
        self.experts = nn.ModuleDict({k: nn.ParameterList(v) for k, v in weights.items() if isinstance(v, list)})
        self.register_buffer("cos", rope[0], persistent=False)
        self.register_buffer("sin", rope[1], persistent=False)
        self.p, self.ops = p, ops

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        w = dict(self.tensors.items())
        w.update((k, list(v)) for k, v in self.experts.items())
        return forward(w, x, self.p, self.ops, (self.cos, self.sin), out)


def _torch_ops(inputs: dict, p: dict) -> Ops:
    if p["phase"] == "train":
        ops = Ops(causal_attend)
    else:
        ops = Ops(cached_attend(inputs["k_cache"], inputs["v_cache"]))
    if is_moe(p):
        ops.experts, ops.ids = expert_loop(block.expert_groups(p, inputs["x"].device)), inputs["topk_ids"]
    return ops


def _module(inputs: dict, p: dict, ops: Ops) -> BlockModule:
    x = inputs["x"]
    return BlockModule(inputs["weights"], p, ops, rope_tables(p, x.device, x.dtype))


def _step(inputs: dict, p: dict, module: BlockModule, run):
    """The timed closure around `run` (the module, or its compiled form)."""
    x, out = inputs["x"], inputs["out"]
    if p["phase"] == "decode":
        return _graphed(lambda: run(x, out), out) if p["cuda_graph"] else lambda: run(x, out)
    leaves, dy = [x, *module.parameters()], inputs["dy"]

    def train_step():
        for t in leaves:
            t.grad = None
        y = run(x)
        y.backward(dy)
        return out.copy_(y.detach())
    return train_step


def _graphed(step, out: torch.Tensor):
    """step captured once into a CUDA graph (timing.capture_graph, which keeps the step alive);
    calls replay it and return `out`."""
    replay = capture_graph(step, warmups=2)  # two: compile, then autotune with every allocation cached
    out.fill_(float("nan"))  # the warm-up calls wrote it: the checked replay must write it again

    def replayed() -> torch.Tensor:
        replay()
        return out
    return replayed


def _unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    """What no block backend can do here."""
    if p["cuda_graph"] and dev.kind != "cuda":
        return "cuda_graph replays a CUDA graph, which needs a CUDA GPU"
    return None


def _eager_build(inputs: dict, p: dict, dtype: DType):
    module = _module(inputs, p, _torch_ops(inputs, p))
    return _step(inputs, p, module, module)


def _compiled_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    if _unsupported(p, dtype, dev):
        return _unsupported(p, dtype, dev)
    if dev.kind == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile on a CPU generates C++, and no C++ compiler was found"
    if dev.kind == "cuda" and dev.vendor == "nvidia" and dev.compute_capability < (7, 0):
        return "torch.compile's GPU code is Triton, which needs sm_70 or newer"
    return None


def _compiled_build(inputs: dict, p: dict, dtype: DType):
    module = _module(inputs, p, _torch_ops(inputs, p))
    torch.compiler.reset()
    return _step(inputs, p, module, torch.compile(module, fullgraph=True, dynamic=False))


def _kernels_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import decode_attention, moe

    if p["phase"] == "train":
        return ("our Triton attention and MoE kernels are forward-only (no backward), so `kernels` "
                "runs phase decode only")
    device = torch.device(dev.kind)
    reason = _unsupported(p, dtype, dev) or decode_attention.unsupported(
        dtype.storage, device, p["heads"], p["kv_heads"], 1, p["head_dim"])
    if reason is None and is_moe(p):
        reason = moe.unsupported(dtype.storage, device)
    return reason


def _kernel_ops(inputs: dict, p: dict) -> Ops:
    from kernels import decode_attention, moe

    k_cache, v_cache, x = inputs["k_cache"], inputs["v_cache"], inputs["x"]
    q_buf = torch.empty((p["batch"], p["heads"], 1, p["head_dim"]), dtype=x.dtype, device=x.device)
    attention = decode_attention.prepare(q_buf, k_cache, v_cache, torch.full_like(q_buf, float("nan")),
                                         causal=False)  # one query sees every key: nothing to mask

    def attend(q, k, v):
        k_cache[:, :, -1:].copy_(k)
        v_cache[:, :, -1:].copy_(v)
        q_buf.copy_(q)
        return attention()
    ops = Ops(attend)
    if not is_moe(p):
        return ops
    w = inputs["weights"]
    m_buf = torch.empty_like(x)
    route_buf = torch.full(inputs["topk_ids"].shape, float("nan"), dtype=torch.float32, device=x.device)
    experts = moe.prepare(m_buf, w["experts_gate_up"], w["experts_down"], inputs["topk_ids"], route_buf,
                          torch.full_like(x, float("nan")))

    def routed(w, m, weights):
        m_buf.copy_(m)
        route_buf.copy_(weights)
        return experts()
    ops.experts, ops.ids = routed, inputs["topk_ids"]
    return ops


def _kernels_build(inputs: dict, p: dict, dtype: DType):
    module = _module(inputs, p, _kernel_ops(inputs, p))
    return _step(inputs, p, module, module)


register(Backend("block", "eager", "PyTorch modules: SDPA attention, SwiGLU or a per-expert loop",
                 _unsupported, _eager_build))
register(Backend("block", "compiled", "torch.compile of the eager module (fullgraph, static shapes)",
                 _compiled_unsupported, _compiled_build))
register(Backend("block", "kernels", "ours at decode: kernels/decode_attention.py and kernels/moe.py in the block",
                 _kernels_unsupported, _kernels_build))
