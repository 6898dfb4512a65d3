"""The flags a reader acts on, end to end on planted numbers for an H100: `suspect` only when
impossible, records raised (not flagged) when a case beats a measured ceiling, the clock columns,
and the summary's throttle and new-best call-outs."""

import json

import pytest

from harness.hardware import ceilings, specs
from harness.measure import config
from harness.present import summary
from harness.measure.case import Context, base_row, finish_row
from harness.hardware.device import DeviceFacts
from harness.measure.timing import Timer

H100 = specs.lookup("h100-sxm")
FACTS = DeviceFacts(kind="cuda", name="NVIDIA H100 80GB HBM3", vendor="nvidia", uuid="GPU-planted",
                    compute_capability=(9, 0), sm_count=132, max_sm_clock_mhz=1980)
SUITE = """
suite: planted
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: [bf16, int8]
    shapes: [{m: 8192, n: 8192, k: 8192}]
"""
FLOPS = 2 * 8192**3


def cases() -> dict:
    return {c.case_id: c for c in config.parse(SUITE, "planted.yaml").cases}


def ms_for(tflops: float) -> float:
    return FLOPS / (tflops * 1e12) * 1e3


def stored(matmul: dict) -> dict:
    return {"key": FACTS.key, "device": FACTS.to_dict(), "measured": "2026-12-04T14:50:48+00:00",
            "matmul": {k: {"tflops": v, "shape": [8192, 8192, 8192], "backend": "torch"} for k, v in matmul.items()},
            "memory": {"best": "torch-triad", "best_gbps": 3000.0},
            "exp": {"exp2_per_s": 3.9e12}, "launch": {"fastest_ms": 0.002}}


def context(store: dict | None) -> Context:
    if store:
        ceilings.save(store)
    timer = Timer("cpu", config.parse(SUITE, "planted.yaml").timing, None)
    return Context("cuda", FACTS, H100, timer, ceilings.summary(ceilings.load(FACTS)), None)


def finished(case, ctx, tflops, **telemetry) -> dict:
    row = {**base_row(case, ctx), **telemetry}
    return finish_row(row, [ms_for(tflops)] * 20, case, ctx)


def test_an_impossible_time_is_suspect_and_a_record_is_not():
    ctx = context(stored({"bf16": 793.0, "int8": 1005.0}))
    c = cases()
    impossible = finished(c["gemm:bf16:m=8192,n=8192,k=8192:torch"], ctx, 2000.0)  # 2x the datasheet
    assert impossible["status"] == "suspect" and "datasheet peak" in impossible["reason"]
    # Our int8 kernel beat cuBLAS's int8 "ceiling" by 11% on the H200: a record, not an impossibility.
    beat = finished(c["gemm:int8:m=8192,n=8192,k=8192:triton"], ctx, 1110.9)
    assert beat["status"] == "ok" and beat["mfu_ceiling"] == pytest.approx(1110.9 / 1005.0)
    below_floor = finish_row(base_row(c["gemm:bf16:m=8192,n=8192,k=8192:triton"], ctx), [0.0005] * 20,
                             c["gemm:bf16:m=8192,n=8192,k=8192:triton"], ctx)
    assert below_floor["status"] == "suspect" and "empty kernel launch" in below_floor["reason"]


