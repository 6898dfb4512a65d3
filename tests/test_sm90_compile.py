"""tools/sm90_compile.py on a few cases, without a GPU: the persistent TMA GEMM and the Hopper
attention (kernels/attention_ws.py) with their fixed configs compile for sm_90a, fit its shared
memory, and their SASS holds wgmma (HGMMA) and TMA loads; the warp-specialized attention also holds
setmaxnreg (Triton kept the specialization). The full table (every kernel x dtype, and --autotune)
is the tool's own run: see its docstring."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ptxas_missing() -> bool:
    try:
        import triton
    except ImportError:
        return True
    return not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


needs_ptxas = pytest.mark.skipif(_ptxas_missing(), reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")


def _table_rows(only: str, prefix: str) -> list[str]:
    """The tool's table rows for the cases matching `only`, after checking it exited 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "sm90_compile.py"), "--only", only],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if line.startswith(prefix)]


@pytest.mark.slow
@needs_ptxas
def test_fixed_tma_gemm_compiles_for_sm90():
    rows = _table_rows("^gemm tma bf16 b_kmajor 512", "| gemm tma bf16")
    assert len(rows) == 1, rows
    assert "HGMMA" in rows[0] and "UTMALDG" in rows[0] and rows[0].endswith("| ok |"), rows[0]


@pytest.mark.slow
@needs_ptxas
def test_fixed_hopper_attention_compiles_for_sm90():
    rows = _table_rows("^attention-ws bf16 d128 full 1024x1024", "| attention-ws")
    assert len(rows) == 2, rows  # FIXED_CONFIG, then FIXED_WS_CONFIG
    for row in rows:
        assert "HGMMA" in row and "UTMALDG" in row and "UTMASTG" in row and row.endswith("| ok |"), row
    assert "USETMAXREG" not in rows[0] and "USETMAXREG" in rows[1], rows
