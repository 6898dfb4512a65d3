"""Utilization metrics from a case's FLOPs, bytes and median time, against a peak table entry.

tflops = flops / t / 1e12;  gbps = bytes / t / 1e9;  mfu = achieved FLOP/s / dense datasheet peak
of the dtype;  mbu = achieved B/s / datasheet bandwidth;  intensity = flops / bytes;
ridge = peak FLOP/s / peak B/s;  bound = compute when intensity >= ridge, else memory;
roofline = achieved / min(peak, intensity · bandwidth), i.e. roofline_ms / time_ms.
Against the device's measured ceilings (`mfu ceilings`): mfu_ceiling = achieved / best measured
matmul rate of the dtype; mbu_ceiling = achieved / best measured copy bandwidth; exp_util = the
softmax exponentials per second (workloads with an `exps` count) / measured exp2 rate. `limit`
names the largest of the utilizations (tensor, memory, exp): the unit the case is closest to.
Where the peak or the bandwidth is unknown (a CPU), the ratios stay empty: never an invented
denominator. Measured ceilings are records, not limits: a case that beats one raises it at the end
of its run (ceilings.rerate), so a finished run's mfu_ceiling never exceeds 1. A layer split over
n GPUs (tp-linear, ep-moe) counts the whole layer's flops and bytes against n GPUs' peaks (over_gpus). What is impossible
(above the datasheet, shorter than a launch) is `sanity`'s; mfu_at_clock is under "clock-aware MFU".
"""

from __future__ import annotations

from dataclasses import replace

from harness.hardware.specs import PeakSpec
from harness.hardware.specs.derivation import ARCH_RATES
from harness.measure import telemetry


def over_gpus(spec: PeakSpec | None, ceilings: dict | None, gpus: int | None) -> tuple[PeakSpec | None, dict | None]:
    """The peak and measured ceilings of `gpus` GPUs together, every rate times gpus: the
    denominators of a layer split over them, whose flops and bytes are the whole layer's (so its
    mfu is over the whole group's peak). None GPUs (a collective): no FLOP or memory peak at all."""
    if gpus is None:
        return None, None
    if gpus == 1:
        return spec, ceilings
    if spec is not None:
        spec = replace(spec, name=f"{gpus} x {spec.name}",
                       peaks_tflops={k: v * gpus for k, v in spec.peaks_tflops.items()},
                       bandwidth_tbs=spec.bandwidth_tbs * gpus if spec.bandwidth_tbs else spec.bandwidth_tbs)
    if ceilings:
        ceilings = {**ceilings, "matmul_tflops": {k: v * gpus for k, v in (ceilings.get("matmul_tflops") or {}).items()},
                    **{k: ceilings[k] * gpus for k in ("bandwidth_gbps", "exp_per_s") if ceilings.get(k)}}
    return spec, ceilings


def roofline_ms(flops: int, nbytes: int, spec: PeakSpec | None, peak_key: str) -> float | None:
    """The fastest time the roofline allows: max(compute time at peak, memory time at bandwidth)."""
    peak = spec.peak_flops(peak_key) if spec else None
    bandwidth = spec.bandwidth_bytes if spec else None
    if not peak or not bandwidth:
        return None
    return max(flops / peak, nbytes / bandwidth) * 1e3


def shape(flops: int, nbytes: int, spec: PeakSpec | None, peak_key: str) -> dict:
    """What is known before timing: intensity, bound and the roofline time."""
    peak = spec.peak_flops(peak_key) if spec else None
    bandwidth = spec.bandwidth_bytes if spec else None
    intensity = flops / nbytes if nbytes else None
    bound = None
    if peak and bandwidth and intensity is not None:
        bound = "compute" if intensity >= peak / bandwidth else "memory"
    return {"intensity": intensity, "bound": bound, "roofline_ms": roofline_ms(flops, nbytes, spec, peak_key)}


