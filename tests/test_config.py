"""Suite expansion (axes, shapes, presets, defaults) and every kind of validation error."""

import pytest

from harness import config, models
from harness.cli import default_suite


def parse(text: str) -> config.Suite:
    return config.parse(text, "suite.yaml")


def error(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        parse(text)
    return str(info.value)


def test_lists_are_axes_crossed_with_backend_and_dtype():
    suite = parse("""
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: [bf16, fp8]
    m: [16, 4096]
    n: 8192
    k: 1024
""")
    assert len(suite.cases) == 2 * 2 * 2
    assert {c.p["m"] for c in suite.cases} == {16, 4096}
    assert {(c.backend, c.dtype) for c in suite.cases} == {
        (b, d) for b in ("torch", "triton") for d in ("bf16", "fp8")}
    # the backends of one problem run next to each other
    assert [c.backend for c in suite.cases[:2]] == ["torch", "triton"]


def test_shapes_are_zipped_rows_crossed_with_axes():
    suite = parse("""
cases:
  - workload: gemm
    backends: torch
    dtype: [bf16, fp16]
    shapes:
      - {m: 16, n: 4096, k: 4096}
      - {m: 4096, n: 14336, k: 4096}
""")
    assert [(c.p["m"], c.p["n"], c.dtype) for c in suite.cases] == [
        (16, 4096, "bf16"), (16, 4096, "fp16"), (4096, 14336, "bf16"), (4096, 14336, "fp16")]


def test_defaults_fill_backends_and_dtype():
    suite = parse("cases: [{workload: gemm, m: 8, n: 8, k: 8}]")
    assert [c.backend for c in suite.cases] == ["torch", "triton"]
    assert {c.dtype for c in suite.cases} == {"bf16"}
    assert suite.timing.rel_ci == 0.01 and suite.name == "suite"


def test_model_preset_expands_to_projection_shapes():
    suite = parse("cases: [{workload: gemm, model: llama3-70b, m: [1, 4096], backends: torch}]")
    spec = models.get("llama3-70b")
    shapes = {(c.p["n"], c.p["k"]) for c in suite.cases}
    assert shapes == {(n, k) for _, n, k in spec.projections()}
    assert (10240, 8192) in shapes  # qkv: (64 + 2*8) heads x 128
    assert (8192, 28672) in shapes  # mlp down
    assert len(suite.cases) == 4 * 2
    assert all(c.p["label"].startswith("llama3-70b.") for c in suite.cases)


def test_moe_model_preset_includes_router_and_experts():
    names = [name for name, _, _ in models.get("mixtral-8x7b").projections()]
    assert names == ["qkv", "o", "router", "expert_gate_up", "expert_down"]


def test_explicit_key_overrides_preset():
    suite = parse("cases: [{workload: gemm, model: llama3-8b, m: 1, k: 256, backends: torch}]")
    assert {c.p["k"] for c in suite.cases} == {256}


def test_duplicate_cases_are_measured_once():
    suite = parse("cases: [{workload: gemm, m: 8, n: 8, k: 8, backends: [torch, torch]},"
                  " {workload: gemm, m: 8, n: 8, k: 8, backends: torch}]")
    assert len(suite.cases) == 1


def test_case_id_is_stable_and_readable():
    case = parse("cases: [{workload: gemm, m: 1, n: 2, k: 3, backends: torch, dtype: fp8}]").cases[0]
    assert case.case_id == "gemm:fp8:m=1,n=2,k=3:torch"
    assert case.problem_id == "gemm:fp8:m=1,n=2,k=3"


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "suite.yaml: a suite is a mapping"),
    ("cases: [", "suite.yaml: line"),
    ("foo: 1\ncases: [{workload: gemm}]", "suite.yaml: foo: unknown key; allowed: suite, description, timing, cases"),
    ("cases: []", "suite.yaml: cases: must be a non-empty list"),
    ("cases: [{workload: conv}]", "suite.yaml: cases[0].workload: must be one of gemm"),
    ("cases: [{workload: gemm, m: 1, n: 2, k: 3}, {workload: gemm, m: 1, n: 2, kk: 3}]",
     "suite.yaml: cases[1].kk: unknown key; allowed: workload, backends, dtype, shapes, model, m, n, k, label"),
    ("cases: [{workload: gemm, m: 1, n: 2}]", "suite.yaml: cases[0].k: required"),
    ("cases: [{workload: gemm, m: 0, n: 2, k: 3}]", "suite.yaml: cases[0].m: must be at least 1 (got 0)"),
    ("cases: [{workload: gemm, m: '8', n: 2, k: 3}]", "suite.yaml: cases[0].m: must be an integer (got '8')"),
    ("cases: [{workload: gemm, m: true, n: 2, k: 3}]", "suite.yaml: cases[0].m: must be an integer (got True)"),
    ("cases: [{workload: gemm, m: [], n: 2, k: 3}]", "suite.yaml: cases[0].m: an empty list leaves no cases"),
    ("cases: [{workload: gemm, m: 1, n: 2, k: 3, dtype: fp64}]",
     "suite.yaml: cases[0].dtype: must be one of fp32, tf32, bf16, fp16, fp8, int8 (got 'fp64')"),
    ("cases: [{workload: gemm, m: 1, n: 2, k: 3, backends: [torch, cublas]}]",
     "suite.yaml: cases[0].backends: must be one of torch, triton (got 'cublas')"),
    ("cases: [{workload: gemm, shapes: [{m: 1, n: 2, k: 3}, {m: 1, n: -2, k: 3}]}]",
     "suite.yaml: cases[0].shapes[1].n: must be at least 1 (got -2)"),
    ("cases: [{workload: gemm, shapes: [{m: 1, n: 2, k: 3, q: 1}]}]", "suite.yaml: cases[0].shapes[0].q: unknown key"),
    ("cases: [{workload: gemm, m: 1, shapes: [{m: 1, n: 2, k: 3}]}]",
     "suite.yaml: cases[0].shapes[0].m: also given for the whole group"),
    ("cases: [{workload: gemm, shapes: 3}]", "suite.yaml: cases[0].shapes: must be a non-empty list"),
    ("cases: [{workload: gemm, model: gpt5, m: 1}]", "suite.yaml: cases[0].model: must be one of llama3-8b"),
    ("cases: [{workload: gemm, model: llama3-8b}]", "suite.yaml: cases[0].m: required"),
    ("cases: [{workload: gemm, model: llama3-8b, m: 1, shapes: [{m: 1, n: 1, k: 1}]}]",
     "suite.yaml: cases[0]: give either `shapes` or `model`"),
    ("timing: {rel_ci: 0}\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]",
     "suite.yaml: timing.rel_ci: must be between 0 and 1, exclusive (got 0)"),
    ("timing: {min_samples: 2.5}\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]",
     "suite.yaml: timing.min_samples: must be an integer (got 2.5)"),
    ("timing: {l2_flush: 1}\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]",
     "suite.yaml: timing.l2_flush: must be true or false (got 1)"),
    ("timing: {flush: true}\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]", "suite.yaml: timing.flush: unknown key"),
    ("suite: [a]\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]", "suite.yaml: suite: must be a string"),
])
def test_errors_name_file_place_and_allowed_values(text, expected):
    assert error(text).startswith(expected)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.yaml: cannot read suite file"):
        config.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_shipped_suites_parse(kind):
    assert default_suite(kind).cases


def test_configs_parse():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        assert config.load(f).cases, f
