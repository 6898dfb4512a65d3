"""What the GPU was doing while a case was measured: clocks, power, temperature, energy, throttling.

A background thread polls NVML every few milliseconds while the timer runs. Per case it yields
the columns sm_clock_mhz and mem_clock_mhz (medians), power_w (mean), temp_c (max), energy_j (the
energy counter's difference) and throttle: the raw clock-event reasons seen (power cap, thermal,
HW slowdown, power brake). `throttled()` is the verdict: a card at its power cap is normal under
dense GEMMs (an H200 reaches its 700 W cap on any of them and trims its clock a little), so a
case counts as throttled only when its clock fell far enough to matter, or a thermal or hardware
slowdown acted. Without NVML (a CPU, or no driver) the columns stay empty; the runner warns once.
"""

from __future__ import annotations

import statistics
import threading

from harness.hardware import nvml
from harness.store import columns

COLUMNS = [c.name for c in columns.COLUMNS if c.kind == "telemetry"]  # what Sampler.columns() fills

# Clock-event reason bits (nvmlClocksEventReason*). GpuIdle, SyncBoost and the applications-clock
# setting are not slowdowns of a busy card, so they are not reported.
SLOWDOWNS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
             0x80: "hw_power_brake"}
# Reasons that make a case throttled on their own: heat or a hardware signal. sw_power_cap alone
# does not: the driver holding the board at its power limit is how a busy card normally runs, and
# whether it cost enough clock to matter is what LOW_CLOCK decides.
SEVERE = ("hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
# Throttled when the median SM clock sat more than 10% under the clock the peak assumes: then MFU
# against the datasheet is capped more than 10% low by the card, and mfu_at_clock tells the rest.
LOW_CLOCK = 0.90
INTERVAL_S = 0.005


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in SLOWDOWNS.items() if mask & bit]


def throttled(sm_clock_mhz: float | None, reference_mhz: float | None, reasons: str | None) -> bool | None:
    """The verdict on a case's raw telemetry; None when there was none (no NVML)."""
    names = [n for n in (reasons or "").split(",") if n]
    if sm_clock_mhz is None and not names:
        return None
    if any(n in SEVERE for n in names):
        return True
    return bool(sm_clock_mhz and reference_mhz and sm_clock_mhz < LOW_CLOCK * reference_mhz)


class Sampler:
    """Polls one GPU while active: `with sampler: ...`, then `sampler.columns()`."""

    def __init__(self, handle):
        self.handle = handle
        p = nvml.pynvml
        self._reasons = getattr(p, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            p.nvmlDeviceGetCurrentClocksThrottleReasons

    def __enter__(self):
        self.readings: list[dict] = []
        self.mask = 0
        self._stop = threading.Event()
        self.energy_start = self._energy()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll_once()  # at least one reading, however short the case
        self.energy_end = self._energy()

    def _poll(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._poll_once()

    def _poll_once(self) -> None:
        p, q, h = nvml.pynvml, nvml.query, self.handle
        self.readings.append({
            "sm": q(p.nvmlDeviceGetClockInfo, h, p.NVML_CLOCK_SM),
            "mem": q(p.nvmlDeviceGetClockInfo, h, p.NVML_CLOCK_MEM),
            "power_mw": q(p.nvmlDeviceGetPowerUsage, h),
            "temp": q(p.nvmlDeviceGetTemperature, h, p.NVML_TEMPERATURE_GPU),
        })
        self.mask |= q(self._reasons, h) or 0

    def _energy(self) -> int | None:
        return nvml.query(nvml.pynvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)

    def columns(self) -> dict:
        def values(key):
            return [r[key] for r in self.readings if r[key] is not None]

        sm, mem, power, temp = values("sm"), values("mem"), values("power_mw"), values("temp")
        energy = None
        if self.energy_start is not None and self.energy_end is not None:
            energy = (self.energy_end - self.energy_start) / 1e3  # mJ -> J
        return {
            "sm_clock_mhz": statistics.median(sm) if sm else None,
            "mem_clock_mhz": statistics.median(mem) if mem else None,
            "power_w": statistics.fmean(power) / 1e3 if power else None,
            "temp_c": max(temp) if temp else None,
            "energy_j": energy,
            "throttle": ",".join(reason_names(self.mask)),
        }


def sampler_for(facts) -> Sampler | None:
    """A sampler for this device, or None where NVML cannot watch it (CPU, AMD, no driver)."""
    if facts.kind != "cuda" or facts.vendor != "nvidia":
        return None
    import torch

    handle = nvml.handle_for(facts.uuid, torch.cuda.current_device())
    return Sampler(handle) if handle is not None else None
