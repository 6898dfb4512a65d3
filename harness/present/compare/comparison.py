"""What a comparison holds (Comparison), and the grouping helpers within-run and between-runs share."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.present.tables import Table
from harness.store import runs as runs_mod
from harness.store.ids import problem
from harness.store.runs import Run

# How each run after the first is compared with it: a code (csv, json) and its words (tables).
MODES = {"same-device": "same device: verdicts", "same-model": "same model, another card: verdicts",
         "cross-device": "another device: TFLOPS and MFU ratios"}


@dataclass
class Comparison:
    """A comparison's result: the tables a person reads, and the records csv and json carry."""

    tables: list[Table]
    records: list[dict]  # one per case (and per compared run): what csv and json carry
    summary: list[dict]  # geometric means per workload and backend
    runs: list[dict] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)  # e.g. runs timed with other settings than A

    @property
    def regressions(self) -> list[dict]:
        return [r for r in self.records if r.get("verdict") in ("slower", "failed")]


def bucket(rows: list[dict], key) -> dict:
    """{key(row): [rows]}, in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def by_workload(rows: list[dict]) -> dict[str, list[dict]]:
    """{workload: [rows]}, in first-seen order."""
    return bucket(rows, lambda r: r["workload"])


def group(rows: list[dict], inner, key=None) -> dict:
    """{outer key: {inner key: row}}, outer by problem (or `key`), in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault((key or problem)(r), {})[inner(r)] = r
    return out


def identity(row: dict) -> dict:
    """The fields that name a case in every record."""
    return {k: row.get(k) for k in ("case_id", "workload", "backend", "dtype")}


def describe_run(run: Run, tag: str, name: str) -> dict:
    """A run as the comparison's `runs` list (json) and the legend table show it."""
    return {"tag": tag, "name": name, "path": str(run.path), "device": run.device_name,
            "versions": run.versions(), "started": run.started,
            "timing": {k: run.timing.get(k) for k in runs_mod.TIMING_SETTINGS}}
