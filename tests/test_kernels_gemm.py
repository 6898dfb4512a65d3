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


def _run(m, n, k, dtype, variant, b_kmajor=False, precision="ieee", config=None, splits=None):
    reason = gemm.unsupported(dtype, torch.device(DEVICE), variant)
    if reason:
        pytest.skip(reason)
    a, b = _inputs(m, n, k, dtype, b_kmajor)
    out = _poisoned(m, n, dtype)
    assert gemm.matmul(a, b, out, precision=precision, variant=variant, config=config, splits=splits) is out
    _check(out, a, b, precision)
    return a, b, out


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
    lambda a, b: gemm.matmul(a, b, variant="tiled", splits=2),  # splits is split-K's
    lambda a, b: gemm.matmul(a, b, variant="splitk", splits=0),
    lambda a, b: gemm.matmul(a, b, variant="splitk", splits=gemm.MAX_SPLITS + 1),
], ids=["k", "dtype", "precision", "variant", "out_shape", "out_dtype", "tma_unaligned", "splits_not_splitk",
        "splits_0", "splits_too_many"])
def test_rejects_bad_arguments(call):
    a, b = _inputs(8, 24, 16, torch.float32)
    with pytest.raises(ValueError):
        call(a, b)


# Split-K: decode-sized M, K cut into splits whose fp32 partials are summed in a fixed order.
# Under the interpreter the SM count is 2, so the shape model rarely splits small K: `splits=` forces
# it, with K not a multiple of the split length (the last split is short, and not a whole BLOCK_K).

SPLITK_SHAPES = [(1, 48, 300), (16, 70, 520), (64, 40, 330)]


