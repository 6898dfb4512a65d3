"""The torch side of the dtype names a suite may use (harness/measure/dtype_names.py): storage types and
element sizes.

A dtype name says both how inputs are stored and which datasheet peak the result is measured
against: `tf32` is fp32 storage computed with TF32 tensor-core math, so its MFU is over the tf32
peak; `fp64` is IEEE double, over the FP64 matrix (tensor-core) peak where a part has one. Output
sizes follow DESIGN.md: fp8 GEMMs write bf16, int8 GEMMs write int32.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from harness.measure.dtype_names import NAMES


@dataclass(frozen=True)
class DType:
    name: str
    storage: torch.dtype  # how inputs are held in memory
    output: torch.dtype  # what a matmul in this dtype writes
    peak_key: str  # the column of the peak table this dtype is measured against

    @property
    def size(self) -> int:
        """Bytes per input element."""
        return torch.empty((), dtype=self.storage).element_size()

    @property
    def out_size(self) -> int:
        """Bytes per output element."""
        return torch.empty((), dtype=self.output).element_size()

    @property
    def is_float(self) -> bool:
        return self.storage.is_floating_point


# (storage, output) of each name; each is measured against the peak of its own name.
_TORCH = {
    "fp64": (torch.float64, torch.float64),
    "fp32": (torch.float32, torch.float32),
    "tf32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "fp8": (torch.float8_e4m3fn, torch.bfloat16),
    "int8": (torch.int8, torch.int32),
}
DTYPES: dict[str, DType] = {name: DType(name, *_TORCH[name], peak_key=name) for name in NAMES}


def get(name: str) -> DType:
    return DTYPES[name]


@contextmanager
def matmul_precision(mode: str | None):
    """Set torch's fp32 matmul precision ("highest" = IEEE fp32, "high" = TF32) for a block,
    restoring the previous one after; with None, only restore (a case may change it)."""
    saved = torch.get_float32_matmul_precision()
    if mode is not None:
        torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
