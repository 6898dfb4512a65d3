"""Peak arithmetic and memory rates of the device under test: the MFU and MBU denominators.

Three ways to a `PeakSpec`, in the order `resolve()` tries them:

1. `match()`: the device's reported name ("NVIDIA H100 80GB HBM3") against the datasheet table in
   gpus.yaml (shipped inside the package). Names are normalised first (lowercase, "-"/"_" as spaces,
   spaces collapsed, a leading "nvidia"/"amd" dropped); each entry carries regular expressions over
   that normalised name and the first entry in file order with a matching pattern wins.
2. `derive()`: for an NVIDIA GPU the table does not know, peaks = SMs x max SM clock x dense
   FLOPs per SM per clock for its compute capability, and bandwidth = bus width / 8 x max memory
   clock x 2. What cannot be derived stays None: MFU/MBU then stay empty, never invented.
3. Nothing: a CPU, or a non-NVIDIA device the table does not know.

`lookup()` serves `mfu plan --gpu NAME` (a key, canonical name or reported name); `explain()` writes
the human account that `mfu gpus --detect` prints.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import NamedTuple

import yaml

from harness.hardware.device import DeviceFacts
from harness.measure.dtype_names import PEAK_KEYS

# Dense FLOPs (a multiply-add counts 2; int8 ops likewise) per SM per clock, by compute
# capability. Each row reproduces known datasheets at the clock NVIDIA computed them with:
#   8.0  A100: 108 SMs x 1410 MHz x 2048 = 312 bf16; x 1024 = 156 tf32; x 128 = 19.5 fp32;
#        x 4096 = 624 int8.
#   8.6  A10: 72 x 1695 MHz x 1024 = 125 bf16; x 512 = 62.5 tf32; x 256 = 31.2 fp32; x 2048 = 250.
#   8.9  L4: 58 x 2040 MHz x 1024 = 121 bf16, x 2048 = 242 fp8; L40S: 142 x 2520 MHz x 2048 = 733
#        fp8, x 512 = 183 tf32 (its datasheet bf16 is 362, 1% under 142 x 2520 x 1024).
#   9.0  H100 SXM: 132 x 1830 MHz x 4096 = 989 bf16. The datasheet's tensor peaks use 1830 MHz,
#        not the 1980 MHz max boost that NVML reports (fp32 does: 132 x 1980 x 256 = 67), so a
#        peak derived at the max clock reads ~8% above the datasheet: MFU errs low, never high.
#   10.0 B200: 148 x ~1860 MHz x 8192 = 2250 bf16, x 32768 = 9000 fp4; fp32 75 at ~1980 MHz.
#   12.0 RTX PRO 5000 Blackwell: 110 x 2620 MHz x 1024 = 295 fp16 (FP16 accumulate),
#        x 4096 = 1180 fp4, x 256 = 73.7 fp32 and tf32 (third-party copies of NVIDIA's tables).
# Rates are each architecture's highest documented ones. GeForce and some workstation and L40
# parts run tf32, and fp16/bf16/fp8 with FP32 accumulate (what PyTorch uses), at HALF these rates
# (RTX 4090: 165 bf16, not 330), so for them a derived peak is twice what is attainable. 8.7
# (Jetson Orin) and older architectures are left out: no per-SM rates were grounded for them.
ARCH_RATES: dict[tuple[int, int], tuple[str, dict[str, int]]] = {
    (8, 0): ("ampere GA100", dict(fp32=128, tf32=1024, bf16=2048, fp16=2048, int8=4096)),
    (8, 6): ("ampere GA10x", dict(fp32=256, tf32=512, bf16=1024, fp16=1024, int8=2048)),
    (8, 9): ("ada", dict(fp32=256, tf32=512, bf16=1024, fp16=1024, fp8=2048, int8=2048)),
    (9, 0): ("hopper", dict(fp32=256, tf32=2048, bf16=4096, fp16=4096, fp8=8192, int8=8192)),
    (10, 0): (
        "blackwell datacenter",
        dict(fp32=256, tf32=4096, bf16=8192, fp16=8192, fp8=16384, int8=16384, fp4=32768),
    ),
    (12, 0): (
        "blackwell RTX",
        dict(fp32=256, tf32=256, bf16=1024, fp16=1024, fp8=2048, int8=2048, fp4=4096),
    ),
}

_REQUIRED = ("name", "key", "match", "arch", "peaks_tflops", "bandwidth_tbs", "memory_gb", "source")
_OPTIONAL = ("sms", "boost_mhz", "l2_mb", "notes", "nvlink_gbs", "network_gbs", "links_source")
_BANDWIDTH_RANGE_TBS = (0.05, 50.0)  # catches GB/s or B/s written where TB/s is meant


@dataclass(frozen=True)
class PeakSpec:
    name: str
    key: str
    origin: str  # "datasheet" or "derived"
    peaks_tflops: dict[str, float]  # dtype key -> dense TFLOPS (int8: TOPS)
    bandwidth_tbs: float | None
    memory_gb: float | None
    sms: int | None
    boost_mhz: int | None
    l2_mb: float | None
    source: str
    reason: str  # how this spec was chosen or derived
    arch: str = ""
    notes: str = ""
    # Interconnect, per GPU and per direction in GB/s (1e9 B/s): the denominators of `link_util`,
    # comparable to nccl-tests' bus bandwidth (harness/workloads/comm.py). None where unknown.
    nvlink_gbs: float | None = None  # inside a node (NVLink / NVSwitch)
    network_gbs: float | None = None  # across nodes: the typical NIC per GPU
    links_source: str = ""

    def peak_flops(self, dtype_key: str) -> float | None:
        """Dense peak in FLOP/s (ops/s for int8) for a dtype key, or None where there is none."""
        tflops = self.peaks_tflops.get(dtype_key)
        return tflops * 1e12 if tflops is not None else None

    @property
    def bandwidth_bytes(self) -> float | None:
        """Peak DRAM bandwidth in bytes/s."""
        return self.bandwidth_tbs * 1e12 if self.bandwidth_tbs is not None else None

    def to_dict(self) -> dict:
        return asdict(self)


class _Entry(NamedTuple):
    spec: PeakSpec
    patterns: tuple[re.Pattern, ...]


def normalize_name(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb': the form gpus.yaml's patterns see."""
    text = re.sub(r"[\s_-]+", " ", name.lower()).strip()
    return re.sub(r"^(nvidia|amd) ", "", text)


