"""Measured ceilings: what this device really reaches, stored per device, and kept as records.

`mfu ceilings` measures them (harness/hardware/sweep.py) and stores the result per device (GPU UUID, or host
for a CPU) under $MFU_HOME/ceilings/ (default ~/.cache/mfu-harness), written atomically only
after everything was measured, so a failed measurement leaves the stored file as it was. Later
runs on that device report `mfu_ceiling`, `mbu_ceiling` and `exp_util` against them.

A ceiling is the best seen so far, not a wall: `rerate` ends every run by raising each ceiling
that a case of the run beat (status ok, within the datasheet), storing the case as its source, and
rating every row of the run against the ceilings as they now stand.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from rich.markup import escape

from harness.hardware import environment
from harness.hardware.device import DeviceFacts
from harness.hardware.sweep import DEFAULT_BUDGET_S, measure  # noqa: F401  (measure: `mfu claims` calls it here)
from harness.measure import metrics
from harness.measure.dtypes import DTYPES


def home() -> Path:
    return Path(os.environ.get("MFU_HOME") or Path.home() / ".cache" / "mfu-harness")


def path_for(key: str) -> Path:
    return home() / "ceilings" / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".json")


def load(facts: DeviceFacts) -> dict | None:
    """The stored ceilings of this device, or None if `mfu ceilings` never ran on it."""
    path = path_for(facts.key)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save(result: dict, extra: Path | None = None) -> list[Path]:
    """Write the device's store (and `extra`) atomically: a reader sees the old file or the new one."""
    text = json.dumps(result, indent=2) + "\n"  # serialised first: a failure here writes nothing
    paths = [path_for(result["key"])] + ([Path(extra)] if extra else [])
    for p in paths:
        _write_atomic(p, text)
    return paths


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(result: dict | None) -> dict | None:
    """The few numbers a run uses (and meta.json records) from a ceilings file."""
    if not result:
        return None
    return {
        "matmul_tflops": {d: m["tflops"] for d, m in result["matmul"].items() if "tflops" in m},
        "bandwidth_gbps": result["memory"].get("best_gbps"),
        "exp_per_s": result["exp"].get("exp2_per_s"),
        "launch_ms": (result.get("launch") or {}).get("fastest_ms"),
        "measured": result["measured"],
        "path": str(path_for(result["key"])),
    }


# ------------------------------------------------------------------------ records raised by runs


def rerate(rows: list[dict], ctx, run_path: Path, raise_records: bool = True) -> list[dict]:
    """The authoritative end of a run: raise the stored ceilings its cases beat, then re-rate rows.

    Every ceiling (matmul per peak key, bandwidth, exp rate) that an `ok` row within the datasheet
    beat is raised to that row, with the row as its source, and saved. ctx.ceilings is updated in
    place (meta.json records it), and every timed row gets mfu_ceiling, mbu_ceiling, exp_util and
    limit against the ceilings as they now stand, plus its clock columns (peak_clock_mhz,
    mfu_at_clock, throttled) from its final telemetry. The rows that set a record say so in
    `new_best`. raise_records=False (a run without the L2 flush) only re-rates."""
    stored = load(ctx.facts) if ctx.ceilings and raise_records else None
    if stored:
        news = _raise_records(stored, rows, str(Path(run_path).resolve()))
        if news:
            save(stored)
            ctx.ceilings.clear()
            ctx.ceilings.update(summary(stored))
    return [_rated(row, ctx) for row in rows]


def _rated(row: dict, ctx) -> dict:
    if row.get("time_ms") is None or row.get("tflops") is None:
        return row
    peak_key = DTYPES[row["dtype"]].peak_key
    return {**row, **metrics.against_ceilings(row, row["time_ms"], peak_key, ctx.ceilings, row.get("exps")),
            **metrics.clock_columns(row, ctx.spec, ctx.facts, peak_key)}


