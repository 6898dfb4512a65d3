"""Attention backends: torch SDPA's four kernels, flex_attention, our three Triton kernels, naive torch.

Every backend runs the workload's exact mask (harness/workloads/attention.py): bottom-right causal
or none. Where a backend cannot express it, or has no kernel for the dtype, head_dim or GQA
layout, the case is skipped with the reason; it never runs a different mask.

* sdpa-flash / sdpa-efficient / sdpa-cudnn / sdpa-math: F.scaled_dot_product_attention under
  torch.nn.attention.sdpa_kernel(<that one backend>), GQA by enable_gqa. Mask: is_causal=True when
  Sq = Skv (the only case where SDPA's top-left alignment equals ours); no mask when Sq = 1 (the
  one query sees every key); otherwise, on flash and efficient, attn_mask=causal_lower_right(Sq,
  Skv), which torch runs natively (FA2's causal is bottom-right; efficient has a lower-right mask
  type), and on cuDNN and math an explicit boolean [Sq, Skv] mask built once in build() (torch
  would otherwise rebuild it on every call). Whether a kernel exists is asked of torch itself:
  `unsupported` runs the same call on a tiny case with the same dtype, head_dim, GQA ratio, mask
  kind and lengths modulo 64, and turns "No available kernel" (with torch's warnings saying why)
  into the reason.
* flex: flex_attention under torch.compile (fullgraph, static shapes), with a block mask built
  from the bottom-right mask_mod. Each build starts from a reset compiler, so no case inherits
  the recompile limit and silently runs the unfused eager fallback. On a CPU it compiles
  inductor's C++ template (seconds per shape); without a C++ compiler it is skipped.
* triton: kernels/attention.py, FlashAttention-style forward. triton-decode: kernels/
  decode_attention.py, split-KV flash-decoding; its `splits` column says how many chunks ran.
  triton-ws: kernels/attention_ws.py, the Hopper prefill variant (TMA tiles, warp-specialized KV
  loop); selected by name only: it joins no default until a GPU run shows it correct and faster.
* torch: the textbook path, softmax(q·kᵀ·scale)·v with matmul and softmax in the input dtype,
  the B·Hq·Sq·Skv scores materialized: the reference point fusion is measured against.

Triton and torch write into the workload's poisoned `out`. SDPA and flex return a tensor of their
own, and the closure returns it as it is: copying it into `out` would put an extra kernel in the
timed region (up to a fifth of a short decode) and understate the vendor kernels. To keep an
unwritten block visible anyway, build() frees a NaN-filled block of the output's size last, so
torch's caching allocator most likely hands exactly that memory to the checked call's output (a
best effort: the allocator gives no guarantee).
"""

from __future__ import annotations

import functools
import math
import shutil
import warnings

import torch
import torch.nn.functional as F

from harness.backends import Backend, register
from harness.hardware.device import DeviceFacts
from harness.measure import memory
from harness.measure.dtypes import DTYPES, DType
from harness.workloads.attention import ATTENTION, visible


def _grouped(p: dict) -> bool:
    return p["heads"] != p["kv_heads"]


def _masked(p: dict) -> bool:
    """Whether the case's mask hides any key: causal with more than one query."""
    return p["causal"] and p["seq_q"] > 1


# ---- SDPA ------------------------------------------------------------------------------------

def _sdpa_backends() -> dict:
    from torch.nn.attention import SDPBackend

    return {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}


