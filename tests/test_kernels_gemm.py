"""kernels/gemm.py against torch: fresh random inputs, outputs poisoned before the call.

On CPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes stay small; the same tests run on a GPU, where the `gpu`-marked ones add bf16 and fp8 at
medium shapes with one fixed config (`config=gemm.FIXED_CONFIG`: no autotuning), and the `auto`
choice, autotuned once on a small shape.

Outputs are judged by the harness's one rule (harness/measure/check.py): a float64 reference on the CPU,
the NaN/unwritten guard, an outlier bound per element and a bound on the relative Frobenius error,
both from the dtype and K (tf32 adds its input rounding; fp8 Hopper's short accumulator); int8's
int32 results must be exact.
"""

import pytest
import torch

from harness.measure.check import compare, tolerance
from harness.measure.dtypes import DTYPES
from kernels import common, gemm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SENTINEL = -(2**31)  # int32 poison: unreachable for int8 sums at these K


DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float8_e4m3fn: "fp8", torch.int8: "int8"}


def _tol(dtype, precision, k):
    name = ("tf32" if precision == "tf32" else "fp32") if dtype == torch.float32 else DTYPE_NAME[dtype]
    return tolerance(DTYPES[name], k)


def _rand(shape, dtype, gen):
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
    return torch.randn(shape, generator=gen).to(dtype)


def _inputs(m, n, k, dtype, b_kmajor=False, seed=0):
    """Fresh random a [M, K] and b [K, N]; with b_kmajor, b is the transposed view of an [N, K] tensor."""
    gen = torch.Generator().manual_seed(seed)
    a = _rand((m, k), dtype, gen)
    b = _rand((n, k), dtype, gen).T if b_kmajor else _rand((k, n), dtype, gen)
    return a.to(DEVICE), b.to(DEVICE)


def _poisoned(m, n, dtype):
    out_dtype = gemm.OUT_DTYPE[dtype]
    fill = SENTINEL if out_dtype == torch.int32 else float("nan")
    return torch.full((m, n), fill, dtype=out_dtype, device=DEVICE)


def _check(out, a, b, precision="ieee"):
    ref = a.cpu().double() @ b.cpu().double()
    got = out.cpu()
    if got.dtype == torch.int32:
        assert (got != SENTINEL).all(), "some output tiles were never written"
        assert torch.equal(got, ref.to(torch.int32))
    else:
        problem = compare(got.double(), ref, _tol(a.dtype, precision, a.shape[1]))
        assert problem is None, problem


def _run(m, n, k, dtype, variant, b_kmajor=False, precision="ieee", config=None):
    reason = gemm.unsupported(dtype, torch.device(DEVICE), variant)
    if reason:
        pytest.skip(reason)
    a, b = _inputs(m, n, k, dtype, b_kmajor)
    out = _poisoned(m, n, dtype)
    assert gemm.matmul(a, b, out, precision=precision, variant=variant, config=config) is out
    _check(out, a, b, precision)


# Not multiples of the blocks; decode-like M=1; tall and wide to cover partial tile groups.
TILED_SHAPES = [(67, 45, 129), (64, 64, 64), (1, 96, 160), (200, 45, 40), (20, 150, 40)]
# TMA needs 16-byte aligned rows (N and K multiples of 16 cover every dtype); M stays odd.
TMA_SHAPES = [(67, 48, 144), (1, 64, 96)]


@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_tiled_matches_torch(shape, dtype, b_kmajor):
    _run(*shape, dtype, "tiled", b_kmajor)


@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", TMA_SHAPES, ids=str)
def test_tma_matches_torch(shape, dtype, b_kmajor):
    _run(*shape, dtype, "tma", b_kmajor)


@pytest.mark.parametrize("variant", ["tiled", "tma"])
def test_tf32_precision(variant):
    _run(67, 48, 144, torch.float32, variant, precision="tf32")


@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("variant,shape", [("tiled", (67, 45, 129)), ("tma", (67, 48, 144))])
def test_int8_exact(variant, shape, b_kmajor):
    _run(*shape, torch.int8, variant, b_kmajor)


@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("variant,shape", [("tiled", (67, 45, 129)), ("tma", (67, 48, 144))])
def test_fp8_small(variant, shape, b_kmajor):
    _run(*shape, torch.float8_e4m3fn, variant, b_kmajor)


def test_auto_matches_torch():
    _run(67, 48, 144, torch.float16, "auto")


def test_strided_a_and_out():
    """The tiled kernel takes any strides: a column-major A and a transposed view as `out`."""
    m, n, k = 37, 29, 70
    a, b = _inputs(m, n, k, torch.float32)
    a = a.T.contiguous().T
    out = torch.full((n, m), float("nan"), device=DEVICE).T
    gemm.matmul(a, b, out, variant="tiled")
    _check(out, a, b)


def test_allocates_output_when_none():
    a, b = _inputs(5, 7, 16, torch.int8)
    out = gemm.matmul(a, b, variant="tiled")
    assert out.dtype == torch.int32 and out.shape == (5, 7)
    _check(out, a, b)


def test_empty_dims_launch_nothing():
    a, b = _inputs(4, 6, 0, torch.float32)
    assert gemm.matmul(a, b, _poisoned(4, 6, torch.float32)).eq(0).all()
    a, b = _inputs(0, 6, 8, torch.float32)
    assert gemm.matmul(a, b).shape == (0, 6)