def achieved(flops: int, nbytes: int, time_ms: float, spec: PeakSpec | None, peak_key: str,
             ceilings: dict | None = None, exps: int | None = None) -> dict:
    """Everything the results contract derives from a measured median time."""
    seconds = time_ms / 1e3
    flop_rate, byte_rate = flops / seconds, nbytes / seconds
    peak = spec.peak_flops(peak_key) if spec else None
    bandwidth = spec.bandwidth_bytes if spec else None
    row = shape(flops, nbytes, spec, peak_key)
    row = {
        "tflops": flop_rate / 1e12,
        "gbps": byte_rate / 1e9,
        "mfu": flop_rate / peak if peak else None,
        "mbu": byte_rate / bandwidth if bandwidth else None,
        **row,
        "roofline": row["roofline_ms"] / time_ms if row["roofline_ms"] else None,
    }
    return {**row, **against_ceilings(row, time_ms, peak_key, ceilings, exps)}


def against_ceilings(row: dict, time_ms: float, peak_key: str, ceilings: dict | None,
                     exps: int | None) -> dict:
    """mfu_ceiling, mbu_ceiling, exp_util and limit of a row with tflops, gbps, mfu and mbu."""
    ceil = ceilings or {}
    matmul = (ceil.get("matmul_tflops") or {}).get(peak_key)
    ratios = {
        "mfu_ceiling": row["tflops"] / matmul if matmul else None,
        "mbu_ceiling": row["gbps"] / ceil["bandwidth_gbps"] if ceil.get("bandwidth_gbps") else None,
        "exp_util": exp_rate(exps, time_ms) / ceil["exp_per_s"] if exps and ceil.get("exp_per_s") else None,
    }
    return {**ratios, "limit": _limit({**row, **ratios})}


def exp_rate(exps: int | None, time_ms: float) -> float | None:
    """Softmax exponentials per second."""
    return exps / (time_ms / 1e3) if exps else None


def _limit(row: dict) -> str | None:
    """Which unit the case uses most of, preferring measured ceilings over datasheet peaks."""
    tensor = row["mfu_ceiling"] if row["mfu_ceiling"] is not None else row["mfu"]
    mem = row["mbu_ceiling"] if row["mbu_ceiling"] is not None else row["mbu"]
    candidates = {"tensor": tensor, "memory": mem, "exp": row["exp_util"]}
    known = {k: v for k, v in candidates.items() if v is not None}
    return max(known, key=known.get) if known else None


# --------------------------------------------------------------- what the hardware cannot do
#
# `suspect` means impossible, nothing less: above what the chip can do, or faster than a launch.
# A measured ceiling is never a limit (it is a record, raised when a case beats it: ceilings.rerate).
#
# TIMING_SLACK: a case may touch a physical limit but not pass it by more than 2%. CUDA events
# resolve about 0.5 us and datasheets round their figures; a broken count or timing is off by far
# more (typically 2x), so 2% hides no real error and flags no real kernel.
TIMING_SLACK = 1.02
# The launch floor: no timed call is shorter than an empty kernel launch. `mfu ceilings` measures
# one (a 1-element add, eager and graph-replayed: the fastest sample of either); the floor is 0.8 of
# it, margin for event granularity and drift. Below it the timed region held no work: events on
# another stream, or a call that returned before its work. Without a stored measurement the
# conservative constants below apply: an event-timed GPU kernel takes several us end to end, and
# a host-timed torch call on a CPU over 1 us (2.6 us measured for a 1-element add).
LAUNCH_FLOOR_FRACTION = 0.8
DEFAULT_LAUNCH_FLOOR_MS = {"cuda": 1e-3, "cpu": 5e-4}


def launch_floor_ms(ceilings: dict | None, kind: str) -> tuple[float | None, str]:
    """The shortest believable time of one timed call on this device, and where it comes from."""
    measured = (ceilings or {}).get("launch_ms")
    if measured:
        return LAUNCH_FLOOR_FRACTION * measured, (f"{LAUNCH_FLOOR_FRACTION:g} x the {measured * 1e3:.2f} us "
                                                  "empty launch measured by `mfu ceilings`")
    floor = DEFAULT_LAUNCH_FLOOR_MS.get(kind)
    return floor, (f"{floor * 1e3:g} us, the conservative floor for a {kind} without a measured launch"
                   if floor else "")


