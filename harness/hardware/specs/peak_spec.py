"""PeakSpec: one GPU part's peak rates and sizes, the denominators of MFU, MBU and link_util.

A spec comes from the datasheet table (gpu_table.py, origin "datasheet") or is derived from the
device's own facts (derivation.py, origin "derived"); `reason` says which and how.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