def test_the_final_pass_raises_the_ceiling_and_re_rates_every_row(tmp_path):
    ctx = context(stored({"bf16": 793.0, "int8": 1005.0}))
    c = cases()
    rows = [finished(c["gemm:int8:m=8192,n=8192,k=8192:torch"], ctx, 959.4),
            finished(c["gemm:int8:m=8192,n=8192,k=8192:triton"], ctx, 1110.9),
            finished(c["gemm:bf16:m=8192,n=8192,k=8192:torch"], ctx, 749.5),
            finished(c["gemm:bf16:m=8192,n=8192,k=8192:triton"], ctx, 2000.0)]  # suspect: raises nothing
    final = ceilings.rerate(rows, ctx, tmp_path / "run")

    store = ceilings.load(FACTS)
    assert store["matmul"]["int8"]["tflops"] == pytest.approx(1110.9)
    assert store["matmul"]["int8"]["source"]["case_id"] == "gemm:int8:m=8192,n=8192,k=8192:triton"
    assert store["matmul"]["int8"]["source"]["run"] == str(tmp_path / "run")
    assert store["matmul"]["int8"]["replaced"]["tflops"] == 1005.0
    assert store["matmul"]["bf16"]["tflops"] == 793.0  # 2000 TFLOPS is suspect, never a record
    assert ctx.ceilings["matmul_tflops"]["int8"] == pytest.approx(1110.9)

    by_id = {r["case_id"]: r for r in final}
    assert by_id["gemm:int8:m=8192,n=8192,k=8192:torch"]["mfu_ceiling"] == pytest.approx(959.4 / 1110.9)
    assert by_id["gemm:int8:m=8192,n=8192,k=8192:triton"]["mfu_ceiling"] == pytest.approx(1.0)
    assert "new best int8 matmul ceiling: 1005 -> 1111 TFLOPS" in by_id["gemm:int8:m=8192,n=8192,k=8192:triton"]["new_best"]
    assert all(r["mfu_ceiling"] <= 1 + 1e-12 for r in final if r["status"] == "ok")

    again = ceilings.rerate(final, ctx, tmp_path / "run2")  # nothing new beats the raised record
    assert ceilings.load(FACTS) == store
    assert [r["mfu_ceiling"] for r in again] == [r["mfu_ceiling"] for r in final]


def test_no_stored_ceilings_nothing_is_created(tmp_path):
    ctx = context(None)
    row = finished(cases()["gemm:bf16:m=8192,n=8192,k=8192:torch"], ctx, 749.5)
    [final] = ceilings.rerate([row], ctx, tmp_path)
    assert final["mfu_ceiling"] is None and ceilings.load(FACTS) is None


def test_clock_columns_follow_the_final_telemetry(tmp_path):
    """A pooled row's telemetry is replaced after finish_row; the final pass re-derives the verdict."""
    ctx = context(stored({"bf16": 793.0}))
    row = finished(cases()["gemm:bf16:m=8192,n=8192,k=8192:triton"], ctx, 684.5,
                   sm_clock_mhz=1815.0, throttle="sw_power_cap")
    assert row["throttled"] is False and row["mfu_at_clock"] == pytest.approx(row["mfu"] * row["peak_clock_mhz"] / 1815)
    row["sm_clock_mhz"] = 1380.0  # the slowest pass, as runner._pool reports it
    [final] = ceilings.rerate([row], ctx, tmp_path)
    assert final["throttled"] is True
    assert final["mfu_at_clock"] == pytest.approx(final["mfu"] * final["peak_clock_mhz"] / 1380)


def _row(i: int, clock: float, throttled: bool, reasons: str = "sw_power_cap") -> dict:
    return {"case_id": f"gemm:bf16:m={i}:torch", "workload": "gemm", "backend": "torch", "dtype": "bf16",
            "status": "ok", "sm_clock_mhz": clock, "peak_clock_mhz": 1830.0, "mfu": 0.6,
            "mfu_at_clock": 0.6 * 1830 / clock, "throttle": reasons, "throttled": throttled}


def test_the_summary_names_the_worst_few_throttled_and_counts_the_rest():
    rows = [_row(i, 1400.0 + 10 * i, True) for i in range(8)]
    rows += [_row(100 + i, 1950.0, False) for i in range(20)]  # at the power cap, clock fine
    rows.append({**_row(200, 1980.0, False, ""), "new_best": "new best bf16 matmul ceiling: 793 -> 801 TFLOPS"})
    lines = summary.callouts(rows)
    text = "\n".join(lines)
    named = [line for line in lines if line.startswith("- `gemm:bf16:m=")]
    throttled_named = [line for line in named if "SM clock" in line]
    assert len(throttled_named) == summary.WORST_THROTTLED
    assert "m=0:" in throttled_named[0]  # the lowest clock first
    assert "and 3 more" in text
    assert "20 more case(s) ran at the power cap" in text
    assert "New best" in text and "793 -> 801" in text
    assert not any("m=10" in line for line in named)  # capped but not throttled: counted, not listed


def test_summary_markdown_keeps_the_throttled_column_terse():
    rows = [_row(1, 1400.0, True), _row(2, 1950.0, False)]
    for r in rows:
        r.update(m=1, n=1, k=1, label=None, reason=None, time_ms=1.0, tflops=1.0)
    headers, cells = summary.table(rows, "gemm")
    column = [row[headers.index("throttled")] for row in cells]
    assert sorted(column) == ["", "yes"]
    json.dumps(rows)  # rows stay JSON-able (booleans, not objects)
