"""MoE backends: `torch-loop`, `torch-grouped`, `triton` (ours, kernels/moe.py) and `dense-equivalent`.

Each build() turns the realized routing into what its kernels need (per-expert index lists,
sort orders, offsets, padded blocks), so the timed closure holds only the layer's work: gathers,
GEMMs, SiLU·mul, weighting and the top-k reduction. A real layer would also derive that
metadata from the router's output at run time; no backend is timed on it, so all compare alike.
The MoE backends write into the workload's poisoned `out`, so an unwritten token fails the check.

fp8 follows the workload's recipe (harness/workloads/moe.py): torch-loop and dense-equivalent
through torch._scaled_mm with per-tensor scales and an fp32 gate/up output, triton natively;
torch's fp8 grouped GEMM writes bf16 only, so torch-grouped cannot follow it and skips fp8.
torch._scaled_mm checks K and N are multiples of 16 (hidden and intermediate here); cuBLASLt's fp8
kernels also need every matrix dimension 16-byte aligned, so M (an expert's rows) must be a
multiple of 16 (1 byte per e4m3 element): cuBLASLt refused an expert with 2 tokens on the H200
(CUBLAS_STATUS_NOT_SUPPORTED). Both fp8 backends pad their row groups to FP8_ROWS with copies of a
real row, drop the extra output rows, and report the padded rows as `flops_executed`.

`dense-equivalent` is the ceiling: the same useful FLOPs as dense cuBLAS GEMMs of T·k rows against
expert 0's weights. It computes a different function, so it declares that problem
(Backend.problem = DENSE) for the workload's check, writes into its own poisoned buffer, and reports its own traffic as `bytes`
(one expert's weights instead of E_act), so its MBU is true and never above the bandwidth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.backends import Backend, register
from harness.hardware.device import DeviceFacts, fp8_unsupported
from harness.measure.dtypes import DType
from harness.workloads.moe import (
    DENSE,
    by_expert,
    dense_equivalent_bytes,
    quantize_h,
    rows_flops,
    spans,
)

FP8_ROWS = 16  # cuBLASLt's fp8 GEMMs need each dimension 16-byte aligned: M a multiple of 16


def _grouped_mm():
    """The installed torch's grouped GEMM: F.grouped_mm (newer) or torch._grouped_mm (2.8+)."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _torch_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    if dtype.name != "fp8":
        return None  # bf16 and fp16 matmuls run on every device torch supports
    if reason := fp8_unsupported(dev):
        return reason
    if p["hidden"] % 16 or p["intermediate"] % 16:
        return "torch._scaled_mm needs hidden and intermediate divisible by 16"
    return None


def _expert_ffn(inputs: dict, i: int):
    """ffn(e, rows, out=None): expert e's SwiGLU on some rows of x, in the output dtype."""
    w_gate_up, w_down = inputs["w_gate_up"], inputs["w_down"]
    if w_gate_up.dtype != torch.float8_e4m3fn:
        def ffn(e, rows, out=None):
            gate_up = rows @ w_gate_up[e].T
            return torch.matmul(F.silu(gate_up[:, :i]) * gate_up[:, i:], w_down[e].T, out=out)
        return ffn
    one = torch.ones((), device=w_gate_up.device)  # x's unit per-tensor scale
    up_scales, down_scales = inputs["w_gate_up_scale"].unbind(), inputs["w_down_scale"].unbind()

    def ffn_fp8(e, rows, out=None):
        gate_up = torch._scaled_mm(rows, w_gate_up[e].T, scale_a=one, scale_b=up_scales[e],
                                   out_dtype=torch.float32)
        h = quantize_h(F.silu(gate_up[:, :i]) * gate_up[:, i:])
        return torch._scaled_mm(h, w_down[e].T, scale_a=one, scale_b=down_scales[e],
                                out_dtype=torch.bfloat16, out=out)
    return ffn_fp8


def padded_rows(rows: torch.Tensor, multiple: int) -> torch.Tensor:
    """Row indices padded to a multiple of `multiple` by repeating the first: gathering them gives
    a block torch._scaled_mm accepts, whose first len(rows) output rows are the real ones."""
    pad = -len(rows) % multiple
    return torch.cat([rows, rows[:1].expand(pad)]) if pad else rows


def _loop_build(inputs: dict, p: dict, dtype: DType):
    x, out, k = inputs["x"], inputs["out"], p["top_k"]
    ffn = _expert_ffn(inputs, p["intermediate"])
    multiple = FP8_ROWS if dtype.name == "fp8" else 1
    order, counts = by_expert(inputs["topk_ids"], p["experts"])
    weights = inputs["topk_weights"].flatten()[order].to(out.dtype)
    groups = []  # (expert, its tokens, the rows to gather (padded), their weights), active experts only
    for e, start, end in spans(counts):
        tokens = order[start:end] // k
        groups.append((e, tokens, padded_rows(tokens, multiple), weights[start:end, None]))
    inputs["executed_rows"] = sum(len(rows) for _, _, rows, _ in groups)

    def run():
        out.zero_()
        for e, tokens, rows, w in groups:
            out.index_add_(0, tokens, ffn(e, x.index_select(0, rows))[:len(tokens)] * w)
        return out

    return run


