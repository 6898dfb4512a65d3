"""The transformer block's math, shared by every backend of the `block` workload and its reference:
RMSNorm, fused QKV with rotary embeddings (Llama's rotate-half layout), attention through a
pluggable `attend`, the output projection, and a SwiGLU MLP or routed experts through a pluggable
`experts` (Ops). The workload's accounting, inputs and checks are in block.py beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ROPE_THETA = 500000.0  # Llama 3's; the value changes numbers, not work
EPS = 1e-5


@dataclass
class Ops:
    """How a backend runs the block's two heavy parts; the rest is the same torch code for all."""

    attend: Callable  # (q [B,Hq,Sq,D], new k and v [B,Hkv,Sq,D]) -> [B,Hq,Sq,D]; decode adds its cache
    experts: Callable | None = None  # (w, m [T,H], weights [T,k] float) -> [T,H]
    ids: torch.Tensor | None = None  # [T,k] realized expert ids, on the device


def rope_tables(p: dict, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, D] (Llama's rotate-half layout) for the rows this phase computes."""
    d = p["head_dim"]
    first, count = (0, p["seq"]) if p["phase"] == "train" else (p["seq_kv"] - 1, 1)
    inv = ROPE_THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(first, first + count, dtype=torch.float64)[:, None] * inv
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of t [B, S, heads, D] at the table's positions."""
    half = t.shape[-1] // 2
    turned = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
    return t * cos[:, None, :] + turned * sin[:, None, :]


def swiglu(m: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    gate_up = m @ w_gate_up.T
    width = gate_up.shape[-1] // 2
    return (F.silu(gate_up[:, :width]) * gate_up[:, width:]) @ w_down.T


def forward(w: dict, x: torch.Tensor, p: dict, ops: Ops, rope: tuple, out: torch.Tensor | None = None):
    """The block on x [T, H]. `out` (decode only: autograd has no out=) receives the result."""
    b, hq, hkv, d = p["batch"], p["heads"], p["kv_heads"], p["head_dim"]
    n = F.rms_norm(x, (x.shape[-1],), w["attn_norm"], EPS)
    q, k, v = (n @ w["wqkv"].T).view(b, -1, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=2)
    q, k = _rotate(q, *rope), _rotate(k, *rope)
    o = ops.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    h = x + o.transpose(1, 2).reshape(x.shape[0], hq * d) @ w["wo"].T
    m = F.rms_norm(h, (h.shape[-1],), w["mlp_norm"], EPS)
    if "router" in w:
        logits = (m @ w["router"].T).gather(1, ops.ids)
        mlp = ops.experts(w, m, torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32)))
        if "shared_gate_up" in w:
            mlp = mlp + swiglu(m, w["shared_gate_up"], w["shared_down"])
    else:
        mlp = swiglu(m, w["w_gate_up"], w["w_down"])
    return h + mlp if out is None else torch.add(h, mlp, out=out)


def causal_attend(q, k, v):
    """SDPA, causal over the whole sequence (top-left and bottom-right agree at Sq = Skv)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def cached_attend(k_cache: torch.Tensor, v_cache: torch.Tensor):
    """Decode attention through SDPA: write the new k, v at the last slot, attend to the whole cache."""
    def attend(q, k, v):
        k_cache[:, :, -1:].copy_(k)
        v_cache[:, :, -1:].copy_(v)
        return F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=q.shape[1] != k.shape[1])
    return attend


def expert_loop(groups):
    """Routed experts the Hugging Face way: per expert, gather its tokens, SwiGLU, weight, index_add.
    w["experts_gate_up"][e] may be a slice of a stacked tensor or a per-expert leaf."""
    def run(w: dict, m: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        flat = weights.flatten()
        y = torch.zeros_like(m)
        for e, rows, pairs in groups:
            part = swiglu(m.index_select(0, rows), w["experts_gate_up"][e], w["experts_down"][e])
            y.index_add_(0, rows, part * flat.index_select(0, pairs).to(part.dtype)[:, None])
        return y
    return run
