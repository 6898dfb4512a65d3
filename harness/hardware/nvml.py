"""A thin, failure-tolerant door to NVML (the nvidia-ml-py package, imported as pynvml).

NVML is initialised once, on first use. Every query goes through `query`, which turns
NVMLError (NotSupported is common on some parts) into None, so a missing reading never fails a run.
Handles are found by UUID, because torch's device index and NVML's differ under
CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import warnings

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a broken install must not stop a run
    pynvml = None

_state: dict = {}


def available() -> bool:
    if "ok" not in _state:
        _state["ok"] = False
        if pynvml is not None:
            try:
                pynvml.nvmlInit()
                _state["ok"] = True
            except Exception as exc:  # NVMLError, or a missing libnvidia-ml.so
                warnings.warn(f"NVML unavailable ({exc}); GPU facts from NVML stay empty", stacklevel=2)
    return _state["ok"]


def query(fn, *args):
    """fn(*args), or None where NVML cannot answer."""
    try:
        value = fn(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def handle_for(uuid: str | None, index: int):
    """The NVML handle of the GPU with this UUID (else of this index), or None."""
    if not available():
        return None
    if uuid:
        handle = query(pynvml.nvmlDeviceGetHandleByUUID, uuid)
        if handle is not None:
            return handle
    return query(pynvml.nvmlDeviceGetHandleByIndex, index)
