"""`mfu plan`: expand a suite without allocating anything and predict its cost on a named GPU.

Each case becomes a `planned` row with the same columns as a run: the formulas' flops and bytes,
intensity, bound, the roofline time on the GPU (the fastest any kernel could go), and the memory
the case would need: the same figure (harness/measure/memory.py `required_bytes`, margin included) that a
run compares with free memory before skipping a case. A collective (workloads/comm.py) is predicted
instead by the α-β model of harness/workloads/comm_model.py over the planned World (`mfu plan --nproc
N --nnodes M`): time_ms, algbw_gbps and busbw_gbps, as a run on that many ranks would report them.
`tables` renders the rows: every case, or for a large suite a grouped summary and the most
expensive cases.
"""

from __future__ import annotations

from collections import Counter

from harness import workloads
from harness.distributed.launch import SOLO, World
from harness.hardware.device import DeviceFacts
from harness.hardware.specs import PeakSpec
from harness.measure import memory
from harness.measure.case import Context, base_row
from harness.measure.config import Suite
from harness.measure.dtypes import DTYPES
from harness.present.tables import Table, number
from harness.workloads import comm_model, overlap_model

MOST_EXPENSIVE = 20  # cases listed by roofline time when the plan is summarized


def plan(suite: Suite, spec: PeakSpec | None, world: World = SOLO) -> list[dict]:
    """A `planned` row per case on the GPU `spec` (None: no GPU named), in a run over `world`."""
    ctx = Context("plan", DeviceFacts(kind="plan", name=spec.name if spec else ""), spec, world=world)
    rows = []
    for case in suite.cases:
        wl = workloads.REGISTRY[case.workload]
        row = base_row(case, ctx)
        if row["status"] == "skipped":  # it cannot be placed on the planned ranks
            rows.append({**row, "status": "planned", "reason": f"a run would skip it: {row['reason']}",
                         "flops": None, "memory_gib": None, "world_size": world.size})
            continue
        need = wl.memory_bytes(wl.placed(case.p, world), DTYPES[case.dtype])
        row.update(status="planned", memory_gib=memory.required_bytes(need) / 2**30, world_size=world.size)
        if wl.phases:
            row.update(_layer(wl, {k: row[k] for k in case.p}, DTYPES[case.dtype], row, world, spec))
        elif wl.collective:
            row.update(_collective(case.p, DTYPES[case.dtype].size, world, spec))
        rows.append(row)
    return rows


def _layer(wl, p: dict, dtype, row: dict, world: World, spec: PeakSpec | None) -> dict:
    """A layer's three timings (workloads/overlap_model.py): compute at the roofline of its group's
    peaks, communication by the α-β model over its group, overlapped as an ideal pipeline of its
    chunks; or in `reason` why there is none."""
    size = wl.peak_gpus(p, world)
    group = overlap_model.layer_world(size, world)
    compute = row.get("roofline_ms")
    ops, chunks = wl.comm_ops(p, dtype, world), p.get("chunks", 1)
    comm, why = overlap_model.predicted_comm_ms(ops, group, spec)
    chunked, _ = overlap_model.predicted_comm_ms(ops, group, spec, chunks)
    overlapped = overlap_model.predicted_overlap_ms(compute, chunked, chunks) if compute and chunked else None
    if compute is None:
        why = "no peak table entry for this GPU: no roofline to predict the compute with (use --gpu)"
    return {"compute_ms": compute, "comm_ms": comm, "overlapped_ms": overlapped,
            "time_ms": overlapped if overlapped is not None else compute,
            **overlap_model.derived(compute, comm, overlapped),
            "comm_bytes": sum(n for _, n in ops) if size > 1 else None, "reason": why}


def _collective(p: dict, element: int, world: World, spec: PeakSpec | None) -> dict:
    """The α-β prediction of a comm case, or in `reason` why there is none."""
    op, size = p["op"], p["size"]
    problem = comm_model.size_problem(op, size, element, world.size)
    if op == "send_recv" and world.size < 2:
        problem = "send_recv needs at least 2 ranks: plan with --nproc 2 or more"
    if problem:
        return {"reason": f"a run would skip it: {problem}"}
    predicted = comm_model.predict(op, size, world, spec)
    return {"time_ms": predicted.time_ms, "algbw_gbps": predicted.algbw_gbps,
            "busbw_gbps": predicted.busbw_gbps, "reason": predicted.note}