# ------------------------------------------------------------------------------ the table


def table() -> list[PeakSpec]:
    """Every datasheet entry of gpus.yaml, in file order."""
    return [entry.spec for entry in _entries()]


@functools.cache
def _entries() -> tuple[_Entry, ...]:
    text = (resources.files("harness.hardware") / "gpus.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))


def _parse(raw: object) -> tuple[_Entry, ...]:
    """Validate the loaded YAML; a broken entry raises ValueError naming the entry and the field."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("gpus.yaml: expected a non-empty list of GPU entries")
    entries = tuple(_parse_entry(i, item) for i, item in enumerate(raw))
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        spec = entry.spec
        for ident in (spec.key, normalize_name(spec.key), normalize_name(spec.name)):
            if seen.setdefault(ident, i) != i:
                where = f"gpus.yaml entry {i} ({spec.key})"
                raise ValueError(f"{where}: key/name {ident!r} repeats entry {seen[ident]}")
    return entries


def _parse_entry(i: int, item: object) -> _Entry:
    if not isinstance(item, dict):
        raise ValueError(f"gpus.yaml entry {i}: expected a mapping, got {type(item).__name__}")
    label = f"gpus.yaml entry {i} ({item.get('key') or item.get('name') or '?'})"

    def fail(field: str, problem: str) -> ValueError:
        return ValueError(f"{label}: {field}: {problem}")

    unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise fail(unknown[0], f"unknown field (allowed: {', '.join(_REQUIRED + _OPTIONAL)})")
    for field in _REQUIRED:
        if item.get(field) is None:
            raise fail(field, "missing")
    for field in ("name", "key", "arch", "source"):
        if not isinstance(item[field], str) or not item[field].strip():
            raise fail(field, "must be a non-empty string")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", item["key"]):
        raise fail("key", f"must be lowercase letters, digits and '-' (got {item['key']!r})")
    if not item["source"].startswith(("https://", "http://")):
        raise fail("source", f"must be the URL of the datasheet (got {item['source']!r})")
    if not isinstance(item.get("notes", ""), str):
        raise fail("notes", "must be a string")

    bandwidth = _positive(item["bandwidth_tbs"], fail, "bandwidth_tbs")
    low, high = _BANDWIDTH_RANGE_TBS
    if not low <= bandwidth <= high:
        raise fail("bandwidth_tbs", f"{bandwidth} is not a plausible TB/s figure ({low}..{high})")
    spec = PeakSpec(
        name=item["name"],
        key=item["key"],
        origin="datasheet",
        peaks_tflops=_peaks(item["peaks_tflops"], fail),
        bandwidth_tbs=bandwidth,
        memory_gb=_positive(item["memory_gb"], fail, "memory_gb"),
        sms=_optional_positive(item.get("sms"), fail, "sms", integer=True),
        boost_mhz=_optional_positive(item.get("boost_mhz"), fail, "boost_mhz", integer=True),
        l2_mb=_optional_positive(item.get("l2_mb"), fail, "l2_mb"),
        source=item["source"],
        reason="",
        arch=item["arch"],
        notes=item.get("notes", ""),
        nvlink_gbs=_optional_positive(item.get("nvlink_gbs"), fail, "nvlink_gbs"),
        network_gbs=_optional_positive(item.get("network_gbs"), fail, "network_gbs"),
        links_source=item.get("links_source", ""),
    )
    return _Entry(spec, _patterns(item["match"], fail))


def _peaks(raw: object, fail) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise fail("peaks_tflops", "must be a non-empty mapping of dtype -> dense TFLOPS")
    for dtype in raw:
        if dtype not in PEAK_KEYS:
            raise fail(f"peaks_tflops.{dtype}", f"unknown dtype (allowed: {', '.join(PEAK_KEYS)})")
    return {dtype: _positive(value, fail, f"peaks_tflops.{dtype}") for dtype, value in raw.items()}


def _patterns(raw: object, fail) -> tuple[re.Pattern, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        raise fail("match", "must be a non-empty list of regular expressions")
    compiled = []
    for pattern in raw:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise fail("match", f"bad regular expression {pattern!r}: {exc}") from None
    return tuple(compiled)


def _positive(value: object, fail, field: str, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "integer" if integer else "number"
        raise fail(field, f"must be a positive {kind} (got {value!r})")
    return value


def _optional_positive(value: object, fail, field: str, integer: bool = False):
    return None if value is None else _positive(value, fail, field, integer)


# ------------------------------------------------------------------------------ finding an entry


def match(device_name: str) -> PeakSpec | None:
    """The datasheet entry for a reported device name, with the pattern that matched, or None."""
    normalised = normalize_name(device_name)
    for entry in _entries():
        for pattern in entry.patterns:
            if pattern.search(normalised):
                how = f"(normalised {normalised!r}) by /{pattern.pattern}/"
                reason = f"matched {device_name!r} {how}"
                return replace(entry.spec, reason=reason)
    return None


def lookup(name: str) -> PeakSpec:
    """A table entry by key ("h100-sxm"), canonical name ("H100 SXM") or reported name, any case."""
    wanted = normalize_name(name)
    for spec in table():
        if wanted in (normalize_name(spec.key), normalize_name(spec.name)):
            return replace(spec, reason=f"selected as {name!r}")
    found = match(name)
    if found is None:
        keys = ", ".join(spec.key for spec in table())
        raise ValueError(f"unknown GPU {name!r}; valid keys: {keys}")
    return found


# ------------------------------------------------------------------------------ derivation


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


# ------------------------------------------------------------------------------ the device's spec


def resolve(facts: DeviceFacts) -> PeakSpec | None:
    """The spec MFU/MBU are measured against: the datasheet entry, else a derivation, else None."""
    if facts.kind == "cpu":
        return None
    return match(facts.name) or derive(facts)


def explain(facts: DeviceFacts) -> list[str]:
    """Human lines on how the device's peaks were found, for `mfu gpus --detect`."""
    lines = [f"reported name:   {facts.name!r}"]
    if facts.kind == "cpu":
        return lines + ["peaks:           none for a CPU; MFU and MBU stay empty"]
    lines.append(f"normalised name: {normalize_name(facts.name)!r}")
    spec = match(facts.name)
    if spec is not None:
        lines.append(f"table entry:     {spec.name} (key {spec.key}), {spec.reason}")
    else:
        lines.append("table entry:     none; no pattern in gpus.yaml matches the normalised name")
        spec = derive(facts)
        if spec is None:
            why = f"not possible for vendor {facts.vendor!r}; MFU and MBU stay empty"
            return lines + [f"derivation:      {why}"]
        for i, part in enumerate(spec.reason.split("; ")):
            lines.append(f"{'derivation:' if i == 0 else '':<17}{part}")
    return lines + _describe(spec, facts)


def _describe(spec: PeakSpec, facts: DeviceFacts) -> list[str]:
    if spec.peaks_tflops:
        peaks = " | ".join(f"{dtype} {value:g}" for dtype, value in spec.peaks_tflops.items())
        peak_line = f"dense peaks:     {peaks} TFLOPS (int8: TOPS)"
    else:
        peak_line = "dense peaks:     none; MFU stays empty"
    if spec.bandwidth_tbs is not None:
        bandwidth_line = f"bandwidth:       {spec.bandwidth_tbs:g} TB/s"
    else:
        bandwidth_line = "bandwidth:       none; MBU stays empty"
    lines = [peak_line, bandwidth_line]
    if spec.origin == "datasheet":
        device, boost = facts.max_sm_clock_mhz, spec.boost_mhz
        clocks = f"device max SM {f'{device} MHz' if device else 'unknown'}; "
        clocks += f"datasheet boost {f'{boost} MHz' if boost else 'unpublished'}"
        lines.append(f"clocks:          {clocks}")
    return lines + [f"source:          {spec.source}"]