def _sdpa_call(name: str, q, k, v, p: dict):
    """A zero-argument function computing the case's attention with SDPA backend `name` only."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    kwargs = {"enable_gqa": True} if _grouped(p) else {}
    if _masked(p) and p["seq_q"] == p["seq_kv"]:
        kwargs["is_causal"] = True
    elif _masked(p) and name in ("sdpa-flash", "sdpa-efficient"):  # lower-right natively
        kwargs["attn_mask"] = causal_lower_right(p["seq_q"], p["seq_kv"])
    elif _masked(p):  # built once here, not materialized again by every call
        kwargs["attn_mask"] = visible(range(p["seq_q"]), p["seq_q"], p["seq_kv"], True, q.device)
    backend = _sdpa_backends()[name]

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return run


def _small(n: int) -> int:
    """A length with the same residue modulo 64 (alignment rules), at most 127."""
    return n if n < 128 else 64 + n % 64


def _probe_case(p: dict) -> tuple:
    """A tiny case on which SDPA picks a kernel by the same rules as on `p`."""
    g = p["heads"] // p["kv_heads"]
    sq = _small(p["seq_q"])
    skv = sq + _small(p["seq_kv"] - p["seq_q"]) if p["seq_kv"] >= p["seq_q"] else _small(p["seq_kv"])
    small = {"batch": 1, "heads": g, "kv_heads": 1, "seq_q": sq, "seq_kv": skv, "label": ""}
    return tuple({**p, **small}.items())


@functools.lru_cache(maxsize=512)
def _sdpa_probe(name: str, device: str, dtype_name: str, case: tuple) -> str | None:
    p, dtype = dict(case), DTYPES[dtype_name]
    x = ATTENTION.make_inputs(p, dtype, device, torch.Generator(device=device).manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _sdpa_call(name, x["q"], x["k"], x["v"], p)()
            return None
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    why = [str(w.message).strip() for w in caught]
    why = [w for w in dict.fromkeys(why) if w and not w.endswith("because:") and "disabled" not in w]
    why = "; ".join(why) or error
    return f"torch SDPA has no {name[5:]} kernel for this case on {device}: {why[:400]}"


def _sdpa_unsupported(name: str):
    def unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
        reason = _sdpa_probe(name, dev.kind, dtype.name, _probe_case(p))
        if reason is None and name == "sdpa-math":
            return _scores_fit(p, dtype, dev, per_score=12, repeats_kv=True)  # fp32 scores, softmax, mask
        return reason
    return unsupported


def _sdpa_build(name: str):
    def build(inputs: dict, p: dict, dtype: DType):
        run = _sdpa_call(name, inputs["q"], inputs["k"], inputs["v"], p)
        return _own_output(run, inputs["out"])
    return build


def _own_output(run, out: torch.Tensor):
    """`run` itself, with a NaN block of the output's size freed just before its checked call."""
    poison = torch.full_like(out, float("nan"))
    del poison  # back to the caching allocator, first in line for the next output of this size
    return run


def _scores_fit(p: dict, dtype: DType, dev: DeviceFacts, per_score: int,
                repeats_kv: bool = False) -> str | None:
    """None if the inputs plus a materialized B·Hq·Sq·Skv score matrix (and, for SDPA's math path,
    K and V repeated to every query head) fit in free memory."""
    scores = p["batch"] * p["heads"] * p["seq_q"] * p["seq_kv"] * per_score
    repeated_kv = 2 * p["batch"] * p["heads"] * p["seq_kv"] * p["head_dim"] * dtype.size if repeats_kv else 0
    reason = memory.shortfall(ATTENTION.memory_bytes(p, dtype) + scores + repeated_kv, dev.kind)
    shape = f"{p['batch']}x{p['heads']}x{p['seq_q']}x{p['seq_kv']}"
    return f"materializes the {shape} scores: {reason}" if reason else None


# ---- flex_attention --------------------------------------------------------------------------

def _flex_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401  (an availability check)
    except ImportError:
        return f"torch {torch.__version__} has no flex_attention (it arrived in 2.5)"
    if dev.kind == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "flex on a CPU compiles inductor's C++ template, and no C++ compiler was found"
    if dev.kind == "cuda" and p["head_dim"] < 16:
        return f"flex_attention's Triton kernels need head_dim >= 16 (got {p['head_dim']})"
    return None


def _flex_build(inputs: dict, p: dict, dtype: DType):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    torch.compiler.reset()  # a fresh compile: past the recompile limit flex would silently run eager
    compiled = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    block_mask = None
    if _masked(p):
        offset = p["seq_kv"] - p["seq_q"]

        def bottom_right(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset
        block_mask = create_block_mask(bottom_right, None, None, p["seq_q"], p["seq_kv"], device=q.device)
    gqa = _grouped(p)

    return _own_output(lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa), inputs["out"])


