"""What our Triton kernels share: where they can run, the GPU's shared memory, grouped tile order,
and running an autotuned kernel with one fixed config.

`platform_unsupported` holds the reasons common to every kernel (CPU without the interpreter, the
interpreter's broken bf16, which tensor cores a dtype needs); each kernel's own `unsupported` adds
its shape and variant limits on top.

Fixed configs: every autotuned kernel's `prepare` takes `config=` (a `triton.Config` with that
kernel's meta-parameters, warps and stages). With it the launch calls the jit function under the
autotuner with exactly that config: nothing is benchmarked and one compile serves every call with
the same constexprs and dtypes. Tests and quick checks use it; benchmarks leave it None (autotuned).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
FP8 = torch.float8_e4m3fn


def hopper_only(device, what: str, instead: str) -> str | None:
    """Why a kernel written for Hopper's TMA and wgmma (sm_90) cannot run on this GPU, or None."""
    if torch.version.hip:
        return f"{what} uses NVIDIA Hopper's TMA and wgmma; use '{instead}' on AMD GPUs"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"{what} is written for Hopper (sm_90: TMA, wgmma); this GPU is sm_{major}{minor}; use '{instead}'"
    return None


def platform_unsupported(dtype: torch.dtype, device) -> str | None:
    """Why no kernel of ours can run `dtype` on `device` here, in one line; None if they can."""
    if INTERPRET:
        if dtype == torch.bfloat16:
            return "the Triton interpreter computes bf16 wrongly (numpy has no bfloat16); run bf16 on a GPU"
        return None
    if torch.device(device).type != "cuda":
        return "Triton needs a CUDA GPU; set TRITON_INTERPRET=1 to use the (slow) interpreter on CPU"
    if torch.version.hip:
        return "float8_e4m3fn kernels run only on NVIDIA GPUs here" if dtype == FP8 else None
    major, minor = torch.cuda.get_device_capability(device)
    if dtype == FP8 and (major, minor) < (8, 9):
        return f"fp8 tensor cores need sm_89 or newer; this GPU is sm_{major}{minor}"
    if dtype == torch.bfloat16 and major < 8:
        return f"bf16 tensor cores need sm_80 or newer; this GPU is sm_{major}{minor}"
    return None


class _Pinned:
    """`kernel[grid](...)` for an autotuned kernel pinned to one config (see the module docstring)."""

    def __init__(self, fn, meta: dict):
        self.fn, self.meta = fn, meta

    def __getitem__(self, grid):
        launch = self.fn[grid]
        return lambda *args, **kwargs: launch(*args, **kwargs, **self.meta)


def pinned(kernel, config: triton.Config | None):
    """What to launch for an autotuned `kernel`: the autotuner itself when config is None, else
    its jit function with `config`'s meta-parameters, warps and stages (no autotuning)."""
    if config is None:
        return kernel
    want = set(kernel.configs[0].kwargs)
    if not isinstance(config, triton.Config) or set(config.kwargs) != want:
        name = getattr(kernel.fn, "__name__", "this kernel")
        raise ValueError(f"config for {name} must be a triton.Config with exactly the meta-parameters "
                         f"{sorted(want)}; got {config}")
    return _Pinned(kernel.fn, config.all_kwargs())


@functools.lru_cache(maxsize=None)
def smem_bytes(index: int) -> int:
    """Shared memory per block the GPU allows (the autotuners prune configs that need more)."""
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


@triton.jit
def tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering: tile ids run down GROUP_M row tiles of one column, then the next column,
    so the A rows and B columns a wave of programs reads stay in L2."""
    group_size = GROUP_M * num_pid_n
    first_m = (tile_id // group_size) * GROUP_M
    rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % group_size) % rows
    pid_n = (tile_id % group_size) // rows
    return pid_m, pid_n
