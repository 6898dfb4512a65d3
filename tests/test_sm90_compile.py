"""tools/sm90_compile.py on two cases, without a GPU: the persistent TMA GEMM with gemm.FIXED_CONFIG
compiles for sm_90a, fits its shared memory, and its SASS holds wgmma (HGMMA) and TMA loads; the
split-K GEMM's two kernels (splits, then their sum) compile and fit, the first with wgmma at that
config's 64 rows. The full table (every kernel x dtype, and --autotune) is the tool's own run: see
its docstring."""

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


@pytest.mark.slow
@pytest.mark.skipif(_ptxas_missing(), reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
def test_fixed_tma_and_splitk_gemms_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "sm90_compile.py"), "--only",
                          "^gemm (tma bf16 b_kmajor 512|splitk bf16 decode)"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| gemm tma bf16")]
    assert len(rows) == 1, run.stdout
    assert "HGMMA" in rows[0] and "UTMALDG" in rows[0] and rows[0].endswith("| ok |"), rows[0]
    splitk = {line.split("|")[2].strip(): line for line in run.stdout.splitlines()
              if line.startswith("| gemm splitk bf16")}
    assert set(splitk) == {"_splitk_kernel", "_splitk_sum_kernel"}, run.stdout
    assert "HGMMA" in splitk["_splitk_kernel"] and all(line.endswith("| ok |") for line in splitk.values()), splitk
