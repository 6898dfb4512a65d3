"""Device facts on a GPU, with torch's CUDA properties and NVML replaced by fakes (no GPU here):
the wiring from NVML readings to DeviceFacts and on to the peak table, and NVML failing softly."""

from types import SimpleNamespace

import pytest
import torch

from harness.hardware import device, nvml, specs

H100_PROPS = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                             L2_cache_size=50 << 20, total_memory=80 << 30, uuid="1234-abcd")


class FakeNVML:
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def __init__(self, broken=()):
        self.broken = set(broken)
        self.handles_by = []

    def _answer(self, name, value):
        if name in self.broken:
            raise RuntimeError(f"{name}: NVMLError_NotSupported")
        return value

    def nvmlInit(self):
        return self._answer("init", None)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.handles_by.append(uuid)
        return self._answer("by_uuid", "handle")

    def nvmlDeviceGetHandleByIndex(self, index):
        self.handles_by.append(index)
        return "handle"

    def nvmlDeviceGetUUID(self, h):
        return self._answer("uuid", b"GPU-1234-abcd")

    def nvmlSystemGetDriverVersion(self):
        return "580.65.06"

    def nvmlDeviceGetMaxClockInfo(self, h, which):
        return self._answer("clocks", {1: 1980, 2: 2619}[which])

    def nvmlDeviceGetClockInfo(self, h, which):
        return {1: 1755, 2: 2619}[which]

    def nvmlDeviceGetMemoryBusWidth(self, h):
        return self._answer("bus", 5120)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetEccMode(self, h):
        return (1, 1)

    def nvmlDeviceGetMigMode(self, h):
        return self._answer("mig", (0, 0))

    def nvmlDeviceGetPersistenceMode(self, h):
        return 1

    def nvmlDeviceGetComputeMode(self, h):
        return 0


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(props=H100_PROPS, broken=()):
        fake = FakeNVML(broken)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(nvml, "pynvml", fake)
        monkeypatch.setattr(nvml, "_state", {})
        return fake
    return install


def test_nvml_readings_become_device_facts(fake_gpu):
    fake = fake_gpu()
    facts = device.detect("cuda")
    assert facts.name == "NVIDIA H100 80GB HBM3" and facts.vendor == "nvidia"
    assert facts.uuid == "GPU-1234-abcd" and fake.handles_by == ["GPU-1234-abcd"]
    assert facts.compute_capability == (9, 0) and facts.sm_count == 132
    assert facts.max_sm_clock_mhz == 1980 and facts.max_mem_clock_mhz == 2619
    assert facts.memory_bus_width_bits == 5120 and facts.driver == "580.65.06"
    assert facts.modes == {"power_limit_w": 700.0, "ecc": True, "mig": False, "persistence": 1,
                           "compute_mode": 0, "sm_clock_mhz_at_start": 1755}
    assert facts.key == "GPU-1234-abcd"
    spec = specs.resolve(facts)
    assert spec.name == "H100 SXM" and spec.origin == "datasheet"


def test_unknown_gpu_gets_derived_peaks_from_nvml(fake_gpu):
    fake_gpu(SimpleNamespace(**{**vars(H100_PROPS), "name": "NVIDIA H100 Engineering Sample"}))
    spec = specs.resolve(device.detect("cuda"))
    assert spec.origin == "derived"
    assert spec.bandwidth_tbs == pytest.approx(5120 / 8 * 2619e6 * 2 / 1e12, rel=1e-3)
    assert spec.peaks_tflops["bf16"] == pytest.approx(132 * 1980e6 * 4096 / 1e12, rel=1e-3)


def test_unsupported_nvml_queries_leave_fields_empty(fake_gpu):
    fake_gpu(broken={"by_uuid", "uuid", "clocks", "bus", "mig"})
    facts = device.detect("cuda")
    assert facts.uuid == "GPU-1234-abcd"  # torch's UUID stands; the handle came by index
    assert facts.max_sm_clock_mhz is None and facts.memory_bus_width_bits is None
    assert facts.modes["mig"] is None and facts.modes["ecc"] is True


def test_no_nvml_at_all_warns_once_and_fails_nothing(fake_gpu):
    fake_gpu(broken={"init"})
    with pytest.warns(UserWarning, match="NVML unavailable"):
        facts = device.detect("cuda")
    assert facts.driver is None and facts.sm_count == 132
    assert specs.resolve(facts).name == "H100 SXM"  # the name still matches the table


def test_cpu_facts():
    facts = device.detect("cpu")
    assert facts.kind == "cpu" and facts.name and facts.sm_count >= 1
    assert facts.key.startswith("cpu-") and specs.resolve(facts) is None