@pytest.mark.parametrize("call", [
    lambda a, b: gemm.matmul(a, b[:-1]),  # K mismatch
    lambda a, b: gemm.matmul(a, b.half()),  # dtype mismatch
    lambda a, b: gemm.matmul(a, b, precision="fast"),
    lambda a, b: gemm.matmul(a, b, variant="cublas"),
    lambda a, b: gemm.matmul(a, b, torch.empty(8, 8, device=DEVICE)),  # out shape
    lambda a, b: gemm.matmul(a, b, torch.empty(8, 24, device=DEVICE, dtype=torch.float16)),  # out dtype
    lambda a, b: gemm.matmul(a, b[:, :13], variant="tma"),  # out: 13 fp32 columns, rows not 16-byte aligned
], ids=["k", "dtype", "precision", "variant", "out_shape", "out_dtype", "tma_unaligned"])
def test_rejects_bad_arguments(call):
    a, b = _inputs(8, 24, 16, torch.float32)
    with pytest.raises(ValueError):
        call(a, b)


# unsupported(): reasons are decided from the environment, so fake it.

def test_reason_for_bf16_in_interpreter(monkeypatch):
    monkeypatch.setattr(common, "INTERPRET", True)
    reason = gemm.unsupported(torch.bfloat16, torch.device("cpu"))
    assert "interpreter" in reason and "bf16" in reason
    assert gemm.unsupported(torch.float16, torch.device("cpu"), "tma") is None


def test_reason_for_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(common, "INTERPRET", False)
    reason = gemm.unsupported(torch.float16, torch.device("cpu"))
    assert "CUDA GPU" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(ValueError, match="CUDA GPU"):
        gemm.matmul(torch.ones(2, 2, dtype=torch.float16), torch.ones(2, 2, dtype=torch.float16))


def test_reasons_for_unknown_dtype_variant_and_old_triton(monkeypatch):
    assert "float64" in gemm.unsupported(torch.float64, torch.device(DEVICE))
    assert "variant" in gemm.unsupported(torch.float16, torch.device(DEVICE), "cutlass")
    monkeypatch.setattr(gemm, "TensorDescriptor", None)
    assert "descriptor" in gemm.unsupported(torch.float16, torch.device(DEVICE), "tma")


@pytest.mark.parametrize("capability,dtype,variant,expect", [
    ((9, 0), torch.float8_e4m3fn, "tma", None),
    ((9, 0), torch.bfloat16, "auto", None),
    ((8, 0), torch.float16, "tma", "Hopper"),
    ((10, 0), torch.float16, "tma", "Hopper"),
    ((8, 0), torch.float16, "tiled", None),
    ((8, 0), torch.float8_e4m3fn, "auto", "sm_89"),
    ((8, 9), torch.float8_e4m3fn, "tiled", None),
    ((7, 5), torch.bfloat16, "tiled", "sm_80"),
])
def test_reasons_by_compute_capability(monkeypatch, capability, dtype, variant, expect):
    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    reason = gemm.unsupported(dtype, torch.device("cuda"), variant)
    assert reason is None if expect is None else expect in reason


def test_reasons_on_amd(monkeypatch):
    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "AMD" in gemm.unsupported(torch.float16, torch.device("cuda"), "tma")
    assert gemm.unsupported(torch.float16, torch.device("cuda"), "tiled") is None


# GPU: bf16 and fp8 with one fixed config (no autotuning), and the auto choice. Every dimension of
# GPU_SHAPES is a multiple of 16 (TMA's alignment) but not of the 64x64 tile, so edges are partial;
# the shapes share Triton's integer specialization, so each (kernel, dtype, B layout) compiles once
# for both: 8 compiles for test_gpu_bf16_fp8.

GPU_SHAPES = [(512, 384, 256), (336, 208, 144)]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["tiled", "tma"])
@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_bf16_fp8(shape, dtype, b_kmajor, variant):
    _run(*shape, dtype, variant, b_kmajor, config=gemm.FIXED_CONFIG)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_gpu_unaligned_falls_back_to_tiled(dtype):
    _run(333, 197, 131, dtype, "auto", config=gemm.FIXED_CONFIG)
    assert not any(key[0] == (333, 131) for key in gemm._AUTO_CHOICE)


@pytest.mark.gpu
def test_gpu_auto_measures_once_and_caches():
    """The one autotuned GPU GEMM test: at M = 64, N = 128 pruning leaves two tile configs per
    variant, so it autotunes both variants (4 compiles) and times the pair once."""
    hopper = gemm.unsupported(torch.bfloat16, torch.device("cuda"), "tma") is None
    a, b = _inputs(64, 128, 256, torch.bfloat16)
    out = _poisoned(64, 128, torch.bfloat16)
    gemm.matmul(a, b, out)
    _check(out, a, b)
    keys = [key for key in gemm._AUTO_CHOICE if key[0] == a.shape and key[2] == b.shape]
    assert len(keys) == (1 if hopper else 0)  # only Hopper measures; elsewhere auto is tiled
    if hopper:
        choice = gemm._AUTO_CHOICE[keys[0]]
        assert choice in ("tiled", "tma")
        out.fill_(float("nan"))
        gemm.matmul(a, b, out)  # served from the cache
        assert gemm._AUTO_CHOICE[keys[0]] == choice
        _check(out, a, b)