def predicted_ms(row: dict) -> float | None:
    """A planned row's time: the roofline's for a kernel, the α-β model's for a collective, the
    overlapped pipeline's for a layer."""
    return row.get("time_ms") if row["workload"] in _COLLECTIVES | _LAYERS else row.get("roofline_ms")


_LAYERS = {name for name, wl in workloads.REGISTRY.items() if wl.phases}
_COLLECTIVES = {name for name, wl in workloads.REGISTRY.items() if wl.collective} - _LAYERS


def budget_s(suite: Suite) -> float:
    """An upper estimate of the run's timing phase: each case's warm-up plus its time box."""
    t = suite.timing
    return len(suite.cases) * (t.warmup_ms / 1e3 + t.max_time_s)


HEADERS = ["GFLOP", "MB", "FLOP/B", "bound", "roofline ms", "memory GiB"]
COMM_HEADERS = ["predicted ms", "algbw GB/s", "busbw GB/s", "memory GiB"]


def tables(suite: Suite, rows: list[dict], spec: PeakSpec | None, every: bool = True,
           world: World = SOLO) -> list[Table]:
    """Every case per workload, or (every=False) counts per workload, dtype and backend and the
    MOST_EXPENSIVE cases by predicted time (roofline, or α-β for collectives)."""
    on = spec.name if spec else "no GPU named (use --gpu)"
    roofline = [r["roofline_ms"] for r in rows if r.get("roofline_ms") is not None]
    alpha_beta = [r["time_ms"] for r in rows if r["workload"] in _COLLECTIVES and r.get("time_ms") is not None]
    notes = [f"timing budget: at most about {budget_s(suite):.0f} s plus set-up and autotuning"]
    if roofline:
        notes.append(f"roofline time of one call of every case: {sum(roofline) / 1e3:.3g} s")
    if alpha_beta:
        notes.append(f"α-β time of one call of every collective: {sum(alpha_beta) / 1e3:.3g} s")
    if every:
        out = [_table(f"{suite.name} on {on}: {wl}", [r for r in rows if r["workload"] == wl], wl, spec, world)
               for wl in dict.fromkeys(r["workload"] for r in rows)]
        out[-1].notes += notes
        return out
    counts = Counter((r["workload"], r["dtype"], r["backend"]) for r in rows)
    ms = Counter()
    for r in rows:
        ms[(r["workload"], r["dtype"], r["backend"])] += predicted_ms(r) or 0
    header = "predicted ms" if alpha_beta else "roofline ms"
    summary = Table(f"{suite.name} on {on}: {len(rows)} cases", ["workload", "dtype", "backend", "cases", header],
                    [[*key, str(n), number(ms[key] or None, "{:,.4g}")] for key, n in counts.items()], notes,
                    keys=3)
    if alpha_beta:
        summary.notes.append("predicted ms: the roofline time of a kernel, the α-β time of a collective")
    top = sorted(rows, key=lambda r: predicted_ms(r) or 0, reverse=True)[:MOST_EXPENSIVE]
    if not roofline and not alpha_beta:
        top = sorted(rows, key=lambda r: r["flops"] or 0, reverse=True)[:MOST_EXPENSIVE]
    out = [summary]
    for wl in dict.fromkeys(r["workload"] for r in top):
        out.append(_table(f"{wl}: the most expensive cases", [r for r in top if r["workload"] == wl], wl, spec, world))
    return out


def _table(title: str, rows: list[dict], workload: str, spec: PeakSpec | None, world: World) -> Table:
    if workload in _COLLECTIVES:
        return _collective_cases(title, rows, workload, spec, world)
    if workload in _LAYERS:
        return _layer_cases(title, rows, workload, spec, world)
    return _cases(title, rows, workload)


def _cases(title: str, rows: list[dict], workload: str) -> Table:
    from harness.present.summary import identity_columns, param_cell

    params, priorities = identity_columns(rows, [p.name for p in workloads.REGISTRY[workload].params])
    cells = [[param_cell(p, r.get(p)) for p in params] + [r["dtype"], r["backend"],
              number(r["flops"] and r["flops"] / 1e9, "{:,.4g}"), number(r.get("bytes") and r["bytes"] / 1e6, "{:,.4g}"),
              number(r.get("intensity"), "{:.1f}"), r.get("bound") or "", number(r.get("roofline_ms"), "{:.4g}"),
              _gib(r)]
             for r in rows]
    return Table(title, params + ["dtype", "backend"] + HEADERS, cells,
                 priorities=priorities + [1, 0, 3, 3, 2, 2, 0, 0], keys=len(params) + 2)


