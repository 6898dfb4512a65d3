"""The backend registry: how each (workload, backend) pair is run, without inheritance.

A Backend says whether it can run a case (`unsupported` returns a one-line reason, or None) and
builds a zero-argument closure that runs it. All setup (weights, scales, layouts, output buffers)
happens in `build`, so the timed region holds only the call (the tritonbench contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from harness.hardware.device import DeviceFacts
from harness.measure.dtypes import DType


@dataclass(frozen=True)
class Backend:
    workload: str
    name: str
    description: str
    unsupported: Callable[[dict, DType, DeviceFacts], str | None]  # (params, dtype, device) -> reason
    # (inputs, params, dtype) -> fn; for a workload with phases (a layer split over ranks,
    # workloads/overlap_model.py) -> {phase: fn}, the first of which is checked
    build: Callable[[dict, dict, DType], Callable[[], torch.Tensor] | dict[str, Callable[[], torch.Tensor]]]
    # Columns this backend adds to its rows, from the built inputs (e.g. flops_executed when it pads).
    columns: Callable[[dict, dict, DType], dict] | None = None
    # The bytes formula, for a backend that by design moves other data than the workload's problem
    # (MoE's dense-equivalent reads one expert's weights); None uses the workload's formula.
    bytes: Callable[[dict, DType], int] | None = None
    # The problem this backend computes when it is not the workload's own (MoE's dense-equivalent
    # computes one expert over T·k rows): one of the workload's `problems`, passed to its check.
    problem: str | None = None


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(backend: Backend) -> None:
    _REGISTRY.setdefault(backend.workload, {})[backend.name] = backend


def names(workload: str) -> list[str]:
    return list(_REGISTRY.get(workload, {}))


def get(workload: str, name: str) -> Backend:
    return _REGISTRY[workload][name]


def _load() -> None:
    """Import every module in this package; each registers its backends: adding one is adding a file."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_load()
