"""GEMM backends: `torch` (cuBLAS on NVIDIA, hipBLASLt on AMD, oneDNN/MKL on CPU), `triton` (ours,
kernels/gemm.py, its `auto` variant) and `triton-splitk` (ours, the split-K variant for decode
sizes, chosen by name until a GPU run shows it faster). Each writes into the workload's poisoned `out` buffer, so nothing is
allocated inside the timed region and an unwritten tile fails the check.

fp64 is torch.matmul in float64: cuBLAS DGEMM, on the FP64 tensor cores of sm80 and later parts
that have them. Our kernel has no fp64 (kernels/gemm.py says so, and the case is a skipped row).
"""

from __future__ import annotations

import torch

from harness.backends import Backend, register
from harness.hardware.device import DeviceFacts, fp8_unsupported
from harness.measure.dtypes import DType


def _torch_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    m, n, k = p["m"], p["n"], p["k"]
    on_gpu = dev.kind == "cuda"
    if dtype.name == "tf32" and not (on_gpu and dev.vendor == "nvidia"):
        return "TF32 is an NVIDIA tensor-core mode; elsewhere it would silently be fp32"
    if dtype.name == "fp8":
        if reason := fp8_unsupported(dev):
            return reason
        if k % 16 or n % 16:
            return f"torch._scaled_mm needs k and n divisible by 16 (got k={k}, n={n})"
    if dtype.name == "int8" and on_gpu:
        if m <= 16:
            return f"torch._int_mm on a GPU needs m > 16 (got m={m})"
        if k % 8 or n % 8:
            return f"torch._int_mm on a GPU needs k and n divisible by 8 (got k={k}, n={n})"
    return None


def _torch_build(inputs: dict, p: dict, dtype: DType):
    a, b, out = inputs["a"], inputs["b"], inputs["out"]
    if dtype.name == "fp8":
        one = torch.ones((), dtype=torch.float32, device=a.device)  # unit per-tensor scales
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=dtype.output, out=out)
    if dtype.name == "int8":
        return lambda: torch._int_mm(a, b, out=out)
    # The runner restores the global precision after the case; "high" lets cuBLAS use TF32.
    torch.set_float32_matmul_precision("high" if dtype.name == "tf32" else "highest")
    return lambda: torch.matmul(a, b, out=out)


def _triton_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import gemm

    return gemm.unsupported(dtype.storage, torch.device(dev.kind))


def _triton_build(inputs: dict, p: dict, dtype: DType, variant: str = "auto"):
    from kernels import gemm

    precision = "tf32" if dtype.name == "tf32" else "ieee"
    return gemm.prepare(inputs["a"], inputs["b"], inputs["out"], precision=precision, variant=variant)


register(Backend("gemm", "torch", "torch.matmul / _scaled_mm / _int_mm (cuBLAS on NVIDIA GPUs)",
                 _torch_unsupported, _torch_build))
register(Backend("gemm", "triton", "ours: kernels/gemm.py, autotuned tiles, grouped order, TMA on Hopper",
                 _triton_unsupported, _triton_build))


def _splitk_unsupported(p: dict, dtype: DType, dev: DeviceFacts) -> str | None:
    from kernels import gemm

    if p["m"] > gemm.SPLIT_MAX_M:
        return f"split-K is for decode sizes, m <= {gemm.SPLIT_MAX_M} (got m={p['m']}); use triton"
    return gemm.unsupported(dtype.storage, torch.device(dev.kind), "splitk")


def _splitk_build(inputs: dict, p: dict, dtype: DType):
    return _triton_build(inputs, p, dtype, variant="splitk")


def _splitk_columns(inputs: dict, p: dict, dtype: DType) -> dict:
    from kernels import gemm

    splits, _ = gemm.split_count(p["m"], p["n"], p["k"], dtype.storage, inputs["a"].device)
    return {"splits": splits}


register(Backend("gemm", "triton-splitk", "ours: kernels/gemm.py split-K for decode sizes (m <= 64), "
                 "partials summed in a fixed order; not in triton's auto until a GPU run shows it faster",
                 _splitk_unsupported, _splitk_build, columns=_splitk_columns))
