"""Finding a table entry by name: a device's reported name (`match`) or a user's choice (`lookup`).

A reported name ("NVIDIA H100 80GB HBM3") is normalised (gpu_table.normalize_name) and searched
with each entry's patterns; the first entry in file order with a matching pattern wins, so H20
never matches H200. `lookup` serves `mfu plan --gpu NAME` and `mfu gpus KEY`: a key, a canonical
name or a reported name, in any case.
"""

from __future__ import annotations

from dataclasses import replace

from harness.hardware.specs.gpu_table import entries, normalize_name, table
from harness.hardware.specs.peak_spec import PeakSpec


def match(device_name: str) -> PeakSpec | None:
    """The datasheet entry for a reported device name, with the pattern that matched, or None."""
    normalised = normalize_name(device_name)
    for entry in entries():
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
