"""A run directory on disk: cases.jsonl (appended per case), results.csv, meta.json, summary.md,
and samples.jsonl (each measured case's raw sample times, for significance tests).

cases.jsonl is the source of truth: one JSON object per finished case, flushed as it finishes,
so a crash or Ctrl-C loses at most the case in flight. results.csv and summary.md are rebuilt
from it. Reading back keeps the last row per case_id, so a resumed run may re-run a case.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

# The results contract (DESIGN.md): these columns, in this order, on every row; workload
# parameter columns go after `dtype`, workload extras at the end.
LEAD = ["case_id", "workload", "backend", "dtype"]
MEASURED = ["status", "reason", "flops", "bytes", "time_ms", "time_ms_q1", "time_ms_q3", "samples",
            "tflops", "gbps", "mfu", "mbu", "intensity", "bound", "roofline", "device"]
EXTRA = ["roofline_ms", "noise", "peak_source", "mfu_ceiling", "mbu_ceiling", "exp_util", "limit",
         "sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c", "energy_j", "throttle",
         "mfu_at_clock", "peak_clock_mhz", "throttled"]
FAILED = ("error", "mismatch", "suspect")  # statuses that make `mfu run` exit 1


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cases_file = self.path / "cases.jsonl"

    def append(self, row: dict) -> None:
        with self.cases_file.open("a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
            f.flush()

    def append_samples(self, case_id: str, samples_ms: list[float], pass_index: int | None = None) -> None:
        """Keep a case's raw sample times (6 significant digits) for later significance tests."""
        line = {"case_id": case_id, "samples_ms": [float(f"{x:.6g}") for x in samples_ms]}
        if pass_index is not None:
            line["pass"] = pass_index
        with (self.path / "samples.jsonl").open("a") as f:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")

    def samples(self) -> dict[str, list[float]]:
        """Raw sample times per case_id: all passes pooled (the last record of each pass)."""
        path = self.path / "samples.jsonl"
        if not path.exists():
            return {}
        by_pass: dict[str, dict] = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_pass.setdefault(row["case_id"], {})[row.get("pass", 0)] = row["samples_ms"]
        return {case_id: [x for p in sorted(passes) for x in passes[p]] for case_id, passes in by_pass.items()}

    def rows(self) -> list[dict]:
        """Finished rows, the last per (case_id, pass), in first-seen order."""
        if not self.cases_file.exists():
            return []
        latest: dict[tuple, dict] = {}
        for line in self.cases_file.read_text().splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that case simply runs again
                latest[(row["case_id"], row.get("pass", 0))] = row
        return list(latest.values())

    def write_meta(self, meta: dict) -> None:
        (self.path / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    def read_meta(self) -> dict:
        meta = self.path / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else {}

    def write_csv(self, rows: list[dict], param_columns: list[str]) -> Path:
        columns = columns_for(rows, param_columns)
        out = self.path / "results.csv"
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
        return out


def columns_for(rows: list[dict], param_columns: list[str]) -> list[str]:
    fixed = LEAD + param_columns + MEASURED + EXTRA
    extras = [k for row in rows for k in row if k not in fixed]
    return fixed + list(dict.fromkeys(extras))


def _clean(row: dict) -> dict:
    """JSON has no NaN or infinity: store them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
