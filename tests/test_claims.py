"""`mfu claims`: the verdict rules on synthetic rows (holds, does not hold, not measurable here), the
shipped suites, and the command end to end on the CPU suite."""

from pathlib import Path

import pytest

from harness.present import claims
import harness
from harness import cli
from harness.measure import config
from harness.present.claim_rules import CLAIMS, FAILS, HOLDS, UNMEASURABLE, evaluate

GPU = {"device_kind": "cuda", "ceilings": {"matmul_tflops": {"bf16": 800.0}, "exp_per_s": 3.5e12}}
CPU = {"device_kind": "cpu"}


def row(workload, backend, dtype="bf16", status="ok", **kw):
    params = ",".join(f"{k}={v}" for k, v in kw.items() if k not in ("tflops", "gbps", "mfu", "mbu", "mfu_ceiling",
                                                                     "exp_util", "reason"))
    r = {"workload": workload, "backend": backend, "dtype": dtype, "status": status,
         "case_id": f"{workload}:{dtype}:{params}:{backend}", "tflops": 1.0, "gbps": 1.0, "mfu": None, "mbu": None}
    r = {**r, **kw}
    return {"time_ms": 1e3 / r["tflops"] if r["tflops"] else None, **r}  # the time its TFLOPS imply


def gemm(backend="torch", dtype="bf16", size=8192, **kw):
    return row("gemm", backend, dtype, m=size, n=size, k=size, **kw)


def block(backend, phase, **kw):
    base = dict(label="m", batch=1, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=4, experts=0, top_k=0,
                shared_experts=0, routing="balanced", seed=0, mlp="model")
    base.update(seq=16) if phase == "train" else base.update(seq_kv=64, cuda_graph=False)
    return row("block", backend, phase=phase, **{**base, **kw})


def findings(rows, meta, claim):
    return [f for f in evaluate(rows, meta) if f.claim == CLAIMS[claim]]


def only(rows, meta, claim):
    found = findings(rows, meta, claim)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("mfu, verdict", [(0.8, HOLDS), (0.6, FAILS), (0.95, FAILS), (None, UNMEASURABLE)])
def test_gemm_mfu(mfu, verdict):
    rows = [gemm(size=1024, mfu=0.9, tflops=900), gemm(mfu=mfu, tflops=700)]  # small shapes do not count
    f = only(rows, GPU, "gemm")
    assert f.verdict == verdict and "8192x8192x8192" in f.value and "72% <= MFU <= 88%" == f.holds_when


def test_every_claim_is_not_measurable_off_a_gpu():
    rows = [gemm(mfu=0.8), gemm(dtype="fp8", tflops=2.0), gemm(backend="triton", tflops=0.9)]
    assert {f.verdict for f in evaluate(rows, CPU)} == {UNMEASURABLE}
    assert only(rows, CPU, "fp8").value.startswith("2.00x")  # the value is still shown


def test_missing_rows_say_why():
    rows = [gemm(dtype="fp8", status="skipped", reason="fp8 tensor cores need sm_89 or newer")]
    f = only(rows, GPU, "fp8")
    assert f.verdict == UNMEASURABLE and "sm_89" in f.value
    assert only([], GPU, "gemm").value == "no such case in this run"


@pytest.mark.parametrize("fp8_tflops, verdict", [(1500, HOLDS), (1200, FAILS)])
def test_fp8_over_bf16_at_the_largest_shared_shape(fp8_tflops, verdict):
    rows = [gemm(tflops=780), gemm(dtype="fp8", tflops=fp8_tflops), gemm(size=4096, tflops=700),
            gemm(dtype="fp8", size=4096, tflops=100)]
    f = only(rows, GPU, "fp8")
    assert f.verdict == verdict and "8192x8192x8192" in f.value


@pytest.mark.parametrize("moe_mfu, verdict", [(0.2, HOLDS), (0.4, FAILS)])
def test_moe_against_its_dense_equivalent_with_the_best_backend_of_each(moe_mfu, verdict):
    moe = dict(experts=8, top_k=2)
    rows = [block("eager", "train", mfu=moe_mfu, tflops=moe_mfu * 1000, **moe),
            block("compiled", "train", mfu=moe_mfu / 2, tflops=moe_mfu * 500, **moe),
            block("eager", "train", mfu=0.45, tflops=450, mlp="dense-equivalent", **moe),
            block("compiled", "train", mfu=0.5, tflops=500, mlp="dense-equivalent", **moe)]
    f = only(rows, GPU, "moe")
    assert f.verdict == verdict
    assert f"ratio {moe_mfu / 0.5:.2f}" in f.value and "(eager)" in f.value and "(compiled)" in f.value


def test_decode_takes_the_best_way_to_run_each_block():
    rows = [block("eager", "decode", mfu=0.01, mbu=0.5, gbps=1675),
            block("compiled", "decode", mfu=0.01, mbu=0.72, gbps=2412, cuda_graph=True),
            block("eager", "decode", batch=64, mfu=0.12, mbu=0.7, gbps=2345),
            block("eager", "decode", experts=8, top_k=2, mfu=0.004, mbu=0.4, gbps=1340)]
    dense1, dense64, moe1 = findings(rows, GPU, "decode")
    assert dense1.verdict == HOLDS and "compiled, CUDA graph" in dense1.value
    assert dense64.verdict == FAILS  # 12% MFU at batch 64: not "under 5%"
    assert moe1.verdict == FAILS and "(MoE)" in moe1.value  # MBU 40%


