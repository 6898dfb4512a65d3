"""Dense GEMM, C[m,n] = A[m,k] · B[k,n]: the formulas, inputs and reference check.

B is stored as an nn.Linear weight, W[n,k] contiguous with B = W^T, because that is the layout
every LLM projection runs in (and the one fp8 `_scaled_mm` requires). `model:` presets expand to a
model's projection shapes with n and k from the preset and m, the token count, from the suite.

flops = 2·m·n·k;  bytes = (m·k + k·n)·s_in + m·n·s_out  (each operand moved once: the minimum).
"""

from __future__ import annotations

import torch

from harness.measure import models
from harness.measure.check import Comparison, rows_from, tolerance
from harness.measure.dtypes import DType, matmul_precision
from harness.workloads import LABEL, Param, Workload

INT_SENTINEL = -(2**31)  # poison for int32 outputs; no int8 product sum reaches it for k < 2^17
CHUNK_BYTES = 256 << 20  # reference computed in row blocks of this size, to bound its memory


def reference_dtype(dtype: DType) -> torch.dtype:
    # fp32 accumulation is exact enough for 16- and 8-bit float inputs (their products are exact
    # in fp32); fp32/tf32 inputs need fp64, and so do int8 sums, which can pass 2^24. fp64 has
    # nothing wider: its reference is float64 too, and check.py's fp64 bound counts its drift.
    return torch.float32 if dtype.name in ("bf16", "fp16", "fp8") else torch.float64


def _preset_rows(model: str):
    def rows() -> list[dict]:
        spec = models.get(model)
        return [{"n": n, "k": k, "label": f"{model}.{proj}"} for proj, n, k in spec.projections()]

    return rows


class Gemm(Workload):
    name = "gemm"
    params = (
        Param("m", int, "rows of A (the token count for model presets)", required=True, minimum=1),
        Param("n", int, "columns of B (output features)", required=True, minimum=1),
        Param("k", int, "the reduction dimension (input features)", required=True, minimum=1),
        LABEL,
    )
    dtypes = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
    default_dtype = "bf16"
    baseline = "torch"  # cuBLAS: the vendor kernel ours is measured against
    presets = {name: _preset_rows(name) for name, spec in models.MODELS.items() if spec.attention_exact}

    def flops(self, p: dict) -> int:
        return 2 * p["m"] * p["n"] * p["k"]

    def bytes(self, p: dict, dtype: DType) -> int:
        m, n, k = p["m"], p["n"], p["k"]
        return (m * k + k * n) * dtype.size + m * n * dtype.out_size

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        m, n, k = p["m"], p["n"], p["k"]
        ref = torch.empty((), dtype=reference_dtype(dtype)).element_size()
        chunk = self._chunk_rows(p, dtype)
        generation = max(m, n) * k * 4  # a float temporary while making fp8/int8 inputs
        check = k * n * ref + chunk * (k + 3 * n) * ref  # upcast B, one block of A, ref and error
        return self.bytes(p, dtype) + max(generation, check)

    def _chunk_rows(self, p: dict, dtype: DType) -> int:
        ref = torch.empty((), dtype=reference_dtype(dtype)).element_size()
        return max(1, min(p["m"], CHUNK_BYTES // (p["n"] * ref)))

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        m, n, k = p["m"], p["n"], p["k"]
        a, w = (random_operand((rows, k), dtype, device, gen) for rows in (m, n))
        if dtype.is_float:
            out = torch.full((m, n), float("nan"), dtype=dtype.output, device=device)
        else:
            out = torch.full((m, n), INT_SENTINEL, dtype=dtype.output, device=device)
        return {"a": a, "b": w.t(), "out": out}

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        if out.shape != (p["m"], p["n"]) or out.dtype != dtype.output:
            return f"output is {tuple(out.shape)} {out.dtype}, expected {(p['m'], p['n'])} {dtype.output}"
        ref_dtype = reference_dtype(dtype)
        comparison = Comparison(tolerance_for(p, dtype))
        b = inputs["b"].to(ref_dtype)
        chunk = self._chunk_rows(p, dtype)
        with matmul_precision("highest"):  # the reference never runs on TF32, whatever the case set
            for start in range(0, p["m"], chunk):
                ref = inputs["a"][start:start + chunk].to(ref_dtype) @ b
                got = out[start:start + chunk].to(ref_dtype)
                problem = comparison.add(got, ref, rows_from(start))
                if problem:
                    return f"{dtype.name} {problem}"
        problem = comparison.finish()
        return f"{dtype.name} {problem}" if problem else None


def tolerance_for(p: dict, dtype: DType):
    """harness/measure/check.py's rule for one K-long reduction rounded once to the output dtype. The
    reference upcasts the same stored inputs, so only tf32 (which rounds fp32 inputs inside the
    kernel) carries an input-rounding term; fp32 must sit far below TF32's error, so an fp32 case
    that silently ran on TF32 tensor cores is a mismatch rather than a flattering MFU, and fp64
    (about sqrt(K)·2^-53) far below fp32's, so an fp64 case computed in fp32 is one too."""
    return tolerance(dtype, p["k"])


def random_operand(shape, dtype: DType, device: str, gen: torch.Generator) -> torch.Tensor:
    if not dtype.is_float:
        return torch.randint(-128, 128, shape, dtype=torch.int8, device=device, generator=gen)
    make = dtype.storage if dtype.size >= 2 else torch.float32
    return torch.randn(shape, dtype=make, device=device, generator=gen).to(dtype.storage)


GEMM = WORKLOAD = Gemm()
