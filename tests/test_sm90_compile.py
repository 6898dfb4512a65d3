"""tools/sm90_compile.py on a few cases, without a GPU: the persistent TMA GEMM, the split-K GEMM's
two kernels (splits, then their fixed-order sum) and the Hopper attention (kernels/attention_ws.py)
with their fixed configs compile for sm_90a and fit its shared memory; their SASS holds wgmma
(HGMMA) and, for TMA GEMM and attention, TMA loads; the warp-specialized attention also holds
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


ONLY = "^(gemm tma bf16 b_kmajor 512|gemm splitk bf16 decode|attention-ws bf16 d128 full 1024x1024)"


@pytest.fixture(scope="module")
def table() -> list[str]:
    """The tool's table rows for the cases above, compiled in one run, after checking it exited 0."""
    if _ptxas_missing():
        pytest.skip("Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "sm90_compile.py"), "--only", ONLY],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_fixed_tma_gemm_compiles_for_sm90(table):
    rows = [r for r in table if r.startswith("| gemm tma bf16")]
    assert len(rows) == 1, rows
    assert "HGMMA" in rows[0] and "UTMALDG" in rows[0] and rows[0].endswith("| ok |"), rows[0]


@pytest.mark.slow
def test_fixed_hopper_attention_compiles_for_sm90(table):
    rows = [r for r in table if r.startswith("| attention-ws")]
    assert len(rows) == 2, rows  # FIXED_CONFIG, then FIXED_WS_CONFIG
    for row in rows:
        assert "HGMMA" in row and "UTMALDG" in row and "UTMASTG" in row and row.endswith("| ok |"), row
    assert "USETMAXREG" not in rows[0] and "USETMAXREG" in rows[1], rows


@pytest.mark.slow
def test_fixed_splitk_gemm_compiles_for_sm90(table):
    splitk = {r.split("|")[2].strip(): r for r in table if r.startswith("| gemm splitk bf16")}
    assert set(splitk) == {"_splitk_kernel", "_splitk_sum_kernel"}, table
    assert "HGMMA" in splitk["_splitk_kernel"] and all(line.endswith("| ok |") for line in splitk.values()), splitk
