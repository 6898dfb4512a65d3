"""What the device under test is: name, identity, clocks, memory and modes, as found.

Facts come from torch (name, SMs, L2, memory, compute capability) and, on NVIDIA GPUs, from NVML
(UUID, driver, clocks, bus width, modes). NVML is optional: where it is missing or a query is not
supported, the field stays None. Nothing here changes the device's settings.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class DeviceFacts:
    kind: str  # "cuda" or "cpu"
    name: str  # as the device reports it, e.g. "NVIDIA H100 80GB HBM3"
    vendor: str = ""  # "nvidia", "amd" or "" for a CPU
    uuid: str | None = None
    compute_capability: tuple[int, int] | None = None  # (9, 0) for Hopper
    sm_count: int | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    l2_bytes: int | None = None
    total_memory_bytes: int | None = None
    driver: str | None = None
    cuda: str | None = None
    modes: dict = field(default_factory=dict)  # ECC, persistence, MIG, compute mode, power limit
    host: str = field(default_factory=platform.node)

    @property
    def key(self) -> str:
        """A stable identity for this device: the GPU UUID, or the host name for a CPU."""
        return self.uuid or f"{self.kind}-{self.host}"

    def to_dict(self) -> dict:
        return asdict(self)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def detect(kind: str) -> DeviceFacts:
    return _detect_cuda() if kind == "cuda" else _detect_cpu()


def _detect_cpu() -> DeviceFacts:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            name = m.group(1).strip()
    except OSError:
        pass
    return DeviceFacts(kind="cpu", name=name, sm_count=os.cpu_count(), l2_bytes=_cpu_cache_bytes())


def _cpu_cache_bytes() -> int | None:
    """The largest cache level's size, read from sysfs (Linux); None elsewhere."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    try:
        entries = [e for e in os.listdir(base) if e.startswith("index")]
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (OSError, ValueError, IndexError):
            continue
    return max(sizes) if sizes else None


def _detect_cuda() -> DeviceFacts:
    idx = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(idx)
    facts = DeviceFacts(
        kind="cuda",
        name=p.name,
        vendor="amd" if torch.version.hip else "nvidia",
        uuid=_torch_uuid(p),
        compute_capability=(p.major, p.minor),
        sm_count=p.multi_processor_count,
        l2_bytes=getattr(p, "L2_cache_size", None),
        total_memory_bytes=p.total_memory,
        cuda=torch.version.cuda or torch.version.hip,
    )
    if facts.vendor == "nvidia":
        _add_nvml(facts, idx)
    return facts


def _torch_uuid(props) -> str | None:
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith("GPU-") else f"GPU-{text}"


def _add_nvml(facts: DeviceFacts, index: int) -> None:
    from harness.hardware import nvml

    handle = nvml.handle_for(facts.uuid, index)
    if handle is None:
        return
    pynvml = nvml.pynvml
    q = nvml.query
    facts.uuid = q(pynvml.nvmlDeviceGetUUID, handle) or facts.uuid
    facts.driver = q(pynvml.nvmlSystemGetDriverVersion)
    facts.max_sm_clock_mhz = q(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM)
    facts.max_mem_clock_mhz = q(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM)
    facts.memory_bus_width_bits = q(pynvml.nvmlDeviceGetMemoryBusWidth, handle)
    limit_mw = q(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    ecc = q(pynvml.nvmlDeviceGetEccMode, handle)
    mig = q(pynvml.nvmlDeviceGetMigMode, handle)
    facts.modes = {
        "power_limit_w": limit_mw / 1000 if limit_mw is not None else None,
        "ecc": bool(ecc[0]) if ecc is not None else None,
        "mig": bool(mig[0]) if mig is not None else None,
        "persistence": q(pynvml.nvmlDeviceGetPersistenceMode, handle),
        "compute_mode": q(pynvml.nvmlDeviceGetComputeMode, handle),
        "sm_clock_mhz_at_start": q(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
    }


def fp8_unsupported(dev: DeviceFacts) -> str | None:
    """Why torch's fp8 (float8_e4m3fn) matmuls cannot run on this device, or None. The one rule for
    every torch backend (kernels/common.py keeps the same rule for our kernels: kernels/ imports
    nothing from harness/). On a CPU torch runs fp8 matmuls itself, slowly but correctly."""
    if dev.kind != "cuda":
        return None
    if dev.vendor != "nvidia":
        return "fp8 here is float8_e4m3fn; ROCm GPUs use the fnuz variant, not wired up yet"
    if dev.compute_capability < (8, 9):
        cc = "".join(map(str, dev.compute_capability))
        return f"fp8 tensor cores need sm_89 or newer (this GPU is sm_{cc})"
    return None
