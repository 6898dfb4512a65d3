"""Shared test setup: CPU runs use Triton's interpreter; GPU-only tests are marked and skipped.

Shared helpers, for every test file (`from conftest import mfu, rows`): `mfu(...)` runs the
command line in a fresh process, `rows(path)` reads a CSV, `suite_file` writes a suite; the
`tiny` and `six` fixtures are suite files of 4 and 6 quick CPU cases; `on_ranks` runs a function
on n processes of one process group (gloo, or NCCL on GPUs) and `median_event_ms` times a call
there with CUDA events.
"""

import csv
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch

# Measured ceilings live under $MFU_HOME: tests (and the `mfu` processes they start) get their own.
os.environ["MFU_HOME"] = tempfile.mkdtemp(prefix="mfu-home-")

# Must be set before any @triton.jit function is created, i.e. before kernels/ is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parent.parent
QUICK = "timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.02, rel_ci: 0.5, l2_flush: false}"
TINY = """
suite: tiny
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.05, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: [torch]
    dtype: [fp32, bf16]
    shapes: [{m: 64, n: 32, k: 16}, {m: 8, n: 8, k: 8}]
"""
SIX = f"""
suite: six
{QUICK}
cases:
  - workload: gemm
    backends: [torch]
    dtype: fp32
    m: [1, 2, 3, 4, 5, 6]
    n: 8
    k: 8
"""


def mfu(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """`mfu ARGS` in a fresh interpreter, its output captured; `env` adds to this process's."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def rows(path: Path) -> list[dict]:
    """A CSV file's rows (results.csv: one per case), every value a string."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def suite_file(directory: Path, text: str, name: str = "suite") -> Path:
    """The suite `text` written to DIRECTORY/NAME.yaml."""
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """TINY as a suite file: gemm, torch, fp32 and bf16, 2 shapes."""
    return suite_file(tmp_path, TINY, "tiny")


@pytest.fixture
def six(tmp_path) -> Path:
    """SIX as a suite file: six fp32 gemm cases, m = 1 … 6."""
    return suite_file(tmp_path, SIX, "six")


@pytest.fixture(autouse=True)
def own_mfu_home(tmp_path, monkeypatch):
    """Each test (and every `mfu` process it starts) gets its own stored ceilings: one test's quick,
    noisy ceiling must never become another test's denominator."""
    monkeypatch.setenv("MFU_HOME", str(tmp_path / "mfu-home"))


@pytest.fixture
def fixed_kernel_configs(monkeypatch):
    """Our Triton kernels, when a backend prepares them, run their FIXED_CONFIG instead of
    autotuning, as the kernel tests do: a `gpu` test of a backend then compiles each kernel once
    per specialization and benchmarks no configs."""
    from kernels import attention, decode_attention, gemm, moe

    for module in (attention, decode_attention, gemm, moe):
        monkeypatch.setattr(module, "prepare", functools.partial(module.prepare, config=module.FIXED_CONFIG))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: a measurement or a long end-to-end run (`pytest -m 'not slow'` is the fast loop)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(requires_gpu)


def pytest_collection_finish(session):
    """What exists once every test module is imported (torch, triton, the harness) lives as long as
    the session: frozen, as the worker freezes it (harness/measure/worker.py), so the gc.collect()
    after each case run in this process scans what the tests made, not torch (100 ms less a case)."""
    gc.freeze()


def pytest_sessionfinish(session, exitstatus):
    gc.unfreeze()  # so that the interpreter frees everything at exit (nanobind, under triton, counts leaks)


def on_ranks(target, n: int, where: Path, *args, backend: str = "gloo") -> list:
    """target(rank, n, *args) in n spawned processes that form one process group (gloo; "nccl": one
    GPU each), from a module-level function; what each returned (JSON-able), in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_process, args=(target, n, str(where), backend, args), nprocs=n, join=True)
    return [json.loads((where / f"rank{r}.json").read_text()) for r in range(n)]


def _rank_process(rank: int, target, n: int, where: str, backend: str, args: tuple) -> None:
    import torch.distributed as dist

    from harness.distributed import group

    torch.set_num_threads(1)  # n ranks' thread pools on CI's two cores would spin against each other
    extra = {}
    if backend == "nccl":
        torch.cuda.set_device(rank)
        extra = {"device_id": torch.device("cuda", rank)}
    dist.init_process_group(backend, store=dist.FileStore(f"{where}/store", n), rank=rank, world_size=n,
                            timeout=timedelta(seconds=60), **extra)
    try:
        result = target(rank, n, *args)
    finally:
        group.leave()
    Path(where, f"rank{rank}.json").write_text(json.dumps(result))


def median_event_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """fn's median time on the GPU, every rank starting each call together (a barrier)."""
    import torch.distributed as dist

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@pytest.fixture
def own_group():
    """The group of one that a collective's build() makes is this test's: left after it."""
    import torch.distributed as dist

    from harness.distributed import group

    assert not dist.is_initialized()
    yield
    group.leave()
