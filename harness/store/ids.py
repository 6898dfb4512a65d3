"""Case and problem ids, built and taken apart in one place.

A problem is a workload, a dtype and parameters: `gemm:bf16:m=8,n=8,k=8`. A case is a problem run
by one backend: the problem id, a colon, the backend (`gemm:bf16:m=8,n=8,k=8:torch`). Ids are
stable across runs and machines, so runs can be matched case by case, and every backend of one
problem gets the same inputs. Light on purpose: readers import this without torch.
"""

from __future__ import annotations


def problem_id(workload: str, dtype: str, params) -> str:
    """The problem's id from its (name, value) parameters, in the workload's order; empty values
    (an unset label) are left out."""
    args = ",".join(f"{k}={_text(v)}" for k, v in params if v not in ("", None))
    return f"{workload}:{dtype}:{args}"


def case_id(problem: str, backend: str) -> str:
    return f"{problem}:{backend}"


def problem(row: dict) -> str:
    """A row's problem id: its case_id without the backend. A row whose case_id does not end in its
    backend (a pytest-benchmark row named by the test) is its own problem."""
    cid, backend = row["case_id"], row.get("backend")
    return cid[: -len(backend) - 1] if backend and cid.endswith(":" + backend) else cid


def params(row: dict) -> str:
    """The parameter part of a row's problem id: `m=8,n=8,k=8`."""
    return problem(row).split(":", 2)[-1]


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
