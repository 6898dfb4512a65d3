"""Attention forward, O = softmax(Q·Kᵀ·scale + mask)·V: parameters, formulas, inputs and check.

Layout (every backend): q and out [B, Hq, Sq, D], k and v [B, Hkv, Skv, D], contiguous; query head
h reads kv head h // (Hq / Hkv) (GQA; Hq = Hkv is multi-head attention). scale = 1/√D.

Masking: with `causal`, query i sees keys j ≤ i + Skv − Sq: bottom-right aligned, as with a KV
cache (the Sq new tokens are the last Sq positions of the sequence). At Sq = Skv this is the usual
triangle; at Sq < Skv (chunked prefill, speculative decoding) it is not torch SDPA's
`is_causal=True`, which aligns top-left. Causal needs Sq ≤ Skv.

Formulas (DESIGN.md), with P the number of attended (query, key) pairs:
  P = Sq·Skv, or for causal P = Sq·Skv − Sq·(Sq−1)/2;
  flops = 4·B·Hq·D·P  (Q·Kᵀ and P·V, 2 FLOPs per multiply-add each);
  bytes = s·(2·B·Hq·Sq·D + 2·B·Hkv·Skv·D)  (Q read and O written, K and V read once: the minimum);
  exps(p) = B·Hq·P  (one softmax exponential per attended pair and query head).
The FlashAttention benchmark convention counts 4·B·H·S²·D and halves it for causal. At Sq = Skv = S
the exact count is 4·B·H·D·S(S+1)/2: the convention is low by a factor S/(S+1), under 0.1% from
S = 1024 on, so our TFLOPS match published FA, cuDNN and tritonbench numbers taken at the same
shapes (tritonbench's flex table mixes causal and non-causal counts: compare with care). They part
where Sq < Skv: ×0.5 would count Sq·Skv/2 pairs, but a bottom-right causal query sees almost all
of the cache (Sq = 1 sees every key), so the exact P is what the kernel must do; for Sq ≪ Skv
halving would understate the work nearly 2×. Masked-out pairs a kernel computes anyway (tile
granularity) are not counted: they are not useful work.

Presets (`model:`) fill heads / kv_heads / head_dim from harness/measure/models.py, each citing the
model's config.json. DeepSeek-V3 is left out: its MLA attention (576-wide compressed latent cache
at decode, 192-wide query-key heads with 128-wide values at prefill) is not a GQA shape, and the
128-head GQA stand-in would be measured as if it were the model. gpt-oss alternates full layers
with 128-token sliding-window layers and Llama 4 runs chunked attention in three of four layers:
the presets give the head layout, and the suite's seq_kv says which layer it is.

The reference is float32 (float64 for fp32 cases) on the same inputs, computed in chunks of kv
heads and query rows, so no B·H·Sq·Skv score matrix is ever built: its memory stays near
_CHUNK_BYTES whatever the case size.
"""

from __future__ import annotations

import math

import torch

from harness.measure import models
from harness.measure.check import Comparison, Tolerance, tolerance
from harness.measure.dtypes import DType, matmul_precision
from harness.workloads import LABEL, Param, Workload

MAX_DECODE_Q = 64  # query tokens of one decode step: 1, or a draft for speculative decoding
_CHUNK_BYTES = 256 << 20  # the reference's score block per chunk


def attended_pairs(seq_q: int, seq_kv: int, causal: bool) -> int:
    """(query, key) pairs the mask lets through, per batch element and query head."""
    if not causal:
        return seq_q * seq_kv
    return seq_q * seq_kv - seq_q * (seq_q - 1) // 2


def visible(rows: range, seq_q: int, seq_kv: int, causal: bool, device="cpu") -> torch.Tensor:
    """Boolean [len(rows), Skv]: True where query i (in rows) may attend to key j."""
    i = torch.arange(rows.start, rows.stop, device=device)[:, None]
    j = torch.arange(seq_kv, device=device)[None, :]
    if not causal:
        return (j >= 0).expand(len(rows), seq_kv)
    return j <= i + (seq_kv - seq_q)


def _reference_dtype(dtype: DType) -> torch.dtype:
    return torch.float64 if dtype.name == "fp32" else torch.float32


