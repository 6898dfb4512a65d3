"""The GEMM correctness check: right answers pass, every kind of wrong answer is caught."""

import pytest
import torch

from harness.measure.dtypes import DTYPES, matmul_precision
from harness.workloads.gemm import GEMM, INT_SENTINEL

P = {"m": 48, "n": 40, "k": 96}


def inputs(dtype: str, p=P):
    return GEMM.make_inputs(p, DTYPES[dtype], "cpu", torch.Generator().manual_seed(0))


def torch_result(x: dict, dtype: str) -> torch.Tensor:
    a, b = x["a"], x["b"]
    if dtype == "fp8":
        one = torch.ones(())
        return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    if dtype == "int8":
        return torch._int_mm(a, b)
    with matmul_precision("highest"):
        return a @ b


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp8", "int8"])
def test_correct_result_passes(dtype):
    x = inputs(dtype)
    assert GEMM.check(x, torch_result(x, dtype), P, DTYPES[dtype]) is None


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp8", "int8"])
def test_inputs_are_random_nonzero_and_output_is_poisoned(dtype):
    x = inputs(dtype)
    assert x["a"].float().abs().sum() > 0 and x["a"].float().std() > 0
    assert x["b"].shape == (P["k"], P["n"]) and x["b"].t().is_contiguous()  # nn.Linear layout
    if DTYPES[dtype].is_float:
        assert torch.isnan(x["out"]).all()
    else:
        assert (x["out"] == INT_SENTINEL).all()
    assert "non-finite or unwritten" in GEMM.check(x, x["out"], P, DTYPES[dtype]) or dtype == "int8"


def test_unwritten_tile_is_caught():
    x = inputs("bf16")
    out = torch_result(x, "bf16")
    out[16:32, 8:16] = float("nan")
    assert "unwritten" in GEMM.check(x, out, P, DTYPES["bf16"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp8"])
def test_one_wrong_element_is_caught(dtype):
    x = inputs(dtype)
    out = torch_result(x, dtype).clone()
    out[5, 7] += 0.5 * out.float().abs().max().to(out.dtype)
    assert "exceeds tolerance" in GEMM.check(x, out, P, DTYPES[dtype])


def test_int8_must_be_exact():
    x = inputs("int8")
    out = torch_result(x, "int8")
    out[3, 3] += 1
    assert "exceeds tolerance" in GEMM.check(x, out, P, DTYPES["int8"])
    x["out"].fill_(INT_SENTINEL)
    assert GEMM.check(x, x["out"], P, DTYPES["int8"]) is not None


def test_fp32_case_that_ran_at_lower_precision_is_a_mismatch():
    # TF32 keeps 10 mantissa bits; rounding inputs to bf16 (7 bits) is a stand-in CPU torch can do.
    p = {"m": 64, "n": 64, "k": 1024}
    x = inputs("fp32", p)
    low = (x["a"].bfloat16().float() @ x["b"].bfloat16().float())
    assert "exceeds tolerance" in GEMM.check(x, low, p, DTYPES["fp32"])
    tf32_like = _round_mantissa(x["a"], 10) @ _round_mantissa(x["b"], 10)
    assert GEMM.check(x, tf32_like, p, DTYPES["tf32"]) is None
    assert "exceeds tolerance" in GEMM.check(x, tf32_like, p, DTYPES["fp32"])


def _round_mantissa(t: torch.Tensor, bits: int) -> torch.Tensor:
    m, e = torch.frexp(t.double())
    return torch.ldexp(torch.round(m * 2**bits) / 2**bits, e).float()


def test_wrong_shape_or_dtype_is_caught():
    x = inputs("bf16")
    assert "expected" in GEMM.check(x, torch_result(x, "bf16").float(), P, DTYPES["bf16"])
    assert "expected" in GEMM.check(x, torch_result(x, "bf16")[:-1], P, DTYPES["bf16"])


def test_check_works_in_row_chunks(monkeypatch):
    import harness.workloads.gemm as gemm

    monkeypatch.setattr(gemm, "CHUNK_BYTES", 8 * P["n"] * 4)  # 8 rows per chunk
    x = inputs("bf16")
    out = torch_result(x, "bf16")
    assert GEMM.check(x, out, P, DTYPES["bf16"]) is None
    out[45, 0] = 1e4
    assert "at [45, 0]" in GEMM.check(x, out, P, DTYPES["bf16"])
