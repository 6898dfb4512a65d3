"""Every result column, defined once: its name, unit, kind, display format and header, how it pools
across the passes of `--repeat` (and, later, across ranks), and how soon a narrow table drops it.

results.csv, summary.md, the console tables, compare, history, export and the pytest plugin all
take their columns from here, so a new metric is one entry. Workload parameters are columns too,
but each workload declares its own (harness/workloads/*.py `params`); `param()` gives them the
same shape. A column this registry does not know (a workload's extra) is rendered as plain text.

kind:     identity (which case) | param (the problem) | status | formula (known before timing) |
          timing (from the samples) | metric (derived from the median time) | ceiling (against a
          measured ceiling) | clock | telemetry (NVML while timed) | note
pools:    how rows of several passes (or ranks) of one case combine: "samples" (recomputed from the
          pooled raw samples), "same" (equal in every pass), "min", "max", "mean", "sum", "union"
          (of comma-separated names), "worst" (of statuses), "any" (a boolean) or "first"
priority: 0 always shown; higher numbers go first when a table must drop columns to fit
"""

from __future__ import annotations

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
COLUMNS: tuple[Column, ...] = (
    # identity
    _C("case_id", "identity", priority=9, doc="workload:dtype:params:backend, stable across runs"),
    _C("workload", "identity", priority=8),
    _C("backend", "identity", priority=0),
    _C("dtype", "identity", priority=1),
    # status
    _C("status", "status", pools="worst", priority=0, doc="ok | skipped | error | mismatch | suspect"),
    _C("reason", "status", priority=6, doc="why a row is not ok, or a note on an ok row"),
    # formulas: known before timing
    _C("flops", "formula", "FLOP", "{:.4g}", "FLOP", "same", 7, "useful FLOPs (workload formula)"),
    _C("bytes", "formula", "B", "{:.4g}", "bytes", "same", 7, "minimum bytes moved (workload formula)"),
    _C("intensity", "formula", "FLOP/B", "{:.4g}", "FLOP/B", "same", 6),
    _C("bound", "formula", None, "{}", "bound", "same", 5, "compute or memory, by the roofline ridge"),
    _C("roofline_ms", "formula", "ms", "{:.4g}", "roofline ms", "same", 6, "fastest time the roofline allows"),
    # timing
    _C("time_ms", "timing", "ms", "{:.4g}", "ms", "samples", 0, "median sample time"),
    _C("time_ms_q1", "timing", "ms", "{:.4g}", "q1 ms", "samples", 8),
    _C("time_ms_q3", "timing", "ms", "{:.4g}", "q3 ms", "samples", 8),
    _C("samples", "timing", None, "{}", "n", "samples", 7),
    _C("noise", "timing", "fraction", "{:.1%}", "±", "samples", 4, "relative 95% CI of the median"),
    _C("drift", "timing", "fraction", "{:.1%}", "drift", "samples", 4, "spread of pass medians over the median"),
    _C("passes", "timing", None, "{}", "passes", "sum", 8),
    # metrics from the median time
    _C("tflops", "metric", "TFLOPS", "{:.4g}", "TFLOPS", "samples", 0),
    _C("gbps", "metric", "GB/s", "{:.4g}", "GB/s", "samples", 0),
    _C("mfu", "metric", "fraction", "{:.1%}", "MFU", "samples", 0, "achieved FLOP/s over the datasheet peak"),
    _C("mbu", "metric", "fraction", "{:.1%}", "MBU", "samples", 0, "achieved B/s over the datasheet bandwidth"),
    _C("roofline", "metric", "fraction", "{:.1%}", "roofline", "samples", 3, "roofline_ms / time_ms"),
    # against measured ceilings
    _C("mfu_ceiling", "ceiling", "fraction", "{:.1%}", "MFU/ceil", "samples", 3),
    _C("mbu_ceiling", "ceiling", "fraction", "{:.1%}", "MBU/ceil", "samples", 3),
    _C("exp_util", "ceiling", "fraction", "{:.1%}", "exp util", "samples", 4),
    _C("limit", "ceiling", None, "{}", "limit", "samples", 4, "the unit the case uses most of"),
    _C("exps", "formula", None, "{:.4g}", "exps", "same", 9, "softmax exponentials per call"),
    _C("new_best", "note", None, "{}", "new best", "first", 6, "a ceiling this row raised"),
    # clocks
    _C("mfu_at_clock", "clock", "fraction", "{:.1%}", "MFU@clock", "samples", 2,
       "mfu x peak_clock_mhz / sm_clock_mhz"),
    _C("peak_clock_mhz", "clock", "MHz", "{:.0f}", "peak MHz", "same", 9, "the SM clock the peak assumes"),
    _C("throttled", "clock", None, "{}", "throttled", "any", 2, "the clock fell far enough to matter"),
    # telemetry
    _C("sm_clock_mhz", "telemetry", "MHz", "{:.0f}", "SM MHz", "min", 5, "median SM clock while timed"),
    _C("mem_clock_mhz", "telemetry", "MHz", "{:.0f}", "mem MHz", "min", 8),
    _C("power_w", "telemetry", "W", "{:.0f}", "W", "mean", 6),
    _C("temp_c", "telemetry", "°C", "{:.0f}", "°C", "max", 7),
    _C("energy_j", "telemetry", "J", "{:.4g}", "J", "sum", 8),
    _C("throttle", "telemetry", None, "{}", "clock reasons", "union", 7, "raw clock-event reasons seen"),
    # where the numbers come from
    _C("device", "note", None, "{}", "device", "same", 9),
    _C("peak_source", "note", None, "{}", "peak", "same", 9, "datasheet or derived"),
    _C("log_tail", "note", None, "{}", "log", "first", 9, "a failed worker's last output lines"),
)

BY_NAME = {c.name: c for c in COLUMNS}


def get(name: str) -> Column:
    """The registered column, or a plain-text one for a name this registry does not know."""
    return BY_NAME.get(name) or Column(name, "extra")


def param(name: str) -> Column:
    """A workload parameter as a column."""
    return Column(name, "param", priority=1)
