"""What workloads and backends declare as plain values is checked against what exists: each
workload's baseline is one of its backends, its summary columns are columns its rows carry, a
backend's own problem is one its workload can check, and every dtype named anywhere is in the one
vocabulary (harness/measure/dtype_names.py). Plus the shared facts: problem ids, speedup and geomean."""

import math

import pytest

from harness import backends, workloads
from harness.store import columns, ids
from harness.present import ratios
from harness.hardware import specs, sweep
from harness.measure.check import COMPUTE_ROUNDOFF
from harness.cli import GPU_TABLE_DTYPES
from harness.measure.config import Case, parse
from harness.hardware.device import DeviceFacts
from harness.measure.dtype_names import NAMES, PEAK_KEYS
from harness.measure.dtypes import DTYPES

WORKLOADS = list(workloads.REGISTRY.items())


# A tiny problem of each workload, small enough to build every backend on a CPU.
EXAMPLES = {"gemm": dict(m=64, n=64, k=64),
            "moe": dict(tokens=8, experts=4, top_k=2, hidden=16, intermediate=8),
            "attention": dict(phase="decode", batch=1, heads=2, kv_heads=1, seq_kv=16, head_dim=16),
            "block": dict(phase="train", batch=1, seq=4, hidden=8, heads=2, kv_heads=1, head_dim=4,
                          intermediate=16),
            "comm": dict(op="all_gather", size=64),
            "tp-linear": dict(tokens=8, in_features=16, out_features=16, tp=1),
            "ep-moe": dict(tokens=8, experts=4, top_k=2, hidden=16, intermediate=8, ep=1)}


def _carried(name: str, wl) -> set[str]:
    """Every column a row of this workload can carry: the registry's, the workload's extras and
    what each backend that builds here adds (its `columns`)."""
    import torch

    dtype_name = "fp16" if "fp16" in wl.dtypes else wl.default_dtype  # comm has no fp16
    text = (f"suite: t\ncases:\n  - workload: {name}\n    dtype: {dtype_name}\n    backends: [{backends.names(name)[0]}]\n"
            + "".join(f"    {k}: {v}\n" for k, v in EXAMPLES[name].items()))
    p, dtype = parse(text, "<test>").cases[0].p, DTYPES[dtype_name]
    carried = set(columns.BY_NAME) | set(wl.extra_columns(p, dtype))
    facts = DeviceFacts(kind="cpu", name="cpu")
    for b in backends.names(name):
        backend = backends.get(name, b)
        if backend.columns is None or backend.unsupported(p, dtype, facts):
            continue
        inputs = wl.make_inputs(p, dtype, "cpu", torch.Generator().manual_seed(0))
        backend.build(inputs, p, dtype)
        carried |= set(backend.columns(inputs, p, dtype))
    return carried


@pytest.mark.parametrize("name, wl", WORKLOADS, ids=[n for n, _ in WORKLOADS])
def test_a_workloads_baseline_is_one_of_its_backends(name, wl):
    assert wl.baseline is None or wl.baseline in backends.names(name), wl.baseline


@pytest.mark.parametrize("name, wl", WORKLOADS, ids=[n for n, _ in WORKLOADS])
def test_a_workloads_summary_columns_are_columns_its_rows_carry(name, wl):
    carried = _carried(name, wl)
    for column in wl.summary_columns:
        assert column in carried, f"{name}: summary column {column!r} is no column its rows carry"


@pytest.mark.parametrize("name, wl", WORKLOADS, ids=[n for n, _ in WORKLOADS])
def test_a_backends_declared_problem_is_one_its_workload_checks(name, wl):
    for b in backends.names(name):
        problem = backends.get(name, b).problem
        assert problem is None or problem in wl.problems, (b, problem)


def test_every_dtype_named_anywhere_is_in_the_vocabulary():
    assert tuple(DTYPES) == NAMES and set(NAMES) <= set(PEAK_KEYS)
    assert all(d.peak_key in PEAK_KEYS for d in DTYPES.values())
    for name, wl in WORKLOADS:
        assert set(wl.dtypes) <= set(NAMES) and wl.default_dtype in wl.dtypes, name
    for kind, names in sweep.MATMUL_DTYPES.items():
        assert set(names) <= set(NAMES), kind
    assert set(sweep.MATMUL_DTYPES["cuda"]) == set(NAMES)  # a GPU ceiling for every dtype a suite may use
    assert set(GPU_TABLE_DTYPES) <= set(PEAK_KEYS)
    assert set(COMPUTE_ROUNDOFF) <= set(NAMES)
    for arch, rates in specs.ARCH_RATES.values():
        assert set(rates) <= set(PEAK_KEYS), arch


def test_a_problem_id_is_the_case_id_without_its_backend():
    case = Case("gemm", "triton", "bf16", (("m", 1), ("n", 2), ("k", 3), ("label", ""), ("flag", True)))
    assert case.problem_id == "gemm:bf16:m=1,n=2,k=3,flag=true"
    assert ids.problem({"case_id": case.case_id, "backend": "triton"}) == case.problem_id
    # a pytest-benchmark row named by its test keeps its whole name, "::" and all
    assert ids.problem({"case_id": "tests/t.py::test_x", "backend": ""}) == "tests/t.py::test_x"


def test_speedup_is_base_time_over_this_time_and_only_between_ok_rows():
    base, fast = {"status": "ok", "time_ms": 4.0}, {"status": "ok", "time_ms": 1.0}
    assert ratios.speedup(base, fast) == 4.0 and ratios.speedup(fast, base) == 0.25
    assert ratios.speedup(base, {**fast, "status": "suspect"}) is None
    assert ratios.speedup(None, fast) is None and ratios.speedup(base, {"status": "ok"}) is None


def test_geomean_leaves_out_what_has_no_logarithm():
    assert ratios.geomean([0.5, 2.0, None, 0.0, math.inf]) == pytest.approx(1.0)
    assert ratios.geomean([]) is None and ratios.geomean([None]) is None
