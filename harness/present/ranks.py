"""How the ranks of a distributed run compare, case by case: pure functions on result rows.

A distributed run (harness/distributed) records one row per rank for a single-GPU case (gemm, moe,
attention, block: every rank ran it at once) and one row for a collective (timed by its slowest
rank). Rows carry no flag for which is which: a case with one row is left alone, a case with
several rows is a single-GPU case seen from each rank.

mark_stragglers  each rank's time against its case's median (`vs_median`) and the `straggler` flag
by_case          the ranks of each case pooled into one row (the summary, `mfu compare --by case`)
views            a run as compare and history read it: per case (pooled) or one view per rank
table            the summary's ranks table: per case the median, the slowest rank, the spread and
                 the stragglers, with one line per straggler naming its GPU, clock, power and
                 throttle reasons below it

No torch here: readers of a run directory use this without it.
"""

from __future__ import annotations

import dataclasses
import statistics

from harness.distributed import reasons
from harness.present.tables import Footnotes, Table
from harness.store import columns

DEFAULT_THRESHOLD = 0.05  # a rank more than this much slower than its case's median is a straggler
TIMED = ("ok", "suspect")  # statuses whose rows carry a measured time
PER_RANK = ("rank", "local_rank", "vs_median", "straggler")  # meaningless on a row pooled over ranks


def distributed(rows: list[dict]) -> bool:
    """Whether the rows come from a run of more than one rank."""
    return any((r.get("world_size") or 1) > 1 for r in rows)


PER = ("case", "rank")  # how `mfu compare --by` and `mfu history --ranks` read a distributed run


def views(run, per: str = "case") -> list[tuple[int | None, object]]:
    """(rank, run) pairs as compare and history read a run (harness/store/runs.Run): a run of one
    rank as it is; a distributed run with one row per case pooled over its ranks (per="case"), or
    one view per rank with that rank's rows and samples (per="rank"; a collective's one row is in
    the view of the rank that timed it)."""
    if not distributed(run.rows):
        return [(None, run)]
    if per == "case":
        return [(None, dataclasses.replace(run, rows=by_case(run.rows)))]
    from harness.store.results import RunDir

    samples = RunDir(run.path).samples(by_rank=True) if run.path.is_dir() else {}
    found = sorted({r["rank"] for r in run.rows if r.get("rank") is not None})
    return [(rank, dataclasses.replace(run, rows=[r for r in run.rows if r.get("rank") == rank],
                                       samples={cid: s for (cid, k), s in samples.items() if k == rank}))
            for rank in found]