@pytest.mark.parametrize("exp_util, verdict", [(0.7, HOLDS), (0.3, FAILS), (None, UNMEASURABLE)])
def test_exp_units_against_tensor_cores(exp_util, verdict):
    rows = [row("attention", "sdpa-flash", phase="prefill", head_dim=128, seq_kv=8192, tflops=500,
                mfu_ceiling=0.6, exp_util=exp_util),
            row("attention", "triton", phase="prefill", head_dim=128, seq_kv=8192, tflops=400, exp_util=0.9)]
    f = only(rows, GPU, "exp")
    assert f.verdict == verdict and f.value.startswith("sdpa-flash")  # the fastest kernel
    # 800 TFLOPS / (4·128 FLOPs per exp) / 3.5e12 exp/s = 0.45
    assert "0.45x the measured exp rate" in f.value


def test_triton_against_vendor_per_workload():
    rows = [gemm(tflops=800), gemm(backend="triton", tflops=720), gemm(size=4096, tflops=700),
            gemm(backend="triton", size=4096, tflops=630),
            row("moe", "torch-grouped", tokens=8192, tflops=240), row("moe", "triton", tokens=8192, tflops=120),
            row("attention", "sdpa-flash", tflops=300), row("attention", "triton", status="skipped", reason="no")]
    by_workload = {f.measured.split(":")[0]: f for f in findings(rows, GPU, "triton")}
    assert by_workload["gemm"].verdict == HOLDS and by_workload["gemm"].value.startswith("0.9x geomean over 2")
    assert by_workload["moe"].verdict == FAILS
    assert by_workload["attention"].verdict == UNMEASURABLE
    assert "block" not in by_workload  # not in this run at all


def test_configs_claims_is_the_shipped_gpu_suite_and_both_suites_parse():
    shipped = Path(harness.__file__).parent / "suites" / "claims-cuda.yaml"
    assert (Path(__file__).parent.parent / "configs" / "claims.yaml").read_text() == shipped.read_text()
    cuda, cpu = claims.shipped_suite("cuda"), claims.shipped_suite("cpu")
    blocks = [c.p for c in cuda.cases if c.workload == "block"]
    assert {p["mlp"] for p in blocks if p["phase"] == "train"} == {"model", "dense-equivalent"}
    assert {p["batch"] for p in blocks if p["phase"] == "decode"} == {1, 64}
    assert {c.dtype for c in cuda.cases if c.workload == "gemm"} == {"bf16", "fp8"}
    assert len(cpu.cases) < 30


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "run"
    return out, cli.main(["claims", "--device", "cpu", "--out", str(out)])


@pytest.mark.slow
def test_claims_on_the_cpu_end_to_end(cpu_run):
    out, code = cpu_run
    assert code == 0
    md = (out / "claims.md").read_text()
    assert all(text in md for text in CLAIMS.values())
    heads = [line for line in md.splitlines() if line.startswith("- **")]
    assert len(heads) >= len(CLAIMS) and all(f": {UNMEASURABLE}" in h for h in heads)
    assert "REFERENCE.md" not in md  # every source is a citation a reader can follow
    assert "<table>" in (out / "claims.html").read_text() and (out / "cases.jsonl").exists()


@pytest.mark.slow
def test_claims_from_an_existing_run(cpu_run, capsys):
    out, _ = cpu_run
    (out / "claims.md").unlink()
    assert cli.main(["claims", "--from", str(out)]) == 0
    assert (out / "claims.md").exists()
    assert cli.main(["claims", "--from", str(out), "--device", "cpu"]) == cli.EXIT_USAGE
    assert "without --device" in capsys.readouterr().err


def test_a_shipped_suite_parses_like_any_other():
    assert isinstance(claims.shipped_suite("cpu"), config.Suite)


def test_claims_never_write_into_an_existing_run(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "cases.jsonl").write_text('{"case_id": "x", "status": "ok"}\n')
    assert cli.main(["claims", "--device", "cpu", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "cases.jsonl").read_text() == '{"case_id": "x", "status": "ok"}\n'


def layer(workload="tp-linear", compute=2.0, comm=1.0, overlapped=2.2, **kw):
    group = {"tp": 8} if workload == "tp-linear" else {"ep": 8}
    timed = {} if comm is None else {"comm_ms": comm, "overlapped_ms": overlapped,
                                     "compute_comm_ratio": compute / comm,
                                     "overlap_eff": (compute + comm - overlapped) / min(compute, comm)}
    return row(workload, "torch", tokens=8192, label="llama3-70b.mlp_down", compute_ms=compute, **group, **timed, **kw)


@pytest.mark.parametrize("compute, comm, verdict", [(2.0, 1.0, HOLDS), (1.0, 2.0, FAILS)])
def test_the_compute_communication_ratio_claim_reads_each_layer_on_several_gpus(compute, comm, verdict):
    f = only([layer(compute=compute, comm=comm, overlapped=max(compute, comm) + 0.2)], GPU, "comm")
    assert f.verdict == verdict and f"ratio {compute / comm:.3g}" in f.value and "overlap hides 80.0%" in f.value
    assert "tp=8" in f.value and f.holds_when == "compute_comm_ratio >= 1"
    both = findings([layer(), layer("ep-moe", compute=1.0, comm=4.0, overlapped=4.5)], GPU, "comm")
    assert [x.verdict for x in both] == [HOLDS, FAILS] and "ep=8" in both[1].value


def test_the_compute_communication_claim_is_not_measurable_on_one_rank_or_without_layers():
    compute_only = only([layer(comm=None)], GPU, "comm")
    assert compute_only.verdict == UNMEASURABLE and "compute only" in compute_only.value
    absent = only([gemm(mfu=0.8)], GPU, "comm")
    assert absent.verdict == UNMEASURABLE and absent.value == "no tp-linear or ep-moe case in this run"
    skipped = only([layer(status="skipped", reason="tp=8 needs 8 ranks; this run has 1")], GPU, "comm")
    assert "tp=8 needs 8 ranks" in skipped.value
