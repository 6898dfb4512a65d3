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
denominator. A ratio above 1 (above 1.05 against a measured ceiling, which has noise of its own)
means the FLOP/byte count or the timing is wrong: see `sanity`.
"""

from __future__ import annotations

from harness.specs import PeakSpec


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


CEILING_SLACK = 1.05


def achieved(flops: int, nbytes: int, time_ms: float, spec: PeakSpec | None, peak_key: str,
             ceilings: dict | None = None, exps: int | None = None) -> dict:
    """Everything the results contract derives from a measured median time."""
    seconds = time_ms / 1e3
    flop_rate, byte_rate = flops / seconds, nbytes / seconds
    peak = spec.peak_flops(peak_key) if spec else None
    bandwidth = spec.bandwidth_bytes if spec else None
    ceil = ceilings or {}
    matmul_ceiling = (ceil.get("matmul_tflops") or {}).get(peak_key)
    row = shape(flops, nbytes, spec, peak_key)
    row = {
        "tflops": flop_rate / 1e12,
        "gbps": byte_rate / 1e9,
        "mfu": flop_rate / peak if peak else None,
        "mbu": byte_rate / bandwidth if bandwidth else None,
        **row,
        "roofline": row["roofline_ms"] / time_ms if row["roofline_ms"] else None,
        "mfu_ceiling": flop_rate / 1e12 / matmul_ceiling if matmul_ceiling else None,
        "mbu_ceiling": byte_rate / 1e9 / ceil["bandwidth_gbps"] if ceil.get("bandwidth_gbps") else None,
        "exp_util": exps / seconds / ceil["exp_per_s"] if exps and ceil.get("exp_per_s") else None,
    }
    return {**row, "limit": _limit(row)}


def _limit(row: dict) -> str | None:
    """Which unit the case uses most of, preferring measured ceilings over datasheet peaks."""
    tensor = row["mfu_ceiling"] if row["mfu_ceiling"] is not None else row["mfu"]
    mem = row["mbu_ceiling"] if row["mbu_ceiling"] is not None else row["mbu"]
    candidates = {"tensor": tensor, "memory": mem, "exp": row["exp_util"]}
    known = {k: v for k, v in candidates.items() if v is not None}
    return max(known, key=known.get) if known else None


def sanity(row: dict, spec: PeakSpec | None) -> str | None:
    """Why a measured row cannot be right (above a physical limit), or None."""
    if row.get("mfu") is not None and row["mfu"] > 1:
        return (f"{row['tflops']:.1f} TFLOPS is above the {spec.name} datasheet peak: "
                "a wrong FLOP count or broken timing")
    if row.get("mbu") is not None and row["mbu"] > 1:
        return (f"{row['gbps']:.0f} GB/s is above the {spec.name} datasheet bandwidth: a wrong byte "
                "count, broken timing, or data served from cache (is l2_flush off?)")
    for key, what in (("mfu_ceiling", "matmul"), ("mbu_ceiling", "bandwidth"), ("exp_util", "exp")):
        if row.get(key) is not None and row[key] > CEILING_SLACK:
            return (f"{row[key]:.0%} of the measured {what} ceiling (over {CEILING_SLACK - 1:.0%} above "
                    "it): a wrong count, broken timing, or a stale ceiling (rerun `mfu ceilings`)")
    return None