def mark_stragglers(rows: list[dict], threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Copies of the rows where each case with two or more timed rank rows has, on those rows,
    `vs_median` (time_ms over the median of the case's timed ranks, minus 1) and `straggler`
    (vs_median > threshold). Other rows are copied unchanged.

    With two ranks the median is their mean, so one of a pair is a straggler only when it is
    more than 2·threshold/(1 − threshold) slower than the other (10.5% at the 5% default)."""
    out = [dict(r) for r in rows]
    for case in _cases(out).values():
        timed = _timed(case)
        if len(timed) < 2:
            continue
        median = statistics.median(r["time_ms"] for r in timed)
        for r in timed:
            r["vs_median"] = r["time_ms"] / median - 1
            r["straggler"] = r["vs_median"] > threshold
    return out


def by_case(rows: list[dict], threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """One row per case_id, in first-seen order. A case with one row (a collective, or any case
    of a single-process run) is that row. A case with several rank rows becomes one row: the
    worst rank's (its status and reason), with the median over the timed ranks of every
    "samples"-pooled number (time_ms, tflops, mfu, ...), the telemetry and clock columns pooled
    as the registry says, no rank of its own, and `ranks`, `slowest_rank`, `slowest_host`,
    `spread` and `stragglers`.

    Rows already marked (mark_stragglers, as the runner does with the run's threshold) keep
    their flags; unmarked rows are marked here at `threshold`. A single-process run's rows are
    returned as they are."""
    if not distributed(rows):
        return list(rows)
    if not any(r.get("vs_median") is not None for r in rows):
        rows = mark_stragglers(rows, threshold)
    return [case[0] if len(case) == 1 else _pooled(case) for case in _cases(rows).values()]


def _pooled(case: list[dict]) -> dict:
    """The rank rows of one case as one row (see by_case)."""
    # The first of the worst, preferring a rank that failed on its own over one that says which did.
    worst = min(case, key=lambda r: (columns.WORST_FIRST.index(r["status"]), reasons.blames_another_rank(r.get("reason"))))
    timed = _timed(case)
    row = {**worst, **dict.fromkeys(PER_RANK)}
    hosts = {r.get("host") for r in case}
    row["host"] = hosts.pop() if len(hosts) == 1 else None
    if worst["status"] in TIMED:  # else, as for passes, the failed row as it is: no number to trust
        for c in columns.COLUMNS:
            values = [r[c.name] for r in timed if _number(r.get(c.name))]
            if c.pools == "samples" and values:
                row[c.name] = statistics.median_low(values) if c.type == "int" else statistics.median(values)
        row.update(columns.pooled(timed, "telemetry"), **columns.pooled(timed, "clock"))
    times = [r["time_ms"] for r in timed]
    slowest = max(timed, key=lambda r: r["time_ms"]) if timed else {}
    row.update(
        ranks=len(case),
        slowest_rank=slowest.get("rank"),
        slowest_host=slowest.get("host"),
        spread=(max(times) - min(times)) / statistics.median(times) if len(times) > 1 else None,
        stragglers=",".join(str(r["rank"]) for r in case if r.get("straggler")) if len(times) > 1 else None,
    )
    return row


# ------------------------------------------------------------------------------ the summary's view


def table(rows: list[dict], threshold: float = DEFAULT_THRESHOLD) -> Table | None:
    """The ranks table of a distributed run's rank rows: one row per case run on several ranks,
    and below it one line per straggler (`straggler_lines`); None when no case has several
    ranks (as in a single-process run). Numbers are shown only for a case whose every rank is ok:
    otherwise its worst status, with the reason as a note."""
    if not distributed(rows):
        return None
    if not any(r.get("vs_median") is not None for r in rows):
        rows = mark_stragglers(rows, threshold)
    cases = {cid: case for cid, case in _cases(rows).items() if len(case) > 1}
    if not cases:
        return None
    notes = Footnotes()
    cells = []
    for cid, case in cases.items():
        pooled = _pooled(case)
        if pooled["status"] == "ok":
            cells.append([cid, str(pooled["ranks"]), columns.get("time_ms").cell(pooled["time_ms"]),
                          _slowest(pooled, case), columns.get("spread").cell(pooled["spread"]),
                          pooled["stragglers"] or ""])
        else:
            cells.append([cid, str(pooled["ranks"]), pooled["status"] + notes.mark(pooled.get("reason")),
                          "", "", ""])
    world = max(r.get("world_size") or 1 for r in rows)
    title = f"ranks: each case on {world} GPUs at once; spread = (max - min) / median of their times"
    headers = ["case", "ranks", "median ms", "slowest (host:GPU)", "spread", "stragglers"]
    return Table(title, headers, cells, straggler_lines(rows) + notes.notes(), priorities=[0, 3, 0, 1, 0, 2],
                 keys=1)


def _slowest(pooled: dict, case: list[dict]) -> str:
    """'node-a:3 (rank 3)': the slowest rank's host and local GPU index."""
    rank = next(r for r in case if r.get("rank") == pooled["slowest_rank"])
    host = rank.get("host")
    return f"{host + ':' if host else ''}{rank.get('local_rank')} (rank {rank.get('rank')})"


def straggler_lines(rows: list[dict]) -> list[str]:
    """One line per straggler of a case whose every rank is ok: 'straggler: rank 3 (node-a GPU 3)
    is 7.2% slower than the median on <case>; SM clock 1410 MHz, 690 W, clock reasons
    sw_power_cap'."""
    lines = []
    for cid, case in _cases(rows).items():
        if any(r["status"] != "ok" for r in case):
            continue
        for r in case:
            if r.get("straggler"):
                where = " ".join(filter(None, [r.get("host"), f"GPU {r.get('local_rank')}"]))
                line = (f"straggler: rank {r.get('rank')} ({where}) is {r['vs_median']:.1%} "
                        f"slower than the median on {cid}")
                lines.append(line + "".join(f"; {t}" for t in [_telemetry(r)] if t))
    return lines


def _telemetry(r: dict) -> str:
    parts = []
    if r.get("sm_clock_mhz") is not None:
        parts.append(f"SM clock {r['sm_clock_mhz']:.0f} MHz")
    if r.get("power_w") is not None:
        parts.append(f"{r['power_w']:.0f} W")
    if r.get("throttle"):
        parts.append(f"clock reasons {r['throttle']}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------ helpers


def _cases(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["case_id"], []).append(r)
    return out


def _timed(case: list[dict]) -> list[dict]:
    return [r for r in case if r.get("status") in TIMED and _number(r.get("time_ms"))]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