def _executed_columns(inputs: dict, p: dict, dtype: DType) -> dict:
    """flops_executed where a backend pads its rows (fp8), counting the padding."""
    if inputs["executed_rows"] == p["tokens"] * p["top_k"]:
        return {}
    return {"flops_executed": rows_flops(p, inputs["executed_rows"])}


def _grouped_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    if dtype.name == "fp8":
        return ("torch's fp8 grouped GEMM writes bf16 only, so it cannot keep gate/up in fp32 until h "
                "is quantized, as this workload's fp8 recipe does")
    if _grouped_mm() is None:
        return f"torch {torch.__version__} has no grouped GEMM (torch._grouped_mm arrived in 2.8)"
    if p["experts"] >= 1024:
        return f"torch's grouped GEMM takes at most 1023 groups (got experts={p['experts']})"
    if (p["hidden"] * dtype.size) % 16 or (p["intermediate"] * dtype.size) % 16:
        return "torch's grouped GEMM needs 16-byte aligned rows: hidden and intermediate multiples of 8"
    if dev.kind != "cuda":
        return None  # a CPU runs torch's per-group fallback: correct, for tests, not for speed
    if dev.vendor != "nvidia":
        return "torch's grouped GEMM kernel is not wired up for ROCm here"
    if dev.compute_capability[0] not in (9, 10):
        cc = "".join(map(str, dev.compute_capability))
        return (f"torch's grouped GEMM kernel needs sm_90 or sm_100 (this GPU is sm_{cc}); "
                "elsewhere it is a per-group loop")
    if dtype.name == "fp16":
        return ("torch's grouped GEMM kernel is bf16-only; fp16 runs a per-group loop after a "
                "device-to-host sync, which torch-loop already measures")
    return None


def _grouped_build(inputs: dict, p: dict, dtype: DType):
    grouped_mm = _grouped_mm()
    x, out = inputs["x"], inputs["out"]
    t, k, i = p["tokens"], p["top_k"], p["intermediate"]
    order, counts = by_expert(inputs["topk_ids"], p["experts"])
    tokens = order // k
    weights = inputs["topk_weights"].flatten()[order].to(x.dtype)[:, None]
    unsort = torch.argsort(order)  # sorted row of each (token, slot) pair
    offs = torch.cumsum(counts, 0).to(torch.int32)
    w_gate_up = inputs["w_gate_up"].transpose(1, 2)  # [E, H, 2I], column-major per expert
    w_down = inputs["w_down"].transpose(1, 2)  # [E, I, H]

    def run():
        gate_up = grouped_mm(x.index_select(0, tokens), w_gate_up, offs=offs)
        h = F.silu(gate_up[:, :i]) * gate_up[:, i:]
        y = grouped_mm(h, w_down, offs=offs).mul_(weights)
        torch.sum(y.index_select(0, unsort).view(t, k, -1), dim=1, out=out)
        return out

    return run


def _triton_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import moe

    return moe.unsupported(dtype.storage, torch.device(dev.kind))


def _triton_build(inputs: dict, p: dict, dtype: DType):
    from kernels import moe

    prepared = moe.prepare(inputs["x"], inputs["w_gate_up"], inputs["w_down"], inputs["topk_ids"],
                           inputs["topk_weights"], inputs["out"],
                           w_gate_up_scale=inputs.get("w_gate_up_scale"), w_down_scale=inputs.get("w_down_scale"))
    inputs["padded_rows"] = prepared.padded_rows
    return prepared


def _triton_columns(inputs: dict, p: dict, dtype: DType) -> dict:
    return {"flops_executed": rows_flops(p, inputs["padded_rows"])}


def _dense_build(inputs: dict, p: dict, dtype: DType):
    x, k = inputs["x"], p["top_k"]
    ffn = _expert_ffn(inputs, p["intermediate"])
    pairs = p["tokens"] * k
    tokens = torch.arange(pairs, device=x.device) // k  # token t on rows t·k … t·k + k - 1
    rows = x.index_select(0, padded_rows(tokens, FP8_ROWS if dtype.name == "fp8" else 1))
    inputs["executed_rows"] = rows.shape[0]
    out = torch.full((rows.shape[0], p["hidden"]), float("nan"), dtype=dtype.output, device=x.device)
    real = out[:pairs]  # the first rows of a contiguous buffer: a contiguous view, no copy

    def run():
        ffn(0, rows, out=out)
        return real

    return run


register(Backend("moe", "torch-loop", "per-expert gather, matmul and index_add in PyTorch: the naive baseline",
                 _torch_unsupported, _loop_build, _executed_columns))
register(Backend("moe", "torch-grouped", "torch's grouped GEMM (CUTLASS, bf16, sm90/sm100) on expert-sorted rows",
                 _grouped_unsupported, _grouped_build))
register(Backend("moe", "triton", "ours: kernels/moe.py, sorted and padded blocks, fused gate/up with SiLU·mul",
                 _triton_unsupported, _triton_build, _triton_columns))
register(Backend("moe", DENSE, "dense cuBLAS GEMMs of T·k rows against one expert: the same useful FLOPs",
                 _torch_unsupported, _dense_build, _executed_columns, bytes=dense_equivalent_bytes, problem=DENSE))