@pytest.mark.parametrize("splits", [None, 3], ids=["model", "3_splits"])
@pytest.mark.parametrize("b_kmajor", [False, True], ids=["b_rowmajor", "b_kmajor"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", SPLITK_SHAPES, ids=str)
def test_splitk_matches_torch(shape, dtype, b_kmajor, splits):
    m, n, k = shape
    count, k_split = gemm.split_count(m, n, k, dtype, DEVICE, splits)
    assert count == (splits or count) and k % k_split and k_split % (128 // dtype.itemsize) == 0
    _run(*shape, dtype, "splitk", b_kmajor, config=gemm.FIXED_CONFIG, splits=splits)


@pytest.mark.parametrize("dtype,precision", [(torch.int8, "ieee"), (torch.float32, "tf32")], ids=["int8", "tf32"])
def test_splitk_int8_and_tf32(dtype, precision):
    _run(16, 40, 300, dtype, "splitk", precision=precision, config=gemm.FIXED_CONFIG, splits=3)


def test_splitk_is_bit_identical_across_calls():
    """Two calls into fresh poisoned outputs give the same bits (the model splits this shape: 4)."""
    m, n, k = 16, 64, 1024
    assert gemm.split_count(m, n, k, torch.float32, DEVICE)[0] > 1
    a, b, first = _run(m, n, k, torch.float32, "splitk", config=gemm.FIXED_CONFIG)
    again = _poisoned(m, n, torch.float32)
    gemm.matmul(a, b, again, variant="splitk", config=gemm.FIXED_CONFIG)
    assert torch.equal(first.view(torch.int32), again.view(torch.int32))


def test_split_count_on_an_h100_sized_gpu(monkeypatch):
    """The split counts the module docstring states for Llama-3-8B at 16 tokens on 132 SMs, and the
    caps: a split never empty, K_SPLIT a whole number of BLOCK_K, the partials' share at M = 64."""
    monkeypatch.setattr(gemm, "_num_sms", lambda device: 132)
    llama = {"down": (4096, 14336, 8), "o": (4096, 4096, 8), "qkv": (6144, 4096, 5), "gate_up": (28672, 4096, 1)}
    for name, (n, k, want) in llama.items():
        splits, k_split = gemm.split_count(16, n, k, torch.bfloat16, "cuda")
        assert splits == want, name
        assert k_split % 64 == 0 and (splits - 1) * k_split < k <= splits * k_split
    # M = 64: the partials (2 * s * M * N * 4 bytes) may not pass 1/8 of B's bytes, K * N * 2.
    splits, _ = gemm.split_count(64, 4096, 4096, torch.bfloat16, "cuda")
    assert splits == 2 and 2 * splits * 64 * 4 <= 4096 * 2 / gemm.PARTIALS_SHARE
    assert gemm.split_count(1, 4096, 256, torch.bfloat16, "cuda")[0] == 1  # 4 K steps: too few to split
    assert gemm.split_count(16, 4096, 4096, torch.bfloat16, "cuda", 3) == (3, 1408)


def test_auto_never_picks_splitk(monkeypatch):
    """On Hopper `auto` times its candidates and keeps the fastest; split-K is not among them (it
    joins after a GPU run shows it correct and faster), even where it would time fastest."""
    timed = []

    def fake_launcher(name):
        def make(a, b, out, precision, config=None):
            return lambda: timed.append(name)
        return make

    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(gemm, "_is_hopper", lambda device: True)
    monkeypatch.setattr(gemm, "_splitk_launcher", fake_launcher("splitk"))
    monkeypatch.setattr(gemm, "_LAUNCHERS", {"tiled": fake_launcher("tiled"), "tma": fake_launcher("tma"),
                                             "splitk": fake_launcher("splitk")})
    ms = {"tiled": 2.0, "tma": 3.0, "splitk": 1.0}
    monkeypatch.setattr(gemm.triton.testing, "do_bench", lambda fn: fn() or ms[timed[-1]])
    a, b = _inputs(16, 64, 256, torch.float16)
    out = _poisoned(16, 64, torch.float16)
    assert gemm._auto_variant(a, b, out, "ieee") == "tiled"
    assert "splitk" not in timed and "splitk" not in gemm.AUTO_CANDIDATES


def test_splitk_backend_runs_through_the_harness(tmp_path):
    """triton-splitk as a gemm backend: ok and checked at decode sizes, with its split count in the
    row; refused (skipped, with the reason) above m = 64."""
    import io

    from conftest import rows
    from rich.console import Console

    from harness.measure import config, runner

    suite = config.parse("""
suite: splitk
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.02, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: [torch, triton-splitk]
    dtype: [fp16, fp32]
    shapes: [{m: 16, n: 32, k: 1024}, {m: 80, n: 16, k: 64}]
""", "splitk.yaml")
    assert runner.run(suite, "cpu", tmp_path, Console(file=io.StringIO()), isolate="none") == 0
    by = {(r["backend"], r["dtype"], r["m"]): r for r in rows(tmp_path / "results.csv")}
    for dtype, torch_dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        row = by[("triton-splitk", dtype, "16")]
        assert row["status"] == "ok", row["reason"]
        assert int(row["splits"]) == gemm.split_count(16, 32, 1024, torch_dtype, "cpu")[0] > 1
        refused = by[("triton-splitk", dtype, "80")]
        assert refused["status"] == "skipped" and "m <= 64" in refused["reason"]


def test_kernels_suite_pairs_each_of_our_kernels_with_the_vendors():
    """configs/kernels.yaml parses, and every case of ours has the vendor kernel beside it on the
    same problem: split-K and the tiled kernel beside cuBLAS at 16 tokens, never above m = 64."""
    from pathlib import Path

    from harness.measure import config

    suite = config.load(Path(__file__).resolve().parents[1] / "configs" / "kernels.yaml")
    problems = {}
    for case in suite.cases:
        key = (case.workload, case.dtype, tuple(sorted(case.p.items())))
        problems.setdefault(key, set()).add(case.backend)
    vendor = {"gemm": "torch", "attention": "sdpa-flash", "moe": "torch-grouped", "block": "eager"}
    assert all(vendor[key[0]] in backends for key, backends in problems.items())
    gemms = {dict(key[2])["m"]: backends for key, backends in problems.items() if key[0] == "gemm"}
    splitk = [dict(key[2]) for key, backends in problems.items() if "triton-splitk" in backends]
    assert len(splitk) == 4 and all(p["m"] == 16 for p in splitk) and gemms[16] == {"torch", "triton", "triton-splitk"}
    dtypes = {key[1] for key in problems if key[0] == "gemm"}
    assert dtypes == {"bf16", "fp8", "int8", "tf32", "fp32"}
    assert len(suite.cases) == 69  # the header's time estimate counts these


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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_gpu_splitk_decode(dtype):
    """Split-K at a decode shape, B as the workload stores it (the transposed view of an [N, K]
    weight), the split count the model picks on this GPU: correct, and bit-identical on a second call."""
    a, b, first = _run(16, 512, 4096, dtype, "splitk", b_kmajor=True, config=gemm.FIXED_CONFIG)
    assert gemm.split_count(16, 512, 4096, dtype, a.device)[0] > 1
    again = gemm.matmul(a, b, _poisoned(16, 512, dtype), variant="splitk", config=gemm.FIXED_CONFIG)
    assert torch.equal(first.view(torch.int16), again.view(torch.int16))


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
