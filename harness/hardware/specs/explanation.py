"""The account `mfu gpus --detect` prints: how the device's peaks were found, step by step.

The reported and normalised name, the table entry and the pattern that matched it, or else the
derivation's arithmetic, then the peaks, the bandwidth, the links, the clocks and the sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hardware.specs.derivation import derive
from harness.hardware.specs.gpu_table import normalize_name
from harness.hardware.specs.name_matching import match
from harness.hardware.specs.peak_spec import PeakSpec

if TYPE_CHECKING:  # annotations only: DeviceFacts' module imports torch
    from harness.hardware.device import DeviceFacts


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
    lines = [peak_line, bandwidth_line, _links_line(spec)]
    if spec.origin == "datasheet":
        device, boost = facts.max_sm_clock_mhz, spec.boost_mhz
        clocks = f"device max SM {f'{device} MHz' if device else 'unknown'}; "
        clocks += f"datasheet boost {f'{boost} MHz' if boost else 'unpublished'}"
        lines.append(f"clocks:          {clocks}")
    lines.append(f"source:          {spec.source}")
    return lines + ([f"links source:    {spec.links_source}"] if spec.links_source else [])


def _links_line(spec: PeakSpec) -> str:
    """The interconnect figures link_util is measured against, per GPU and direction."""
    if spec.nvlink_gbs is None and spec.network_gbs is None:
        return "links:           none known; link_util has no denominator"
    shown = [f"{name} {f'{value:g} GB/s' if value is not None else 'unknown'}"
             for name, value in (("NVLink", spec.nvlink_gbs), ("network", spec.network_gbs))]
    return f"links:           {', '.join(shown)} (per GPU and direction)"
