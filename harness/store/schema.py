"""What a run directory's columns mean, stored in its meta.json so reading a run needs no live code.

meta.json's `schema` lists every column of results.csv (name, unit, kind, type), and per workload
present its parameter columns, its baseline backend and the extra columns its summary shows; per
dtype present, the datasheet peak key it is measured against. The runner writes it from the
workload registry (`build`); readers (compare, history, report, export, claims, summary and
harness.load_run) take it from here and never import torch, a workload or a backend.

A run written before the schema existed still reads: `infer` rebuilds one from results.csv's header
(or cases.jsonl's key order), where the parameters are the columns between `dtype` and `status`,
and the rest comes from the column registry and a small static table, with a one-line notice.
"""

from __future__ import annotations

import sys

from harness.store import columns

VERSION = 1
# For runs written before meta.json had a schema: what the workloads declared then.
LEGACY_WORKLOADS = {
    "gemm": {"baseline": "torch", "summary_columns": []},
    "moe": {"baseline": "dense-equivalent", "summary_columns": ["experts_active", "expert_tokens_max",
                                                                "flops_executed"]},
    "attention": {"baseline": "sdpa-flash", "summary_columns": ["splits"]},
    "block": {"baseline": "eager", "summary_columns": ["params_active", "experts_active"]},
}


def build(workloads: dict[str, dict], peak_keys: dict[str, str], rows: list[dict] = ()) -> dict:
    """The schema of a run: `workloads` maps each workload present to {params, baseline,
    summary_columns}; `peak_keys` each dtype present to its peak key; `rows` add their extras."""
    params = list(dict.fromkeys(p for w in workloads.values() for p in w["params"]))
    return {"version": VERSION, "columns": [_describe(n, params) for n in columns.csv_order(params, rows)],
            "workloads": workloads, "peak_keys": peak_keys}


def _describe(name: str, params: list[str]) -> dict:
    c = columns.param(name) if name in params else columns.get(name)
    return {"name": name, "unit": c.unit, "kind": c.kind, "type": c.type}


def infer(header: list[str], rows: list[dict], where: str, quiet: bool = False) -> dict:
    """A schema for a run without one: parameters are the header's columns between dtype and
    status. Says so in one line on stderr unless `quiet` (a file that never had one)."""
    if not quiet:
        print(f"mfu: note: {where}: meta.json has no column schema (a run from before it was recorded); "
              "inferred it from the columns", file=sys.stderr)
    try:
        params = header[header.index("dtype") + 1: header.index("status")]
    except ValueError:
        params = []
    workloads = {}
    for wl in dict.fromkeys(r.get("workload") for r in rows if r.get("workload")):
        mine = [r for r in rows if r.get("workload") == wl]
        used = [p for p in params if any(r.get(p) not in (None, "") for r in mine)]
        legacy = LEGACY_WORKLOADS.get(wl, {})
        workloads[wl] = {"params": used or params, "baseline": legacy.get("baseline"),
                         "summary_columns": legacy.get("summary_columns", [])}
    dtypes = dict.fromkeys(r.get("dtype") for r in rows if r.get("dtype"))
    built = build(workloads, {d: d for d in dtypes}, [{k: None for k in header}])
    # the header's own order, with its columns described (an old run has fewer, in its own order)
    described = {c["name"]: c for c in built["columns"]}
    built["columns"] = [described.get(n) or _describe(n, params) for n in header]
    built["inferred"] = True
    return built


class Schema:
    """Read access to a stored (or inferred) schema."""

    def __init__(self, data: dict):
        self.data = data
        self.by_name = {c["name"]: c for c in data.get("columns", [])}

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.data.get("columns", [])]

    def column(self, name: str) -> columns.Column:
        """The registered column, with the unit, kind and type this run recorded for it."""
        base = columns.get(name)
        stored = self.by_name.get(name)
        if not stored:
            return base
        return columns.Column(name, stored.get("kind") or base.kind, stored.get("unit"), base.fmt, base.header,
                              base.pools, base.priority, base.doc, stored.get("type", base.type))

    def workload(self, name: str) -> dict:
        return (self.data.get("workloads") or {}).get(name) or {}

    def params(self, workload: str) -> list[str]:
        return list(self.workload(workload).get("params") or [])

    def baseline(self, workload: str) -> str | None:
        return self.workload(workload).get("baseline")

    def summary_columns(self, workload: str) -> list[str]:
        return list(self.workload(workload).get("summary_columns") or [])

    def peak_key(self, dtype: str) -> str:
        return (self.data.get("peak_keys") or {}).get(dtype, dtype)

    def units(self) -> dict[str, str | None]:
        return {c["name"]: c.get("unit") for c in self.data.get("columns", [])}
