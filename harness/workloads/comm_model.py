"""Collective bandwidth, one place for its formulas: nccl-tests' algbw and busbw, link utilization,
and the α-β model that `mfu plan` (and the compute/communication planning of issue 15) predicts with.

For an op over n ranks on an array of `size` bytes (nccl-tests' "size": the whole array; for
all_gather the gathered output, for reduce_scatter the input before scattering, for all_to_all each
rank's send buffer), nccl-tests doc/PERFORMANCE.md defines

    algbw = size / time
    busbw = algbw × factor(op, n):  all_reduce 2(n−1)/n;  all_gather, reduce_scatter, all_to_all
            (n−1)/n;  broadcast, send_recv 1

so that busbw of every op is comparable with the bandwidth of the slowest link of a ring, whatever n.
link_util = busbw / the link's bandwidth per GPU and per direction: NVLink inside a node, the
network (the GPU's share of its node's NICs) when the ranks span nodes. Per direction, because a
ring sends and receives at once on every link: its busbw tops out at one direction's rate (NVLink 4
on H100/H200: 450 GB/s of the 900 GB/s "bidirectional" datasheet figure). NVLink SHARP (NVLS)
reduces inside the switch and can pass that bound (busbw 473 GB/s measured on 8×H200), so a
link_util above 1 is reported as measured, never flagged. A single rank moves nothing over a
link: its busbw and link_util stay empty.

The α-β model: time = α(op, n) + size × factor(op, n) / B, with B the link bandwidth above and
α(op, n) = base + steps(op, n) × hop, the latency of NCCL's ring algorithm. The constants are
NCCL's own tuning model (src/graph/tuning.cc, NCCL 2.18-2.19: baseLat and hwLat for Ring with the
LL protocol, the one NCCL picks for the small messages where latency dominates). They are
assumptions for any other NCCL version, and the ring is pessimistic where NCCL picks a tree or
NVLS (many nodes, small messages; all_reduce on an NVSwitch node).
"""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")
SPLIT_OPS = ("all_gather", "reduce_scatter", "all_to_all")  # size is split into n equal chunks
REDUCTIONS = ("all_reduce", "reduce_scatter")  # ops that add, rather than move, values


def size_problem(op: str, size: int, element: int, n: int) -> str | None:
    """Why an array of `size` bytes of `element`-byte values cannot be run over n ranks, or None:
    every rank holds whole elements, and the ops that split the array need n equal chunks."""
    if size % element:
        return f"size must be a multiple of the element size ({element} B), got {size}"
    if op in SPLIT_OPS and size % (n * element):
        return (f"{op} splits the array over {n} ranks: size must be a multiple of {n} x {element} B "
                f"= {n * element} B, got {size}")
    return None


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw / algbw for `op` over n ranks (doc/PERFORMANCE.md)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in SPLIT_OPS:
        return (n - 1) / n
    if op in ("broadcast", "send_recv"):
        return 1.0
    raise ValueError(f"unknown collective {op!r}; one of {', '.join(OPS)}")


def algbw_gbps(size: int, time_ms: float) -> float:
    """Algorithm bandwidth in GB/s (1e9 B/s, as nccl-tests prints it)."""
    return size / (time_ms / 1e3) / 1e9


def busbw_gbps(op: str, size: int, time_ms: float, n: int) -> float:
    return algbw_gbps(size, time_ms) * bus_factor(op, n)


def link(world, spec) -> tuple[str, float | None]:
    """The link a collective over `world` (harness/distributed/launch.py World) is bound by, and its
    bandwidth per GPU and direction in GB/s from the PeakSpec (None where unknown)."""
    if world.crosses_nodes:
        return "network", spec.network_gbs if spec else None
    return "NVLink", spec.nvlink_gbs if spec else None


NO_INTERCONNECT = "a single rank measures no interconnect"


def link_columns(op: str, size: int, time_ms: float, world, spec) -> dict:
    """algbw_gbps, busbw_gbps and link_util of a measured collective, and `link_note`: why
    link_util (or busbw) is empty, or None."""
    algbw = algbw_gbps(size, time_ms)
    if world.size < 2:
        return {"algbw_gbps": algbw, "busbw_gbps": None, "link_util": None, "link_note": NO_INTERCONNECT}
    busbw = algbw * bus_factor(op, world.size)
    name, bandwidth = link(world, spec)
    note = None if bandwidth else _unknown(name, spec)
    return {"algbw_gbps": algbw, "busbw_gbps": busbw, "link_util": busbw / bandwidth if bandwidth else None,
            "link_note": note}


def _unknown(link_name: str, spec) -> str:
    if spec is None:
        return "no peak table entry for this device (a CPU, or a GPU the table lacks): no link bandwidth to compare with"
    return f"the peak table has no {link_name} bandwidth for {spec.name}"


# ------------------------------------------------------------------------------ the α-β model

# NCCL src/graph/tuning.cc (2.18-2.19), in microseconds: baseLat[Ring][LL] and hwLat[NVLINK|NET][Ring][LL].
BASE_US = 6.6
HOP_US = {"NVLink": 0.6, "network": 2.7}
LATENCY_SOURCE = ("NCCL's tuning model (src/graph/tuning.cc, 2.18-2.19), ring algorithm, LL protocol: "
                  f"{BASE_US} us + steps x {HOP_US['NVLink']} us (NVLink) or {HOP_US['network']} us (network)")


def steps(op: str, n: int) -> int:
    """Sequential hops of the ring algorithm (NCCL's nsteps): all_reduce is a reduce-scatter then
    an all-gather, n−1 hops each; broadcast is pipelined along the ring; all_to_all is taken as
    n−1 pairwise exchanges; send_recv is one hop."""
    if op == "all_reduce":
        return 2 * (n - 1)
    if op in ("all_gather", "reduce_scatter", "all_to_all", "broadcast"):
        return n - 1
    if op == "send_recv":
        return 1
    raise ValueError(f"unknown collective {op!r}; one of {', '.join(OPS)}")


def latency_us(op: str, world) -> float:
    """α: the op's fixed cost over `world`, every ring hop at the rate of its slowest link."""
    name = "network" if world.crosses_nodes else "NVLink"
    return BASE_US + steps(op, world.size) * HOP_US[name]


@dataclass(frozen=True)
class Prediction:
    time_ms: float | None
    algbw_gbps: float | None
    busbw_gbps: float | None
    link: str
    note: str | None  # why there is no prediction, or None


def predict(op: str, size: int, world, spec) -> Prediction:
    """The α-β time of one op on `world` with the PeakSpec's link bandwidths, and the algbw and busbw
    a run would then report."""
    name, bandwidth = link(world, spec)
    if world.size < 2:
        return Prediction(None, None, None, name, NO_INTERCONNECT + ": plan with --nproc (and --nnodes)")
    if not bandwidth:
        return Prediction(None, None, None, name, _unknown(name, spec))
    factor = bus_factor(op, world.size)
    seconds = latency_us(op, world) / 1e6 + size * factor / (bandwidth * 1e9)
    time_ms = seconds * 1e3
    return Prediction(time_ms, algbw_gbps(size, time_ms), busbw_gbps(op, size, time_ms, world.size), name, None)