def _preset_rows(model: str):
    def rows() -> list[dict]:
        spec = models.get(model)
        return [{"heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim, "label": model}]

    return rows


class Attention(Workload):
    name = "attention"
    params = (
        Param("phase", str, "prefill (many query tokens) or decode (seq_q 1, or a few)", default="prefill",
              choices=("prefill", "decode")),
        Param("batch", int, "sequences in the batch", default=1, minimum=1),
        Param("heads", int, "query heads (Hq)", required=True, minimum=1),
        Param("kv_heads", int, "key/value heads (Hkv; heads must be divisible by it); default heads",
              minimum=1),
        Param("seq_q", int, "query tokens per sequence; default seq_kv (prefill) or 1 (decode)", minimum=1),
        Param("seq_kv", int, "key/value tokens per sequence (the KV cache length at decode)",
              required=True, minimum=1),
        Param("head_dim", int, "dimension of each head (D)", required=True, minimum=1),
        Param("causal", bool, "bottom-right causal mask: query i sees keys j <= i + seq_kv - seq_q",
              default=True),
        LABEL,
    )
    dtypes = ("bf16", "fp16", "fp32")
    default_dtype = "bf16"
    baseline = "sdpa-flash"  # FlashAttention-2 inside torch: on every Ampere+ GPU, the common yardstick
    summary_columns = ("splits",)  # triton-decode's KV split count
    presets = {name: _preset_rows(name) for name, spec in models.MODELS.items() if spec.attention_exact}

    def complete(self, p: dict) -> dict:
        p = dict(p)
        if p["kv_heads"] is None:
            p["kv_heads"] = p["heads"]
        if p["seq_q"] is None:
            p["seq_q"] = 1 if p["phase"] == "decode" else p["seq_kv"]
        return p

    def validate(self, p: dict) -> tuple[str, str] | None:
        if p["heads"] % p["kv_heads"]:
            return "heads", f"must be divisible by kv_heads (got {p['heads']}, {p['kv_heads']})"
        if p["phase"] == "decode" and p["seq_q"] > MAX_DECODE_Q:
            return "seq_q", (f"a decode step has at most {MAX_DECODE_Q} query tokens (1, or a speculative "
                             f"draft; got {p['seq_q']}): use phase: prefill")
        if p["causal"] and p["seq_q"] > p["seq_kv"]:
            return "seq_q", (f"must be at most seq_kv when causal (got {p['seq_q']} > {p['seq_kv']}): "
                             "query i sees keys j <= i + seq_kv - seq_q")
        return None

    def pairs(self, p: dict) -> int:
        return attended_pairs(p["seq_q"], p["seq_kv"], p["causal"])

    def flops(self, p: dict) -> int:
        return 4 * p["batch"] * p["heads"] * p["head_dim"] * self.pairs(p)

    def exps(self, p: dict) -> int:
        """Softmax exponentials: one per attended pair and query head (for exp utilization)."""
        return p["batch"] * p["heads"] * self.pairs(p)

    def bytes(self, p: dict, dtype: DType) -> int:
        b, d = p["batch"], p["head_dim"]
        return dtype.size * (2 * b * p["heads"] * p["seq_q"] * d + 2 * b * p["kv_heads"] * p["seq_kv"] * d)

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        """q, k, v and out (= bytes), plus the reference check's largest chunk."""
        ref = torch.empty((), dtype=_reference_dtype(dtype)).element_size()
        groups, rows = _chunks(p, ref)
        g, skv, d = p["heads"] // p["kv_heads"], p["seq_kv"], p["head_dim"]
        upcast_kv = groups * 2 * skv * d * ref
        scores = groups * g * rows * skv * (2 * ref + 1)  # scores, probabilities, mask
        rows_out = groups * g * rows * d * ref * 4  # q, reference, output and error blocks
        return self.bytes(p, dtype) + upcast_kv + scores + rows_out

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        b, d = p["batch"], p["head_dim"]
        q_shape = (b, p["heads"], p["seq_q"], d)
        kv_shape = (b, p["kv_heads"], p["seq_kv"], d)
        q, k, v = (torch.randn(shape, dtype=dtype.storage, device=device, generator=gen)
                   for shape in (q_shape, kv_shape, kv_shape))
        out = torch.full(q_shape, float("nan"), dtype=dtype.storage, device=device)
        return {"q": q, "k": k, "v": v, "out": out}

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        want = (p["batch"], p["heads"], p["seq_q"], p["head_dim"])
        if tuple(out.shape) != want or out.dtype != dtype.storage:
            return f"output is {tuple(out.shape)} {out.dtype}, expected {want} {dtype.storage}"
        ref_dtype = _reference_dtype(dtype)
        groups, rows = _chunks(p, torch.empty((), dtype=ref_dtype).element_size())
        q, k, v, o = _grouped(inputs["q"], inputs["k"], inputs["v"], out, p)
        comparison = Comparison(tolerance_for(p, dtype))
        with matmul_precision("highest"):  # the reference never runs on TF32
            for g0 in range(0, q.shape[0], groups):
                kv = (k[g0:g0 + groups].to(ref_dtype), v[g0:g0 + groups].to(ref_dtype))
                for i0 in range(0, p["seq_q"], rows):
                    at = (slice(g0, g0 + groups), slice(None), slice(i0, i0 + rows))
                    ref = _reference(q[at].to(ref_dtype), *kv, range(i0, min(i0 + rows, p["seq_q"])), p)
                    problem = comparison.add(o[at].to(ref_dtype), ref,
                                             lambda idx: _where(list(idx), (g0, i0), p), rms_dim=-1)
                    if problem:
                        return f"{dtype.name} {problem}"
        problem = comparison.finish()
        return f"{dtype.name} {problem}" if problem else None


def tolerance_for(p: dict, dtype: DType) -> Tolerance:
    """harness/measure/check.py's rule for attention, for the workload's check and the kernel tests alike.

    O = P·V is a softmax-weighted sum: its weights are positive and sum to 1, so it rounds like a
    GEMM whose terms are V's random-sign rows (relative to the output row's own scale, hence the
    per-row rms in check()). Reductions: Q·Kᵀ over head_dim and P·V over seq_kv, both in fp32, so
    k = seq_kv + head_dim. Roundings: P to the input dtype before P·V, the output, and the fp32
    exp2/rescaling of the online softmax (negligible beside a 16-bit rounding, a few fp32 ulps
    otherwise). fp32 stays far below TF32's ~1e-3, so an "fp32" kernel that ran Q·Kᵀ on TF32
    tensor cores is a mismatch."""
    return tolerance(dtype, p["seq_kv"] + p["head_dim"], roundings=3)


def _chunks(p: dict, ref_size: int) -> tuple[int, int]:
    """(kv-head groups, query rows) per reference chunk, so a chunk's scores fit _CHUNK_BYTES."""
    g, sq, skv, d = p["heads"] // p["kv_heads"], p["seq_q"], p["seq_kv"], p["head_dim"]
    rows = max(1, min(sq, _CHUNK_BYTES // (g * skv * ref_size)))
    by_scores = _CHUNK_BYTES // (g * rows * skv * ref_size)
    by_kv = _CHUNK_BYTES // (2 * skv * d * ref_size)
    return max(1, min(p["batch"] * p["kv_heads"], by_scores, by_kv)), rows


def _grouped(q, k, v, out, p):
    """Views with one leading index per (batch, kv head): q and out [B·Hkv, G, Sq, D], k and v
    [B·Hkv, Skv, D]. Query head h = kv_head·G + g, as in SDPA's enable_gqa."""
    b, hkv, sq, skv, d = p["batch"], p["kv_heads"], p["seq_q"], p["seq_kv"], p["head_dim"]
    g = p["heads"] // hkv
    return (q.reshape(b * hkv, g, sq, d), k.reshape(b * hkv, skv, d), v.reshape(b * hkv, skv, d),
            out.reshape(b * hkv, g, sq, d))


def _reference(q, k, v, rows: range, p: dict) -> torch.Tensor:
    """softmax(q·kᵀ·scale, masked)·v for one chunk: q [n, G, rows, D], k and v [n, Skv, D]."""
    k, v = k.unsqueeze(1), v.unsqueeze(1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(p["head_dim"]))
    if p["causal"]:
        scores.masked_fill_(~visible(rows, p["seq_q"], p["seq_kv"], True, q.device), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _where(index: list[int], origin: tuple[int, int], p: dict) -> str:
    """[batch, head, query, dim] of a chunk element [group, g, row, dim]."""
    group, g, row, d = index
    group += origin[0]
    b, kv_head = divmod(group, p["kv_heads"])
    head = kv_head * (p["heads"] // p["kv_heads"]) + g
    return f"[{b}, {head}, {origin[1] + row}, {d}]"


ATTENTION = WORKLOAD = Attention()
