"""How every workload compares a backend's output with its higher-precision reference.

An element fails when |out - ref| / (|ref| + rms(ref)) exceeds the dtype's tolerance: relative for
large values, scaled by the typical magnitude for values near zero, so one rule fits GEMM outputs
of any size and softmax-weighted sums alike. A non-finite element fails first: outputs start
poisoned (NaN), so an unwritten tile shows up here. `locate` turns an index of the chunk into the
workload's own coordinates for the message.
"""

from __future__ import annotations

from typing import Callable

import torch


def compare(got: torch.Tensor, ref: torch.Tensor, tol: float,
            locate: Callable[[tuple[int, ...]], str] = lambda at: str(list(at)),
            rms_dim: int | None = None) -> str | None:
    """None if every element is within tol, else what is wrong and where (the worst element).

    rms_dim: take the rms along this dimension (per row) instead of over the whole chunk."""
    bad = ~torch.isfinite(got)
    if bad.any():
        first = tuple(int(x) for x in bad.nonzero()[0])
        return f"output has {int(bad.sum())} non-finite or unwritten elements (first at {locate(first)})"
    square = ref.square()
    rms = (square.mean() if rms_dim is None else square.mean(dim=rms_dim, keepdim=True)).sqrt()
    err = (got - ref).abs() / (ref.abs() + rms).clamp_min(torch.finfo(torch.float32).tiny)
    at = tuple(int(x) for x in torch.unravel_index(err.argmax(), err.shape))
    if err[at] > tol:
        return (f"error {float(err[at]):.2e} exceeds tolerance {tol:.0e} at {locate(at)}: "
                f"got {float(got[at]):.6g}, expected {float(ref[at]):.6g}")
    return None


def rows_from(row0: int) -> Callable[[tuple[int, ...]], str]:
    """locate() for a block of rows starting at row0 of a 2-D output."""
    return lambda at: f"[{row0 + at[0]}, {at[1]}]"