def sanity(row: dict, spec: PeakSpec | None, *, peak_key: str | None = None, facts=None,
           floor: tuple[float | None, str] = (None, "")) -> str | None:
    """Why a measured row cannot be right (above a physical limit, or shorter than a launch), or None.

    The FLOP limit is the datasheet peak scaled to the card's maximum SM clock when that is above
    the clock the peak assumes (an H100's tensor peak assumes 1830 MHz; it may boost to 1980)."""
    floor_ms, floor_why = floor
    if floor_ms is not None and row.get("time_ms") is not None and row["time_ms"] < floor_ms:
        return (f"{row['time_ms'] * 1e3:.3g} us is shorter than an empty kernel launch (floor {floor_why}): "
                "the timed region held no work (events on another stream, or a call that returned early)")
    headroom = clock_headroom(spec, facts, peak_key)
    if row.get("mfu") is not None and row["mfu"] > headroom * TIMING_SLACK:
        at_clock = f" scaled to its maximum SM clock (x{headroom:.3f})" if headroom > 1 else ""
        return (f"{row['tflops']:.1f} TFLOPS is above the {spec.name} datasheet peak{at_clock} "
                f"(+{TIMING_SLACK - 1:.0%} timing slack): a wrong FLOP count or broken timing")
    if row.get("mbu") is not None and row["mbu"] > TIMING_SLACK:
        return (f"{row['gbps']:.0f} GB/s is above the {spec.name} datasheet bandwidth (+{TIMING_SLACK - 1:.0%} "
                "timing slack): a wrong byte count, broken timing, or data served from cache (is l2_flush off?)")
    return None


# --------------------------------------------------------------------------- clock-aware MFU
#
# A datasheet peak holds at one SM clock. mfu_at_clock = achieved / (peak x sm_clock / peak_clock)
# = mfu x peak_clock / sm_clock, with sm_clock the median SM clock NVML saw while the case was
# timed: the share of what the chip could do at the clock it actually ran. A low mfu with a high
# mfu_at_clock is the card slowing down; low both, the kernel. peak_clock is the clock the peak
# assumes: peak / (SMs x dense FLOPs per SM per clock of the architecture, specs/derivation.py) where
# that lands within 80-102% of the boost clock (H100/H200 bf16: 989.5 TFLOPS / (132 x 4096) = 1830
# MHz, below the 1980 MHz boost); else the table's boost_mhz; else NVML's max SM clock. (GeForce
# parts quote half-rate tensor peaks, so their implied clock falls out of range and boost is used.)
IMPLIED_CLOCK_RANGE = (0.80, 1.02)


def peak_clock_mhz(spec: PeakSpec | None, facts, peak_key: str) -> float | None:
    """The SM clock (MHz) at which the datasheet peak of this dtype is reached."""
    boost = (spec.boost_mhz if spec else None) or (facts.max_sm_clock_mhz if facts else None)
    peak = spec.peak_flops(peak_key) if spec else None
    cc = tuple(facts.compute_capability) if facts and facts.compute_capability else None
    rate = ARCH_RATES.get(cc, ("", {}))[1].get(peak_key) if facts and facts.vendor == "nvidia" else None
    sms = (spec.sms if spec else None) or (facts.sm_count if facts else None)
    if peak and rate and sms and boost:
        implied = peak / (sms * rate) / 1e6
        if IMPLIED_CLOCK_RANGE[0] <= implied / boost <= IMPLIED_CLOCK_RANGE[1]:
            return implied
    return boost


def clock_headroom(spec: PeakSpec | None, facts, peak_key: str | None) -> float:
    """How far above the peak's clock the card may run: max SM clock / peak clock, at least 1."""
    if not peak_key or not facts or not facts.max_sm_clock_mhz:
        return 1.0
    clock = peak_clock_mhz(spec, facts, peak_key)
    return max(1.0, facts.max_sm_clock_mhz / clock) if clock else 1.0


def mfu_at_clock(mfu: float | None, sm_clock_mhz: float | None, peak_clock: float | None) -> float | None:
    if mfu is None or not sm_clock_mhz or not peak_clock:
        return None
    return mfu * peak_clock / sm_clock_mhz


def clock_columns(row: dict, spec: PeakSpec | None, facts, peak_key: str) -> dict:
    """peak_clock_mhz, mfu_at_clock and the throttle verdict of a timed row with telemetry."""
    clock = peak_clock_mhz(spec, facts, peak_key)
    return {"peak_clock_mhz": clock,
            "mfu_at_clock": mfu_at_clock(row.get("mfu"), row.get("sm_clock_mhz"), clock),
            "throttled": telemetry.throttled(row.get("sm_clock_mhz"), clock, row.get("throttle"))}