def _collective_cases(title: str, rows: list[dict], workload: str, spec: PeakSpec | None, world: World) -> Table:
    """Collectives: the α-β time and the rates a run over `world` would report; why a case has none."""
    from harness.present.summary import identity_columns, param_cell

    params, priorities = identity_columns(rows, [p.name for p in workloads.REGISTRY[workload].params])
    cells = [[param_cell(p, r.get(p)) for p in params] + [r["dtype"], r["backend"], number(r.get("time_ms"), "{:.4g}"), number(r.get("algbw_gbps"), "{:.4g}"),
              number(r.get("busbw_gbps"), "{:.4g}"), _gib(r)] for r in rows]
    link, bandwidth = comm_model.link(world, spec)
    nodes = f"{world.nodes} node{'s' if world.nodes > 1 else ''}"
    notes = [f"{world.size} rank{'s' if world.size > 1 else ''} on {nodes}"
             + (f", over {link} at {bandwidth:g} GB/s per GPU and direction" if bandwidth and world.size > 1 else ""),
             f"latency: {comm_model.LATENCY_SOURCE}; a ring, so NVLS and tree algorithms can beat it"]
    for reason, n in Counter(r["reason"] for r in rows if r.get("reason")).items():
        notes.append(f"{n} case{'s' if n > 1 else ''} without a prediction: {reason}")
    return Table(title, params + ["dtype", "backend"] + COMM_HEADERS, cells,
                 priorities=priorities + [1, 0, 0, 2, 0, 2], keys=len(params) + 2, notes=notes)


LAYER_HEADERS = ["GFLOP", "compute ms", "comm ms", "overlapped ms", "compute/comm", "overlap", "memory GiB"]


def _layer_cases(title: str, rows: list[dict], workload: str, spec: PeakSpec | None, world: World) -> Table:
    """Layers: the three predicted timings, the compute/communication ratio, and where it is below 1."""
    from harness.present.summary import identity_columns, param_cell
    from harness.store import columns

    params, priorities = identity_columns(rows, [p.name for p in workloads.REGISTRY[workload].params])
    cell = {name: columns.get(name).cell for name in ("compute_ms", "comm_ms", "overlapped_ms",
                                                        "compute_comm_ratio", "overlap_eff")}
    cells = [[param_cell(p, r.get(p)) for p in params] + [r["dtype"], r["backend"],
              number(r["flops"] and r["flops"] / 1e9, "{:,.4g}"), *(cell[name](r.get(name)) for name in cell), _gib(r)]
             for r in rows]
    notes = [f"{world.size} rank{'s' if world.size > 1 else ''} on {world.nodes} node{'s' if world.nodes > 1 else ''}"
             + (f"; a group that spans nodes talks over the network ({spec.network_gbs:g} GB/s per GPU and "
                f"direction), one inside a node over NVLink ({spec.nvlink_gbs:g} GB/s)"
                if spec and spec.network_gbs and spec.nvlink_gbs and world.size > 1 else ""),
             "compute: the roofline of the layer's FLOPs and bytes over its group's peaks (even work, no kernel "
             "below peak); comm: the α-β model of its collectives (" + comm_model.LATENCY_SOURCE + "); "
             "overlapped: an ideal pipeline of its chunks, max(C, M) + min(C, M) / chunks, with no SMs lost to "
             "communication kernels. All three are ideal: a run is slower, except that NVLS all_reduce can beat the ring."]
    below = [r for r in rows if r.get("compute_comm_ratio") is not None and r["compute_comm_ratio"] < 1]
    if below:
        notes.append(f"compute/comm below 1 in {len(below)} of {len(rows)} cases: there the layer waits on its "
                     "links however well it overlaps, and adding GPUs to the group makes it worse")
    for reason, n in Counter(r["reason"] for r in rows if r.get("reason")).items():
        notes.append(f"{n} case{'s' if n > 1 else ''}: {reason}")
    return Table(title, params + ["dtype", "backend"] + LAYER_HEADERS, cells,
                 priorities=priorities + [1, 0, 3, 0, 0, 0, 0, 1, 2], keys=len(params) + 2, notes=notes)


def _gib(row: dict) -> str:
    return memory.gib(row["memory_gib"] * 2**30) if row.get("memory_gib") is not None else ""
