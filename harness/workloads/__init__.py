"""Workloads: each knows its math (parameters, FLOP and byte formulas, inputs, reference check).

A workload never runs a kernel; backends do (harness/backends). REGISTRY maps a suite's
`workload:` name to its Workload. Formulas live in exactly one place: the workload's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from harness.measure.dtypes import DType


@dataclass(frozen=True)
class Param:
    """One parameter a suite may set, with what values are allowed."""

    name: str
    kind: type  # int, bool or str
    help: str
    default: object = None
    required: bool = False
    minimum: int | None = None
    choices: tuple = ()

    def check(self, value) -> str | None:
        """None if the value is allowed, else what is allowed and what was given."""
        if self.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            return f"must be an integer (got {value!r})"
        if self.kind is bool and not isinstance(value, bool):
            return f"must be true or false (got {value!r})"
        if self.kind is str and not isinstance(value, str):
            return f"must be a string (got {value!r})"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum} (got {value!r})"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))} (got {value!r})"
        return None


LABEL = Param("label", str, "a free-form name shown beside the case (presets fill it)", default="")


class Workload:
    """The interface every workload implements; see workloads/gemm.py for a full example."""

    name: str
    params: tuple[Param, ...]
    dtypes: tuple[str, ...]
    default_dtype: str
    presets: dict[str, Callable[[], list[dict]]] = {}
    summary_columns: tuple[str, ...] = ()  # extra result columns the summary table shows
    baseline: str | None = None  # the backend others are compared with ("× baseline" in the summary)
    # Other problems than the workload's own that a backend may compute (its Backend.problem) and
    # check() knows the reference of; () for most workloads.
    problems: tuple[str, ...] = ()
    # Every rank takes part in one operation (a collective, workloads/comm.py; a layer split over
    # ranks, workloads/tp_linear.py and ep_moe.py): a distributed run records one row for it, timed
    # by its slowest rank, and lines the ranks up before each sample.
    collective: bool = False
    # A layer split over ranks is timed in phases (workloads/overlap_model.py): its backends build
    # one closure per phase, {phase: closure}; the first is checked and is the row's time_ms, and
    # every phase's median is its `<phase>_ms` column. () for a workload timed as one closure.
    phases: tuple[str, ...] = ()

    def declaration(self) -> dict:
        """What a run directory's schema records of this workload (harness/store/schema.py)."""
        return {"params": [p.name for p in self.params], "baseline": self.baseline,
                "summary_columns": list(self.summary_columns), "phases": list(self.phases)}

    def complete(self, p: dict) -> dict:
        """Fill defaults that depend on other parameters (e.g. decode's seq_q = 1); runs before validate."""
        return p

    def validate(self, p: dict) -> tuple[str, str] | None:
        """Rules across parameters: (key, message) for the first broken one, else None."""
        return None

    def flops(self, p: dict) -> int:
        raise NotImplementedError

    def bytes(self, p: dict, dtype: DType) -> int:
        raise NotImplementedError

    def extra_columns(self, p: dict, dtype: DType) -> dict:
        """Workload-specific result columns (e.g. flops_executed)."""
        return {}

    def placed(self, p: dict, world) -> dict:
        """The parameters on the run's World (harness/distributed/launch.py): those that depend on
        the ranks resolved (tp-linear's `tp: 0` is every rank). Formulas, inputs, the backend and
        the row all see the placed parameters."""
        return p

    def placement_problem(self, p: dict, world) -> str | None:
        """Why the placed parameters cannot run on `world` (a group that does not divide the ranks, a
        dimension that does not split over its group), or None. A case with a problem is skipped
        with it before any formula is evaluated: formulas may assume the split works."""
        return None

    def peak_gpus(self, p: dict, world) -> int | None:
        """How many GPUs' peaks the row's FLOP and byte rates are over: 1 for a kernel on one GPU;
        a layer's group for a layer split over ranks (its flops and bytes are the whole layer's);
        None for a collective, whose bytes cross links (mfu, mbu and the roofline stay empty)."""
        return 1

    def comm_ops(self, p: dict, dtype: DType, world, rank: int | None = None) -> list[tuple[str, int]]:
        """The collectives one call makes on a rank, as (op, size in nccl-tests' convention;
        workloads/comm_model.py): `rank`'s, or with None the busiest rank's (what `mfu plan` predicts)."""
        return []

    def timed_columns(self, p: dict, dtype: DType, times_ms: dict, world, spec) -> dict:
        """Columns derived from the measured medians (times_ms: "time", and each phase's), the run's
        World and the device's PeakSpec: a collective's link rates; a layer's three timings, its
        compute/communication ratio and its communication rates (workloads/overlap_model.py)."""
        if not self.phases:
            return {}
        from harness.workloads import overlap_model
        from harness.workloads.comm import placement

        group = overlap_model.layer_world(self.peak_gpus(p, world), world)
        rank = placement()[0] % group.size
        return overlap_model.layer_columns(times_ms, self.comm_ops(p, dtype, world, rank), group, spec)

    def exps(self, p: dict) -> int | None:
        """Softmax exponentials per call, for workloads that compute them (exp_util); else None."""
        return None

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        """Device memory a case needs at its peak: inputs, outputs and the reference check."""
        raise NotImplementedError

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        """Fresh random inputs (never zeros) and a poisoned output buffer, `out`."""
        raise NotImplementedError

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None) -> str | None:
        """Compare a backend's output with a higher-precision reference: None, or what is wrong.
        `problem` is the backend's declared problem (Backend.problem, one of `problems`); None is
        the workload's own."""
        raise NotImplementedError


def _load() -> dict[str, Workload]:
    """Every module in this package that defines WORKLOAD registers it: adding a workload is
    adding a file."""
    import importlib
    import pkgutil

    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "WORKLOAD"):
            found[module.WORKLOAD.name] = module.WORKLOAD
    order = ["gemm", "moe", "attention"]  # the order `mfu` lists them in; others follow
    return dict(sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


REGISTRY: dict[str, Workload] = _load()
