"""Suite expansion (axes, shapes, presets, defaults) and every kind of validation error."""

import pytest

from harness.measure import config, models
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
    assert [c.backend for c in suite.cases] == ["torch", "triton", "triton-splitk"]
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
    ("cases: [{workload: gemm, m: 1, n: 2, k: 3, dtype: fp4}]",
     "suite.yaml: cases[0].dtype: must be one of fp64, fp32, tf32, bf16, fp16, fp8, int8 (got 'fp4')"),
    ("cases: [{workload: gemm, m: 1, n: 2, k: 3, backends: [torch, cublas]}]",
     "suite.yaml: cases[0].backends: must be one of torch, triton, triton-splitk (got 'cublas')"),
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


# ------------------------------------------------------------------------------ input refused


def test_a_key_given_twice_is_an_error_naming_both_lines():
    text = "cases:\n  - workload: gemm\n    m: 16\n    n: 8\n    m: 32\n    k: 8\n"
    assert error(text) == "suite.yaml: line 5: duplicate key 'm': given at line 3 and again at line 5; give each key once"


def test_a_key_given_twice_on_one_line_and_at_the_top_is_an_error():
    assert error("cases: [{workload: gemm, m: 1, n: 2, k: 3, n: 4}]") == (
        "suite.yaml: line 1: duplicate key 'n': given at line 1 and again at line 1; give each key once")
    assert error("suite: a\ncases: [{workload: gemm, m: 1, n: 2, k: 3}]\nsuite: b\n").startswith(
        "suite.yaml: line 3: duplicate key 'suite': given at line 1 and again at line 3")


def test_a_yaml_merge_key_may_still_be_overridden():
    suite = parse("cases: [{<<: {workload: gemm, m: 1, n: 2, k: 3}, m: 4, backends: torch}]")
    assert [c.p["m"] for c in suite.cases] == [4]


def test_text_that_is_not_utf8_names_the_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("cases: [{workload: gemm, m: 1, n: 2, k: 3}]\nsuite: café\n".encode("latin-1"))
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert str(info.value) == (f"{path}: line 2: not UTF-8 text: byte offset 54 (0xe9) cannot be decoded; "
                               "save the file as UTF-8")


@pytest.mark.parametrize("key", ["warmup_ms", "max_time_s", "rel_ci"])
@pytest.mark.parametrize("value, shown", [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("1.0e+400", "inf")])
def test_timing_refuses_numbers_that_are_not_finite(key, value, shown):
    assert error(f"timing: {{{key}: {value}}}\ncases: [{{workload: gemm, m: 1, n: 2, k: 3}}]") == (
        f"suite.yaml: timing.{key}: must be a finite number (got {shown})")


@pytest.mark.parametrize("value, shown", [(".inf", "inf"), (".nan", "nan")])
def test_workload_parameters_refuse_numbers_that_are_not_finite(value, shown):
    assert error(f"cases: [{{workload: gemm, m: {value}, n: 2, k: 3}}]") == (
        f"suite.yaml: cases[0].m: must be an integer (got {shown})")
    assert error(f"cases: [{{workload: gemm, shapes: [{{m: 1, n: {value}, k: 3}}]}}]") == (
        f"suite.yaml: cases[0].shapes[0].n: must be an integer (got {shown})")


def test_a_float_workload_parameter_refuses_inf_and_nan(monkeypatch):
    from harness import backends, workloads
    from harness.workloads import Param, Workload

    class Scaled(Workload):
        name, dtypes, default_dtype = "scaled", ("fp32",), "fp32"
        params = (Param("scale", float, "a factor", default=1.0),)

    monkeypatch.setitem(workloads.REGISTRY, "scaled", Scaled())
    monkeypatch.setitem(backends._REGISTRY, "scaled", {"x": None})
    assert parse("cases: [{workload: scaled, scale: 2.5}]").cases[0].p == {"scale": 2.5}
    for value, shown in ((".inf", "inf"), (".nan", "nan")):
        assert error(f"cases: [{{workload: scaled, scale: [1.0, {value}]}}]") == (
            f"suite.yaml: cases[0].scale: must be a finite number (got {shown})")


def test_differences_name_cases_added_and_removed_and_timing_changed():
    a = parse("timing: {max_time_s: 0.5}\ncases: [{workload: gemm, m: [1, 2], n: 2, k: 3, backends: torch}]")
    same = parse("# reformatted\nsuite: renamed\ntiming:\n  max_time_s: 0.5\ncases:\n"
                 "  - {workload: gemm, m: [2, 1], n: 2, k: 3, backends: [torch]}\n")
    b = parse("timing: {max_time_s: 1.0}\ncases: [{workload: gemm, m: [2, 4, 8], n: 2, k: 3, backends: torch}]")
    assert config.differences(a, same) == []
    assert config.differences(a, b) == [
        "2 cases added (e.g. gemm:bf16:m=4,n=2,k=3:torch)", "1 case removed (e.g. gemm:bf16:m=1,n=2,k=3:torch)",
        "timing changed: max_time_s 0.5 -> 1.0"]
