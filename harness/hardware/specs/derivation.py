"""Peaks of an NVIDIA GPU the table does not know, derived from its own facts (torch, NVML).

peaks = SMs x max SM clock x dense FLOPs per SM per clock for its compute capability (ARCH_RATES);
bandwidth = memory bus width / 8 x max memory clock x 2 (DDR). What cannot be derived stays None,
so MFU and MBU stay empty rather than invented; the spec's `reason` shows the arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hardware.specs.peak_spec import PeakSpec

if TYPE_CHECKING:  # annotations only: DeviceFacts' module imports torch
    from harness.hardware.device import DeviceFacts

# Dense FLOPs (a multiply-add counts 2; int8 ops likewise) per SM per clock, by compute
# capability. Each row reproduces known datasheets at the clock NVIDIA computed them with:
#   8.0  A100: 108 SMs x 1410 MHz x 2048 = 312 bf16; x 1024 = 156 tf32; x 128 = 19.5 fp32;
#        x 4096 = 624 int8; x 128 = 19.5 fp64 (FP64 tensor cores: 16 DP FMA per tensor core per
#        clock, 4 per SM, as NVIDIA's forum works the whitepaper's 19.5 back).
#   8.6  A10: 72 x 1695 MHz x 1024 = 125 bf16; x 512 = 62.5 tf32; x 256 = 31.2 fp32; x 2048 = 250.
#   8.9  L4: 58 x 2040 MHz x 1024 = 121 bf16, x 2048 = 242 fp8; L40S: 142 x 2520 MHz x 2048 = 733
#        fp8, x 512 = 183 tf32 (its datasheet bf16 is 362, 1% under 142 x 2520 x 1024).
#   9.0  H100 SXM: 132 x 1830 MHz x 4096 = 989 bf16. The datasheet's tensor peaks use 1830 MHz,
#        not the 1980 MHz max boost that NVML reports (fp32 does: 132 x 1980 x 256 = 67), so a
#        peak derived at the max clock reads ~8% above the datasheet: MFU errs low, never high.
#        FP64 tensor cores run at the max clock: 132 x 1980 x 256 = 66.9 fp64 (glennklockwood's
#        table); H100 PCIe 114 x 1755 x 256 = 51.2, its datasheet's 51.
#   10.0 B200: 148 x ~1860 MHz x 8192 = 2250 bf16, x 32768 = 9000 fp4; fp32 75 at ~1980 MHz.
#   12.0 RTX PRO 5000 Blackwell: 110 x 2620 MHz x 1024 = 295 fp16 (FP16 accumulate),
#        x 4096 = 1180 fp4, x 256 = 73.7 fp32 and tf32 (third-party copies of NVIDIA's tables).
# Rates are each architecture's highest documented ones. GeForce and some workstation and L40
# parts run tf32, and fp16/bf16/fp8 with FP32 accumulate (what PyTorch uses), at HALF these rates
# (RTX 4090: 165 bf16, not 330), so for them a derived peak is twice what is attainable. 8.7
# (Jetson Orin) and older architectures are left out: no per-SM rates were grounded for them. fp64
# only where FP64 tensor cores make DGEMM fast (8.0, 9.0); elsewhere it stays empty (GA10x, Ada and
# RTX Blackwell run FP64 at 1/64 of fp32, and no per-SM rate was grounded for 10.0's). China-market
# Hoppers cut FP64 (H800, H20: table entries without it); one not in the table would get 9.0's
# full fp64 rate derived, so its fp64 MFU would err low.
ARCH_RATES: dict[tuple[int, int], tuple[str, dict[str, int]]] = {
    (8, 0): ("ampere GA100", dict(fp64=128, fp32=128, tf32=1024, bf16=2048, fp16=2048, int8=4096)),
    (8, 6): ("ampere GA10x", dict(fp32=256, tf32=512, bf16=1024, fp16=1024, int8=2048)),
    (8, 9): ("ada", dict(fp32=256, tf32=512, bf16=1024, fp16=1024, fp8=2048, int8=2048)),
    (9, 0): ("hopper", dict(fp64=256, fp32=256, tf32=2048, bf16=4096, fp16=4096, fp8=8192, int8=8192)),
    (10, 0): (
        "blackwell datacenter",
        dict(fp32=256, tf32=4096, bf16=8192, fp16=8192, fp8=16384, int8=16384, fp4=32768),
    ),
    (12, 0): (
        "blackwell RTX",
        dict(fp32=256, tf32=256, bf16=1024, fp16=1024, fp8=2048, int8=2048, fp4=4096),
    ),
}


def derive(facts: DeviceFacts) -> PeakSpec | None:
    """Peaks and bandwidth of an NVIDIA GPU from its own facts; None for a CPU or another vendor."""
    if facts.kind != "cuda" or facts.vendor != "nvidia":
        return None
    cc = tuple(facts.compute_capability) if facts.compute_capability else None
    peaks, peak_reason = _derive_peaks(facts, cc)
    bandwidth, bandwidth_reason = _derive_bandwidth(facts)
    return PeakSpec(
        name=facts.name,
        key="derived",
        origin="derived",
        peaks_tflops=peaks,
        bandwidth_tbs=bandwidth,
        memory_gb=round(facts.total_memory_bytes / 2**30, 1) if facts.total_memory_bytes else None,
        sms=facts.sm_count,
        boost_mhz=facts.max_sm_clock_mhz,
        l2_mb=round(facts.l2_bytes / 2**20, 1) if facts.l2_bytes else None,
        source="derived from the device's own facts (PyTorch, NVML)",
        reason=f"no table entry matches {facts.name!r}; {peak_reason}; {bandwidth_reason}",
        arch=ARCH_RATES[cc][0] if cc in ARCH_RATES else "",
    )


def _derive_peaks(facts: DeviceFacts, cc: tuple[int, ...] | None) -> tuple[dict[str, float], str]:
    if cc not in ARCH_RATES:
        shown = "unknown" if cc is None else f"{cc[0]}.{cc[1]}"
        return {}, f"no peaks: no per-SM rates are known for compute capability {shown}"
    if not facts.sm_count or not facts.max_sm_clock_mhz:
        missing = f"SM count ({facts.sm_count}) or max SM clock ({facts.max_sm_clock_mhz})"
        return {}, f"no peaks: {missing} unknown"
    arch, rates = ARCH_RATES[cc]
    scale = facts.sm_count * facts.max_sm_clock_mhz * 1e6 / 1e12
    peaks = {dtype: round(scale * per_sm, 1) for dtype, per_sm in rates.items()}
    rate_text = ", ".join(f"{dtype} {per_sm}" for dtype, per_sm in rates.items())
    reason = (
        f"peaks = {facts.sm_count} SMs x {facts.max_sm_clock_mhz} MHz (max SM clock) x dense "
        f"FLOP/clock/SM for compute capability {cc[0]}.{cc[1]} ({arch}: {rate_text}); these are "
        "the architecture's highest rates: GeForce parts run tensor math with FP32 accumulate at "
        "half, and datasheets may quote a lower tensor clock, so MFU against them errs low"
    )
    return peaks, reason


def _derive_bandwidth(facts: DeviceFacts) -> tuple[float | None, str]:
    bits, mem_mhz = facts.memory_bus_width_bits, facts.max_mem_clock_mhz
    if not bits or not mem_mhz:
        missing = f"memory bus width ({bits}) or max memory clock ({mem_mhz})"
        return None, f"no bandwidth: {missing} unknown"
    tbs = round(bits / 8 * mem_mhz * 1e6 * 2 / 1e12, 3)
    formula = f"{bits}-bit bus / 8 x {mem_mhz} MHz (max memory clock) x 2 (DDR)"
    return tbs, f"bandwidth = {formula} = {tbs} TB/s"
