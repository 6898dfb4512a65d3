"""pytest plugin: suite cases as pytest-benchmark tests, timed the harness's way.

Registered through the `pytest11` entry point, so installing mfu-harness makes it available:

    # bench_mfu.py
    def test_mfu(mfu_case, mfu_benchmark):
        mfu_benchmark(mfu_case)

    pytest bench_mfu.py --mfu-suite configs/gemm-square.yaml --benchmark-json=out.json

- `mfu_case` is parametrized with every case of `--mfu-suite` (default: the shipped suite for the
  device), one test per case, named by its case_id.
- `mfu_benchmark(case)` runs the case as `mfu run` does (skip, check against the reference, then
  time with harness.measure.timing.Timer: CUDA events, L2 flush, adaptive sample count) and hands the
  samples to pytest-benchmark, so its statistics, JSON, `--benchmark-compare` and
  `pytest-benchmark compare` work unchanged. pytest-benchmark's own timer is not used: a host
  clock around an asynchronous GPU launch measures the launch, not the kernel. A skipped case is
  a skipped test; error, mismatch and suspect fail the test.
- `extra_info` holds the case's columns (TFLOPS, GB/s, MFU, MBU, ...: harness/present/export.py's
  `extra_info`, from the column registry); `machine_info["mfu"]` the GPU facts, peak entry,
  software and column schema, once an mfu test ran.

Nothing heavy is imported until a test asks for these fixtures: the plugin loads in every pytest
session of an environment where mfu-harness is installed.
"""

from __future__ import annotations

import pytest

_STATE = pytest.StashKey[dict]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("mfu", "mfu-harness suite cases as benchmarks")
    group.addoption("--mfu-suite", metavar="YAML", help="suite whose cases parametrize `mfu_case` "
                    "(default: the shipped suite for the device)")
    group.addoption("--mfu-device", choices=("cpu", "cuda"), help="default: cuda when available")


def pytest_configure(config) -> None:
    config.stash[_STATE] = {}
    if config.getoption("mfu_suite"):
        _suite(config)  # a broken suite is a usage error now, not a collection error later


def pytest_generate_tests(metafunc) -> None:
    if "mfu_case" in metafunc.fixturenames:
        cases = _suite(metafunc.config).cases
        metafunc.parametrize("mfu_case", cases, ids=[c.case_id for c in cases])


@pytest.fixture(scope="session")
def mfu_context(pytestconfig):
    """What every mfu case shares: the device, its peaks and ceilings, the timer."""
    from harness.measure.case import context

    state = pytestconfig.stash[_STATE]
    if "context" not in state:
        state["context"] = context(_device(pytestconfig), _suite(pytestconfig).timing)
    return state["context"]


@pytest.fixture
def mfu_benchmark(benchmark, mfu_context):
    """A function that runs one case into the `benchmark` fixture and returns its result row."""
    from harness import workloads
    from harness.measure.case import run_case
    from harness.present.export import extra_info
    from harness.store import ids

    def run(case) -> dict:
        row, samples = run_case(case, mfu_context)
        if row["status"] == "skipped":
            pytest.skip(row["reason"])
        if row["status"] != "ok":
            pytest.fail(f"{row['status']}: {row['reason']}", pytrace=False)
        params = [p.name for p in workloads.REGISTRY[row["workload"]].params]
        benchmark.extra_info.update(extra_info(row, params))
        benchmark.group = ids.problem(row)
        if benchmark.enabled:
            record(benchmark, samples)
        return row

    return run


def record(benchmark, samples_ms: list[float]) -> None:
    """Give pytest-benchmark samples measured elsewhere (ms), as rounds of one iteration (s).

    pytest-benchmark has no public call for this; `_make_stats` is what its own runners use
    (pytest-benchmark 3.1 to 5.x) and `_mode` marks the fixture used, as its own calls do."""
    if benchmark._mode:
        raise RuntimeError(f"the benchmark fixture was already used in {benchmark._mode} mode")
    benchmark._mode = "mfu_benchmark(...)"
    stats = benchmark._make_stats(1)
    for ms in samples_ms:
        stats.update(ms / 1e3)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    """GPU facts, peak entry and software under machine_info["mfu"], when an mfu test ran."""
    context = config.stash.get(_STATE, {}).get("context")
    if context is None:
        return
    from harness.hardware import environment
    from harness.measure.runner import schema_for
    from harness.present.export import machine_info as facts

    spec = context.spec.to_dict() if context.spec else None
    machine_info["mfu"] = facts(context.facts.to_dict(), spec, environment.software(), schema_for(_suite(config)))


def _device(config) -> str:
    from harness.hardware import device

    return config.getoption("mfu_device") or device.default_device()


def _suite(config):
    state = config.stash[_STATE]
    if "suite" not in state:
        from harness import cli
        from harness.measure import config as suites

        path = config.getoption("mfu_suite")
        try:
            state["suite"] = suites.load(path) if path else cli.default_suite(_device(config))
        except suites.ConfigError as exc:
            raise pytest.UsageError(f"--mfu-suite: {exc}") from None
    return state["suite"]