# ---- ours (Triton) ---------------------------------------------------------------------------

def _triton_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import attention

    return attention.unsupported(dtype.storage, torch.device(dev.kind), p["head_dim"])


def _triton_build(inputs: dict, p: dict, dtype: DType):
    from kernels import attention

    return attention.prepare(inputs["q"], inputs["k"], inputs["v"], inputs["out"], causal=p["causal"])


def _triton_ws_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import attention_ws

    if p["phase"] == "decode":
        return "a prefill kernel (128-query tiles, one query row used at decode); use triton-decode"
    return attention_ws.unsupported(dtype.storage, torch.device(dev.kind), p["head_dim"])


def _triton_ws_build(inputs: dict, p: dict, dtype: DType):
    from kernels import attention_ws

    return attention_ws.prepare(inputs["q"], inputs["k"], inputs["v"], inputs["out"], causal=p["causal"])


def _decode_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import decode_attention

    return decode_attention.unsupported(dtype.storage, torch.device(dev.kind), p["heads"], p["kv_heads"],
                                        p["seq_q"], p["head_dim"])


def _decode_build(inputs: dict, p: dict, dtype: DType):
    from kernels import decode_attention

    return decode_attention.prepare(inputs["q"], inputs["k"], inputs["v"], inputs["out"], causal=p["causal"])


def _decode_columns(inputs: dict, p: dict, dtype: DType) -> dict:
    from kernels import decode_attention

    splits = decode_attention.split_count(p["batch"], p["kv_heads"], p["seq_kv"], inputs["q"].device)
    return {"splits": splits}


# ---- naive torch -----------------------------------------------------------------------------

def _torch_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    return _scores_fit(p, dtype, dev, per_score=3 * dtype.size)  # scores, probabilities, temporaries


def _torch_build(inputs: dict, p: dict, dtype: DType):
    q, k, v, out = inputs["q"], inputs["k"], inputs["v"], inputs["out"]
    b, hkv, sq, skv, d = p["batch"], p["kv_heads"], p["seq_q"], p["seq_kv"], p["head_dim"]
    g = p["heads"] // hkv
    # A kv head's G query heads as one matrix of G·Sq rows: GQA without repeating K/V.
    q_rows, out_rows = q.view(b, hkv, g * sq, d), out.view(b, hkv, g * sq, d)
    k_t = k.transpose(-1, -2)
    hidden = ~visible(range(sq), sq, skv, True, q.device).repeat(g, 1) if _masked(p) else None
    scale = 1.0 / math.sqrt(d)

    def fn():
        scores = torch.matmul(q_rows, k_t).mul_(scale)
        if hidden is not None:
            scores.masked_fill_(hidden, float("-inf"))
        torch.matmul(torch.softmax(scores, dim=-1), v, out=out_rows)
        return out
    return fn


for _name, _what in (("sdpa-flash", "FlashAttention-2 (CUDA) or torch's CPU flash kernel"),
                     ("sdpa-efficient", "memory-efficient attention (xformers/CUTLASS)"),
                     ("sdpa-cudnn", "cuDNN fused attention"),
                     ("sdpa-math", "SDPA's unfused math fallback")):
    register(Backend("attention", _name, f"torch SDPA, {_what} only", _sdpa_unsupported(_name),
                     _sdpa_build(_name)))
register(Backend("attention", "flex", "torch flex_attention, compiled (block-sparse causal mask)",
                 _flex_unsupported, _flex_build))
register(Backend("attention", "triton", "ours: kernels/attention.py, FlashAttention-style forward",
                 _triton_unsupported, _triton_build))
register(Backend("attention", "triton-ws", "ours: kernels/attention_ws.py, Hopper prefill (TMA, warp-specialized "
                 "KV loop); by name only", _triton_ws_unsupported, _triton_ws_build))
register(Backend("attention", "triton-decode", "ours: kernels/decode_attention.py, split-KV flash-decoding",
                 _decode_unsupported, _decode_build, _decode_columns))
register(Backend("attention", "torch", "naive matmul + softmax + matmul, scores materialized",
                 _torch_unsupported, _torch_build))
