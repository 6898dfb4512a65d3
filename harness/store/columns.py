"""Every result column, defined once: its name, unit, kind, display format and header, how it pools
across the passes of `--repeat` (and, later, across ranks), and how soon a narrow table drops it.

results.csv, summary.md, the console tables, compare, history, export and the pytest plugin all
take their columns from here, so a new metric is one entry. Workload parameters are columns too,
but each workload declares its own (harness/workloads/*.py `params`); `param()` gives them the
same shape. A column this registry does not know (a workload's extra) is rendered as plain text.

kind:     identity (which case) | param (the problem) | status | formula (known before timing) |
          timing (from the samples) | metric (derived from the median time) | ceiling (against a
          measured ceiling) | clock | telemetry (NVML while timed) | note | placement (the rank and
          host a row ran on, and how it compares with the other ranks) | extra (a workload's or
          backend's own column, unknown here)
type:     float | int | bool | str, how a reader types the column (harness/store/frames.py); None: infer it
pools:    how rows of several passes (or ranks) of one case combine: "samples" (recomputed from the
          pooled raw samples), "same" (equal in every pass), "min", "max", "mean", "sum", "union"
          (of comma-separated names), "worst" (of statuses), "any" (a boolean) or "first"
priority: 0 always shown; higher numbers go first when a table must drop columns to fit
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    unit: str | None = None
    fmt: str = "{}"  # str.format pattern for one cell
    header: str | None = None  # short table header (default: the name)
    pools: str = "first"
    priority: int = 5
    doc: str = ""
    type: str | None = "float"

    @property
    def title(self) -> str:
        return self.header or self.name

    def cell(self, value) -> str:
        """The value as table text: empty for None, yes/no-empty for booleans, else fmt."""
        if value is None or value == "":
            return ""
        if isinstance(value, bool):
            return "yes" if value else ""
        if self.fmt == "{}" and isinstance(value, float):
            return f"{value:.4g}"  # an unregistered number: 4 significant digits
        try:
            return self.fmt.format(value)
        except (ValueError, TypeError):
            return str(value)


_C = Column
# In results.csv's order: identity, the workload parameters (inserted after `dtype`), then the rest
# as listed. The order is a contract readers rely on: a new column goes at the end.
COLUMNS: tuple[Column, ...] = (
    # identity
    _C("case_id", "identity", priority=9, doc="workload:dtype:params:backend, stable across runs", type="str"),
    _C("workload", "identity", priority=8, type="str"),
    _C("backend", "identity", priority=0, type="str"),
    _C("dtype", "identity", priority=1, type="str"),
    # (workload parameters go here)
    _C("status", "status", pools="worst", priority=0, doc="ok | skipped | error | mismatch | suspect", type="str"),
    _C("reason", "status", priority=6, doc="why a row is not ok, or a note on an ok row", type="str"),
    _C("flops", "formula", "FLOP", "{:.4g}", "FLOP", "same", 7, "useful FLOPs (workload formula)", type="int"),
    _C("bytes", "formula", "B", "{:.4g}", "bytes", "same", 7, "minimum bytes moved (workload formula)", type="int"),
    _C("time_ms", "timing", "ms", "{:.4g}", "ms", "samples", 0, "median sample time"),
    _C("time_ms_q1", "timing", "ms", "{:.4g}", "q1 ms", "samples", 8),
    _C("time_ms_q3", "timing", "ms", "{:.4g}", "q3 ms", "samples", 8),
    _C("samples", "timing", None, "{}", "n", "samples", 7, type="int"),
    _C("tflops", "metric", "TFLOPS", "{:.4g}", "TFLOPS", "samples", 0),
    _C("gbps", "metric", "GB/s", "{:.4g}", "GB/s", "samples", 0),
    _C("mfu", "metric", "fraction", "{:.1%}", "MFU", "samples", 0, "achieved FLOP/s over the datasheet peak"),
    _C("mbu", "metric", "fraction", "{:.1%}", "MBU", "samples", 0, "achieved B/s over the datasheet bandwidth"),
    _C("intensity", "formula", "FLOP/B", "{:.4g}", "FLOP/B", "same", 6),
    _C("bound", "formula", None, "{}", "bound", "same", 5, "compute or memory, by the roofline ridge", type="str"),
    _C("roofline", "metric", "fraction", "{:.1%}", "roofline", "samples", 3, "roofline_ms / time_ms"),
    _C("device", "note", None, "{}", "device", "same", 9, type="str"),
    _C("roofline_ms", "formula", "ms", "{:.4g}", "roofline ms", "same", 6, "fastest time the roofline allows"),
    _C("noise", "timing", "fraction", "{:.1%}", "±", "samples", 4, "relative 95% CI of the median"),
    _C("peak_source", "note", None, "{}", "peak", "same", 9, "datasheet or derived", type="str"),
    # against measured ceilings
    _C("mfu_ceiling", "ceiling", "fraction", "{:.1%}", "MFU/ceil", "samples", 3),
    _C("mbu_ceiling", "ceiling", "fraction", "{:.1%}", "MBU/ceil", "samples", 3),
    _C("exp_util", "ceiling", "fraction", "{:.1%}", "exp util", "samples", 4),
    _C("limit", "ceiling", None, "{}", "limit", "samples", 4, "the unit the case uses most of", type="str"),
    # telemetry (NVML while timed)
    _C("sm_clock_mhz", "telemetry", "MHz", "{:.0f}", "SM MHz", "min", 5, "median SM clock while timed"),
    _C("mem_clock_mhz", "telemetry", "MHz", "{:.0f}", "mem MHz", "min", 8),
    _C("power_w", "telemetry", "W", "{:.0f}", "W", "mean", 6),
    _C("temp_c", "telemetry", "°C", "{:.0f}", "°C", "max", 7),
    _C("energy_j", "telemetry", "J", "{:.4g}", "J", "sum", 8),
    _C("throttle", "telemetry", None, "{}", "clock reasons", "union", 7, "raw clock-event reasons seen", type="str"),
    # clocks
    _C("mfu_at_clock", "clock", "fraction", "{:.1%}", "MFU@clock", "samples", 2,
       "mfu x peak_clock_mhz / sm_clock_mhz"),
    _C("peak_clock_mhz", "clock", "MHz", "{:.0f}", "peak MHz", "same", 9, "the SM clock the peak assumes"),
    _C("throttled", "clock", None, "{}", "throttled", "any", 2, "the clock fell far enough to matter", type="bool"),
    # present on some rows only
    _C("drift", "timing", "fraction", "{:.1%}", "drift", "samples", 4, "spread of pass medians over the median"),
    _C("passes", "timing", None, "{}", "passes", "sum", 8, type="int"),
    _C("exps", "formula", None, "{:.4g}", "exps", "same", 9, "softmax exponentials per call"),
    _C("new_best", "note", None, "{}", "new best", "first", 6, "a ceiling this row raised", type="str"),
    _C("log_tail", "note", None, "{}", "log", "first", 9, "a failed worker's last output lines", type="str"),
    # where a row ran: every row has them; a distributed run has one row per rank for a single-GPU
    # case, and one row (its slowest rank's) for a collective (harness/distributed)
    _C("rank", "placement", None, "{}", "rank", "first", 3, "the rank (GPU) the row was measured on", type="int"),
    _C("local_rank", "placement", None, "{}", "local rank", "first", 6, "the GPU's index on its host", type="int"),
    _C("host", "placement", None, "{}", "host", "same", 6, type="str"),
    _C("world_size", "placement", None, "{}", "ranks", "same", 7, "ranks that ran the case at once", type="int"),
    # a collective's rates over the interconnect (harness/workloads/comm.py), as nccl-tests defines them
    _C("algbw_gbps", "metric", "GB/s", "{:.4g}", "algbw GB/s", "samples", 0, "bytes / time (a layer's: comm_bytes / comm_ms)"),
    _C("busbw_gbps", "metric", "GB/s", "{:.4g}", "busbw GB/s", "samples", 0,
       "algbw x the op's nccl-tests factor: comparable to the link's bandwidth"),
    _C("link_util", "metric", "fraction", "{:.1%}", "link util", "samples", 0,
       "busbw over the GPU's NVLink (in a node) or network (across nodes) bandwidth per direction"),
    _C("link_note", "note", None, "{}", "link note", "first", 6,
       "why a collective has no link_util (one rank measures no interconnect; no link bandwidth known)", type="str"),
    # how a rank compares with the others on a single-GPU case (harness/present/ranks.py): on each
    # rank's row, then on the one row per case that `by_case` pools the ranks into
    _C("vs_median", "placement", "fraction", "{:+.1%}", "vs median", "first", 4,
       "this rank's time over the median of the case's ranks, minus 1 (+ is slower)"),
    _C("straggler", "placement", None, "{}", "straggler", "any", 3,
       "slower than the case's median rank by more than the straggler threshold (default 5%)", type="bool"),
    _C("ranks", "placement", None, "{}", "rank rows", "first", 7, "rank rows pooled into this case row",
       type="int"),
    _C("slowest_rank", "placement", None, "{}", "slowest", "first", 5, "the rank with the longest time",
       type="int"),
    _C("slowest_host", "placement", None, "{}", "slowest host", "first", 6, "the slowest rank's host",
       type="str"),
    _C("spread", "placement", "fraction", "{:.1%}", "spread", "first", 4,
       "(max - min) / median of the ranks' times"),
    _C("stragglers", "placement", None, "{}", "stragglers", "union", 3,
       "the ranks called stragglers, comma-separated", type="str"),
    # a layer split over ranks (tp-linear, ep-moe), timed in three phases (workloads/overlap_model.py);
    # its time_ms is overlapped_ms and algbw/busbw/link_util are its communication phase's
    _C("compute_ms", "timing", "ms", "{:.4g}", "compute ms", "mean", 0, "the compute alone, no communication"),
    _C("comm_ms", "timing", "ms", "{:.4g}", "comm ms", "mean", 0, "the communication alone, the same bytes"),
    _C("overlapped_ms", "timing", "ms", "{:.4g}", "overlapped ms", "mean", 2,
       "both, in chunks: chunk i's communication overlapping chunk i+1's compute"),
    _C("compute_comm_ratio", "metric", None, "{:.3g}", "compute/comm", "first", 0,
       "compute_ms / comm_ms: below 1 the layer waits on its links"),
    _C("overlap_eff", "metric", "fraction", "{:.0%}", "overlap", "first", 1,
       "(compute_ms + comm_ms - overlapped_ms) / min(compute_ms, comm_ms): the share overlap hides"),
    _C("exposed_comm_ms", "metric", "ms", "{:.4g}", "exposed ms", "first", 3,
       "overlapped_ms - compute_ms: the communication overlap did not hide"),
    _C("comm_bytes", "formula", "B", "{:.4g}", "comm bytes", "same", 6,
       "bytes the rank sends per call (nccl-tests sizes of its collectives)", type="int"),
)
IDENTITY = tuple(c.name for c in COLUMNS if c.kind == "identity")  # parameters follow these in results.csv

BY_NAME = {c.name: c for c in COLUMNS}


def get(name: str) -> Column:
    """The registered column, or a plain-text one for a name this registry does not know."""
    return BY_NAME.get(name) or Column(name, "extra", type=None)


def param(name: str) -> Column:
    """A workload parameter as a column (typed by its values: ints, booleans or text)."""
    return Column(name, "param", priority=1, type=None)


def csv_order(params: list[str], rows: list[dict] = ()) -> list[str]:
    """results.csv's columns: identity, parameters, every registered column, then the extras the
    rows hold (a workload's or backend's own columns) in first-seen order."""
    fixed = [*IDENTITY, *params, *(c.name for c in COLUMNS if c.kind != "identity")]
    extras = [k for row in rows for k in row if k not in fixed]
    return fixed + list(dict.fromkeys(extras))


def _union(values) -> str:
    return ",".join(dict.fromkeys(n for v in values for n in (v or "").split(",") if n))


# Statuses from the worst to the best: a case pooled from passes or ranks takes the worst one's.
WORST_FIRST = ("error", "mismatch", "suspect", "skipped", "ok")


def worst(statuses) -> str:
    return min(statuses, key=WORST_FIRST.index)


POOLS = {"min": min, "max": max, "mean": statistics.fmean, "sum": sum, "any": any, "union": _union,
         "worst": worst}


def pooled(rows: list[dict], kind: str) -> dict:
    """One value per column of `kind` across rows of one case (its passes, later its ranks), by
    each column's `pools`; columns no row has are left out. Only the simple poolings apply here:
    "samples" columns are recomputed from the pooled samples, "same" and "first" are taken as they
    are."""
    out = {}
    for c in COLUMNS:
        if c.kind != kind or c.pools not in POOLS:
            continue
        values = [r[c.name] for r in rows if r.get(c.name) is not None]
        if values:
            out[c.name] = POOLS[c.pools](values)
    return out
