"""The NVML sampler, driven by a fake pynvml: columns, raw throttle reasons, energy; and the
throttle verdict and mfu_at_clock built on them."""

import pytest

from harness.measure import metrics, telemetry
from harness.hardware import nvml, specs
from harness.hardware.device import DeviceFacts


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


def sample():
    s = telemetry.Sampler("handle")
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


def test_the_raw_column_keeps_reasons_only(fake):
    fake(sm=1600, reasons=0x4)  # 81% of 1980, at the power cap
    assert sample()["throttle"] == "sw_power_cap"  # the clock goes to the verdict, not the raw column


H100 = specs.lookup("h100-sxm")
FACTS = DeviceFacts(kind="cuda", name="NVIDIA H100 80GB HBM3", vendor="nvidia", compute_capability=(9, 0),
                    sm_count=132, max_sm_clock_mhz=1980)
PEAK_CLOCK = 989.5e6 / (132 * 4096)  # 1830 MHz: the clock the bf16 datasheet peak assumes


def verdict(fake, sm, reasons, mfu=0.6):
    fake(sm=sm, reasons=reasons)
    row = {"mfu": mfu, **sample()}
    return metrics.clock_columns(row, H100, FACTS, "bf16")


@pytest.mark.parametrize("sm, reasons, throttled", [
    (1980, 0x4, False),        # the power cap at full clock: how a busy H200 runs
    (1700, 0x4, False),        # the cap trimmed the clock to 93% of the peak's: not enough to matter
    (1600, 0x4, True),         # 87%: more than 10% under
    (1980, 0x0, False),
    (1980, 0x40, True),        # a thermal slowdown counts even at full clock
    (1980, 0x8, True),         # hw_slowdown
    (1980, 0x20, True),        # sw_thermal
    (1980, 0x80 | 0x4, True),  # hw_power_brake
])
def test_throttled_only_when_it_matters(fake, sm, reasons, throttled):
    assert verdict(fake, sm, reasons)["throttled"] is throttled


def test_mfu_at_clock_from_telemetry(fake):
    cols = verdict(fake, 1500, 0x4, mfu=0.6)
    assert cols["peak_clock_mhz"] == pytest.approx(PEAK_CLOCK)
    assert cols["mfu_at_clock"] == pytest.approx(0.6 * PEAK_CLOCK / 1500)  # achieved / (peak x 1500/1830)
    assert cols["throttled"] is True


def test_no_verdict_without_telemetry():
    assert telemetry.throttled(None, 1830, "") is None
    assert telemetry.throttled(None, 1830, "hw_thermal") is True
    assert telemetry.throttled(1500, None, "sw_power_cap") is False  # no reference clock: only reasons decide


def test_unanswered_queries_leave_columns_empty(fake):
    fake(broken={"clock"})
    cols = sample()
    assert cols["sm_clock_mhz"] is None and cols["power_w"] == pytest.approx(650)


def test_no_sampler_without_nvidia_gpu():
    assert telemetry.sampler_for(DeviceFacts(kind="cpu", name="x")) is None
    assert telemetry.sampler_for(DeviceFacts(kind="cuda", name="AMD Instinct MI300X", vendor="amd")) is None
