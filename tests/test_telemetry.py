"""The NVML sampler, driven by a fake pynvml: columns, throttle reasons, low clocks, energy."""

import pytest

from harness import nvml, telemetry
from harness.device import DeviceFacts


class FakeNVML:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, sm=1980, reasons=0, broken=()):
        self.sm, self.reasons, self.broken = sm, reasons, set(broken)
        self.energy = 1_000_000

    def nvmlDeviceGetClockInfo(self, h, which):
        if "clock" in self.broken:
            raise RuntimeError("NotSupported")
        return self.sm if which == 1 else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        return 650_000

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.energy += 500  # mJ per reading
        return self.energy


@pytest.fixture
def fake(monkeypatch):
    def install(**kw):
        f = FakeNVML(**kw)
        monkeypatch.setattr(nvml, "pynvml", f)
        return f
    return install


def sample(max_clock=1980):
    s = telemetry.Sampler("handle", max_clock)
    with s:
        pass
    return s.columns()


def test_columns_of_a_healthy_card(fake):
    fake(reasons=0x1 | 0x10)  # idle and sync boost are not slowdowns
    cols = sample()
    assert set(cols) == set(telemetry.COLUMNS)
    assert cols["sm_clock_mhz"] == 1980 and cols["mem_clock_mhz"] == 2619
    assert cols["power_w"] == pytest.approx(650) and cols["temp_c"] == 71
    assert cols["energy_j"] == pytest.approx(0.5)
    assert cols["throttle"] == ""


def test_throttle_reasons_are_named(fake):
    fake(reasons=0x4 | 0x40 | 0x80)
    assert sample()["throttle"] == "sw_power_cap,hw_thermal,hw_power_brake"


def test_a_low_sm_clock_is_marked(fake):
    fake(sm=1600)  # 81% of 1980
    assert sample()["throttle"] == "sm_clock<90%"
    assert sample(max_clock=None)["throttle"] == ""  # without a known maximum nothing is claimed


def test_unanswered_queries_leave_columns_empty(fake):
    fake(broken={"clock"})
    cols = sample()
    assert cols["sm_clock_mhz"] is None and cols["power_w"] == pytest.approx(650)


def test_no_sampler_without_nvidia_gpu():
    assert telemetry.sampler_for(DeviceFacts(kind="cpu", name="x")) is None
    assert telemetry.sampler_for(DeviceFacts(kind="cuda", name="AMD Instinct MI300X", vendor="amd")) is None
