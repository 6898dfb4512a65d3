"""The datasheet peak table: gpus.yaml (shipped inside the package), loaded and validated once.

Each entry becomes a `PeakSpec` (origin "datasheet") with the compiled regular expressions of its
`match` field. A broken entry raises ValueError naming the entry and the field (`gpus.yaml entry 3
(h100-sxm): bandwidth_tbs: ...`); the conventions of every field are written in gpus.yaml's header.
Patterns see names in the form `normalize_name` gives, which name_matching.py applies to a
device's reported name.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import NamedTuple

import yaml

from harness.hardware.specs.peak_spec import PeakSpec
from harness.measure.dtype_names import PEAK_KEYS

_REQUIRED = ("name", "key", "match", "arch", "peaks_tflops", "bandwidth_tbs", "memory_gb", "source")
_OPTIONAL = ("sms", "boost_mhz", "l2_mb", "notes", "nvlink_gbs", "network_gbs", "links_source")
_BANDWIDTH_RANGE_TBS = (0.05, 50.0)  # catches GB/s or B/s written where TB/s is meant
# Link figures in GB/s per direction. Gb/s written where GB/s is meant reads 8x high: a 400 Gb/s NIC
# as 400 (not 50), NVLink 4's 450 GB/s as 3600; TB/s reads 1000x low.
_LINK_RANGES_GBS = {"nvlink_gbs": (10.0, 2500.0), "network_gbs": (1.0, 200.0)}


class Entry(NamedTuple):
    """A table entry: its spec and the compiled patterns of its `match` field."""

    spec: PeakSpec
    patterns: tuple[re.Pattern, ...]


def normalize_name(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb': the form gpus.yaml's patterns see."""
    text = re.sub(r"[\s_-]+", " ", name.lower()).strip()
    return re.sub(r"^(nvidia|amd) ", "", text)


def table() -> list[PeakSpec]:
    """Every datasheet entry of gpus.yaml, in file order."""
    return [entry.spec for entry in entries()]


@functools.cache
def entries() -> tuple[Entry, ...]:
    """The parsed table, read once per process."""
    text = (resources.files("harness.hardware") / "gpus.yaml").read_text(encoding="utf-8")
    return parse(yaml.safe_load(text))


def parse(raw: object) -> tuple[Entry, ...]:
    """Validate the loaded YAML; a broken entry raises ValueError naming the entry and the field."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("gpus.yaml: expected a non-empty list of GPU entries")
    parsed = tuple(_parse_entry(i, item) for i, item in enumerate(raw))
    seen: dict[str, int] = {}
    for i, entry in enumerate(parsed):
        spec = entry.spec
        for ident in (spec.key, normalize_name(spec.key), normalize_name(spec.name)):
            if seen.setdefault(ident, i) != i:
                where = f"gpus.yaml entry {i} ({spec.key})"
                raise ValueError(f"{where}: key/name {ident!r} repeats entry {seen[ident]}")
    return parsed


def _parse_entry(i: int, item: object) -> Entry:
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
        links_source=_links_source(item, fail),
        **{field: _link_rate(item.get(field), fail, field) for field in _LINK_RANGES_GBS},
    )
    return Entry(spec, _patterns(item["match"], fail))


def _link_rate(value: object, fail, field: str) -> float | None:
    """An interconnect figure in GB/s per GPU and direction, or None; implausible values refused."""
    rate = _optional_positive(value, fail, field)
    low, high = _LINK_RANGES_GBS[field]
    if rate is not None and not low <= rate <= high:
        raise fail(field, f"{rate} is not a plausible GB/s figure per direction ({low:g}..{high:g}; "
                          "Gb/s must be divided by 8, bidirectional figures by 2)")
    return rate


def _links_source(item: dict, fail) -> str:
    """The URLs (space-separated) the link figures come from: required with a figure, refused without."""
    text = item.get("links_source") or ""
    has_figure = any(item.get(field) is not None for field in _LINK_RANGES_GBS)
    if not isinstance(text, str):
        raise fail("links_source", "must be a string of URLs separated by spaces")
    if has_figure and not text.strip():
        raise fail("links_source", "missing: nvlink_gbs or network_gbs needs the URL it comes from")
    if text.strip() and not has_figure:
        raise fail("links_source", "given without nvlink_gbs or network_gbs")
    for url in text.split():
        if not url.startswith(("https://", "http://")):
            raise fail("links_source", f"must be URLs separated by spaces (got {url!r})")
    return " ".join(text.split())


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
