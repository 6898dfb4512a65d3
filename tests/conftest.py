"""Shared test setup: CPU runs use Triton's interpreter; GPU-only tests are marked and skipped."""

import functools
import os
import tempfile

import torch

# Measured ceilings live under $MFU_HOME: tests (and the `mfu` processes they start) get their own.
os.environ["MFU_HOME"] = tempfile.mkdtemp(prefix="mfu-home-")

# Must be set before any @triton.jit function is created, i.e. before kernels/ is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
    config.addinivalue_line("markers", "slow: a measurement, not a check (deselect with -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(requires_gpu)