def _raise_records(stored: dict, rows: list[dict], run: str) -> list[dict]:
    """Raise `stored` in place to every record the rows set; mark those rows. Returns the rows."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("time_ms")]
    within_peak = [r for r in ok if r.get("mfu") is None or r["mfu"] <= 1]
    within_bandwidth = [r for r in ok if r.get("mbu") is None or r["mbu"] <= 1]
    setters = []

    def source(r):
        return {"case_id": r["case_id"], "backend": r.get("backend"), "run": run, "time": environment.now()}

    for key, entry in stored["matmul"].items():
        mine = [r for r in within_peak if DTYPES[r["dtype"]].peak_key == key and r.get("tflops")]
        best = max(mine, key=lambda r: r["tflops"], default=None)
        if "tflops" in entry and best and best["tflops"] > entry["tflops"]:
            stored["matmul"][key] = {"tflops": best["tflops"], "time_ms": best["time_ms"], "source": source(best),
                                     "replaced": {k: v for k, v in entry.items() if k not in ("replaced", "tried")}}
            setters.append(_mark(best, f"{key} matmul ceiling", entry["tflops"], best["tflops"], "TFLOPS"))

    mem = stored["memory"]
    best = max((r for r in within_bandwidth if r.get("gbps")), key=lambda r: r["gbps"], default=None)
    if mem.get("best_gbps") and best and best["gbps"] > mem["best_gbps"]:
        setters.append(_mark(best, "bandwidth ceiling", mem["best_gbps"], best["gbps"], "GB/s"))
        mem["replaced"] = {"best": mem["best"], "best_gbps": mem["best_gbps"]}
        mem.update(best="run", best_gbps=best["gbps"], source=source(best))

    exp = stored["exp"]
    rates = [(metrics.exp_rate(r.get("exps"), r["time_ms"]), r) for r in ok if r.get("exps")]
    rate, best = max(rates, key=lambda x: x[0], default=(None, None))
    if exp.get("exp2_per_s") and rate and rate > exp["exp2_per_s"]:
        setters.append(_mark(best, "exp ceiling", exp["exp2_per_s"] / 1e12, rate / 1e12, "T exp/s"))
        exp.update(replaced={"exp2_per_s": exp["exp2_per_s"], "source": exp.get("source")},
                   exp2_per_s=rate, source=source(best))
    return setters


def _mark(row: dict, what: str, old: float, new: float, unit: str) -> dict:
    note = f"new best {what}: {old:.4g} -> {new:.4g} {unit}"
    row["new_best"] = f"{row['new_best']}; {note}" if row.get("new_best") else note
    return row


# ------------------------------------------------------------------------------------ command


def add_command(sub) -> None:
    cmd = sub.add_parser("ceilings", help="measure this device's achievable matmul, bandwidth and exp rates")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    cmd.add_argument("--out", type=Path, help="also write the result to FILE (it is always stored per device)")
    cmd.add_argument("--budget-s", type=float, default=None,
                     help=f"time for the matmul sweeps, shared equally by the dtypes (default: "
                          f"{DEFAULT_BUDGET_S['cuda']:.0f} on a GPU, {DEFAULT_BUDGET_S['cpu']:.0f} on a CPU; "
                          "300 finds the bf16 best more surely)")
    cmd.add_argument("--fresh", action="store_true",
                     help="replace the stored ceilings even where they are higher (records are kept by default)")
    cmd.set_defaults(command=_command)


def _command(args, console) -> int:
    from harness.errors import UsageError
    from harness.hardware import device

    kind = args.device or device.default_device()
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    if args.budget_s is not None and not args.budget_s > 0:
        raise UsageError(f"--budget-s: must be above 0 (got {args.budget_s:g})")
    if args.out:  # a folder that cannot be made fails now, not after minutes of measuring
        args.out.parent.mkdir(parents=True, exist_ok=True)
    facts = device.detect(kind)
    budget = args.budget_s if args.budget_s is not None else DEFAULT_BUDGET_S[kind]
    console.print(f"measuring ceilings of {facts.name} ({kind}), about {budget:.0f} s of matmul sweeps")
    try:
        result = measure(kind, facts, budget, log=console.print)
    except Exception as exc:  # nothing was written: the stored ceilings stay as they were
        text = (f"ceilings not measured ({type(exc).__name__}: {exc}); the stored ceilings "
                f"({path_for(facts.key)}) are unchanged")
        console.print(f"[red]{escape(text)}[/]")
        return 1
    stored = None if args.fresh else load(facts)
    for note in keep_records(result, stored):
        console.print(note)
    for path in save(result, args.out):
        console.print(f"written: {path}")
    return 0


def keep_records(result: dict, stored: dict | None) -> list[str]:
    """Carry into a new measurement every stored ceiling it did not reach (a record stays a record:
    a short sweep, or one that missed the best shape, must not lower a ceiling a case has beaten).
    Changes `result` in place; returns one line per record kept."""
    if not stored:
        return []
    kept = []
    for dtype, old in stored.get("matmul", {}).items():
        new = result["matmul"].get(dtype, {})
        if "tflops" in old and old["tflops"] > new.get("tflops", 0):
            result["matmul"][dtype] = {**old, "not_reached_by": {k: new[k] for k in ("tflops", "shape") if k in new}}
            kept.append(f"matmul {dtype}: kept the stored record {old['tflops']:.1f} TFLOPS "
                        f"(this sweep reached {new.get('tflops', 0):.1f})")
    old_mem, new_mem = stored.get("memory", {}), result["memory"]
    if old_mem.get("best_gbps", 0) > new_mem.get("best_gbps", 0):
        new_mem.update(best=old_mem.get("best"), best_gbps=old_mem["best_gbps"], source=old_mem.get("source"))
        kept.append(f"bandwidth: kept the stored record {old_mem['best_gbps']:.0f} GB/s")
    old_exp, new_exp = stored.get("exp", {}), result["exp"]
    if old_exp.get("exp2_per_s", 0) > new_exp.get("exp2_per_s", 0):
        new_exp.update(exp2_per_s=old_exp["exp2_per_s"], source=old_exp.get("source"))
        kept.append(f"exp: kept the stored record {old_exp['exp2_per_s'] / 1e12:.3f} T/s")
    if kept:
        kept.append("(`mfu ceilings --fresh` starts over, e.g. after a driver or clock-policy change)")
    return kept
