"""The console table of a layer split over ranks (tp-linear, ep-moe): per case its three timings,
the compute/communication ratio, how much of the communication overlap hid, its MFU over the
whole group's peak and its communication's bus bandwidth (harness/workloads/overlap_model.py).

A workload is a layer when its declaration (the run's schema) has phases. A case on a group of one
rank was timed as compute only: the table says so, once, instead of leaving empty columns unexplained.
"""

from __future__ import annotations

from harness.present.tables import Footnotes, Table
from harness.store import columns

SHOWN = ["compute_ms", "comm_ms", "overlapped_ms", "compute_comm_ratio", "overlap_eff", "exposed_comm_ms",
         "mfu", "busbw_gbps", "link_util"]


def table(rows: list[dict], workload: str, params: list[str]) -> Table:
    """One row per case; a case that is not ok shows its status, with the reason as a note."""
    from harness.present.summary import identity_columns, param_cell

    shown_params, priorities = identity_columns(rows, params)
    notes = Footnotes()
    cells = []
    for r in rows:
        ok = r["status"] == "ok"
        numbers = [columns.get(c).cell(r.get(c)) if ok else "" for c in SHOWN]
        cells.append([param_cell(p, r.get(p)) for p in shown_params] + [r["dtype"], r["backend"],
                     r["status"] + ("" if ok else notes.mark(r.get("reason")))] + numbers)
    extra = []
    alone = [r for r in rows if r["status"] == "ok" and r.get("comm_ms") is None]
    if alone:
        extra.append(f"{len(alone)} case{'s' if len(alone) > 1 else ''} timed as compute only: "
                     f"{alone[0].get('link_note') or 'no communication was measured'}")
    below = [r for r in rows if r["status"] == "ok" and (r.get("compute_comm_ratio") or 1) < 1]
    if below:
        extra.append(f"compute/comm below 1 in {len(below)} case{'s' if len(below) > 1 else ''}: the layer "
                     "waits on its links there however well it overlaps")
    headers = shown_params + ["dtype", "backend", "status"] + [columns.get(c).title for c in SHOWN]
    return Table(f"{workload}: compute against communication (time_ms is overlapped_ms; MFU over the group's peak)",
                 headers, cells, extra + notes.notes(),
                 priorities=priorities + [1, 0, 0] + [columns.get(c).priority for c in SHOWN],
                 keys=len(shown_params) + 2)
