"""The peak spec of a device: the MFU, MBU and link_util denominators.

`resolve(facts)` is the entry point; it tries three ways to a `PeakSpec`, in order:

1. the datasheet table: the device's reported name ("NVIDIA H100 80GB HBM3") matched against
   gpus.yaml's patterns (name_matching.match);
2. a derivation from the device's own facts, for an NVIDIA GPU the table does not know
   (derivation.derive);
3. nothing: a CPU, or a non-NVIDIA device the table does not know. MFU and MBU then stay empty.

The package, one job per module:
    peak_spec.py      PeakSpec, the record every other module returns
    gpu_table.py      gpus.yaml: load and validate it once (table, normalize_name)
    name_matching.py  a reported name to its entry (match), a key or name to its entry (lookup)
    derivation.py     per-SM rates by compute capability (ARCH_RATES) and derive
    explanation.py    the human account `mfu gpus --detect` prints (explain)

The names other modules use are importable from here: PeakSpec, resolve, lookup (`mfu plan
--gpu`, `mfu gpus KEY`), table (`mfu gpus`), explain and ARCH_RATES (metrics.py's clock check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.hardware.specs.derivation import ARCH_RATES, derive
from harness.hardware.specs.explanation import explain
from harness.hardware.specs.gpu_table import table
from harness.hardware.specs.name_matching import lookup, match
from harness.hardware.specs.peak_spec import PeakSpec

if TYPE_CHECKING:  # annotations only: DeviceFacts' module imports torch
    from harness.hardware.device import DeviceFacts

__all__ = ["ARCH_RATES", "PeakSpec", "explain", "lookup", "resolve", "table"]


def resolve(facts: DeviceFacts) -> PeakSpec | None:
    """The spec MFU/MBU are measured against: the datasheet entry, else a derivation, else None."""
    if facts.kind == "cpu":
        return None
    return match(facts.name) or derive(facts)
