"""Several runs: each run after the first (A, the reference) matched to it case by case (case_id).

- On the same device (meta.json's device name): Δ (throughput change) and a verdict from
  harness/present/verdict.py: faster or slower only past the threshold and significant on raw samples.
- On different devices: the ratio of TFLOPS and of MFU, i.e. how much of each chip the kernel uses.
A case that was ok in A and is error, mismatch or suspect now is `failed`. Cases found in only one
run are listed, not errors. Runs timed with other settings than A (L2 flush, CUDA graphs) are named
in a note. A geometric-mean summary per workload, backend and run closes the result.
"""

from __future__ import annotations

import string

from harness.present import verdict
from harness.present.compare import rendering
from harness.present.compare.comparison import Comparison, bucket, by_workload, describe_run, identity
from harness.present.ratios import geomean, speedup
from harness.store import runs as runs_mod
from harness.store.results import FAILED
from harness.store.runs import Run


def several(runs: list[Run], threshold: float = verdict.THRESHOLD) -> Comparison:
    """Each run after the first against the first, case by case."""
    tags = list(string.ascii_uppercase[: len(runs)]) if len(runs) <= 26 else [str(i + 1) for i in range(len(runs))]
    names = runs_mod.labels(runs)
    ref = runs[0]
    modes = ["reference"] + [_mode(ref, r) for r in runs[1:]]
    result = Comparison([], [], [], runs=[{**describe_run(r, t, n), "mode": m}
                                          for r, t, n, m in zip(runs, tags, names, modes)], threshold=threshold)
    settings = {tags[j]: runs_mod.timing_differences(ref, runs[j]) for j in range(1, len(runs))}
    result.notes = [f"{tag} was timed with other settings than A ({', '.join(diffs)}): its times are not "
                    "like for like" for tag, diffs in settings.items() if diffs]
    by_case = [r.by_case for r in runs]
    order = list(dict.fromkeys(cid for cases in by_case for cid in cases))
    for j in range(1, len(runs)):
        for cid in order:
            if cid in by_case[0] or cid in by_case[j]:
                result.records.append({**_pair(cid, by_case[0].get(cid), by_case[j].get(cid), ref, runs[j],
                                                 tags[j], modes[j], threshold),
                                       "settings_changed": ", ".join(settings[tags[j]])})
        for side, other in ((0, j), (j, 0)):
            gone = [cid for cid in by_case[side] if cid not in by_case[other]]
            if gone:
                result.missing[f"only in {tags[side]}, not in {tags[other]}"] = gone
    params = {wl: next((r.params(wl) for r in runs if r.params(wl)), []) for wl in by_workload(result.records)}
    result.summary = _pair_summary(result.records)
    result.tables = rendering.between_runs_tables(result, by_case, tags, modes, params)
    return result


def _mode(ref: Run, run: Run) -> str:
    """How `run` is compared with the reference: a key of comparison.MODES."""
    if run.device_name != ref.device_name:
        return "cross-device"
    ids = {ref.device.get("uuid"), run.device.get("uuid")}
    return "same-device" if len(ids) == 1 or None in ids else "same-model"


def _pair(cid: str, a: dict | None, b: dict | None, ref: Run, run: Run, tag: str, mode: str,
          threshold: float) -> dict:
    """One case of the reference (a) and of a run (b), either possibly missing, as one record."""
    known = a or b
    rec = {**identity(known), "run": tag, "mode": mode,
           "status_ref": a and a["status"], "status_run": b and b["status"],
           "tflops_ref": a and a.get("tflops"), "tflops_run": b and b.get("tflops"),
           "mfu_ref": a and a.get("mfu"), "mfu_run": b and b.get("mfu"),
           "time_ms_ref": a and a.get("time_ms"), "time_ms_run": b and b.get("time_ms"),
           "change": None, "tflops_ratio": None, "mfu_ratio": None, "verdict": "", "evidence": "", "p_value": None}
    if a is None or b is None:
        return {**rec, "verdict": "missing", "evidence": f"not in {'A' if a is None else tag}"}
    if a["status"] == "ok" and b["status"] in FAILED:
        return {**rec, "verdict": "failed", "evidence": f"ok → {b['status']}: {b.get('reason') or ''}".strip()}
    if not (a["status"] == b["status"] == "ok"):
        return {**rec, "evidence": f"{a['status']} → {b['status']}"}
    if mode == "cross-device":
        return {**rec, "tflops_ratio": speedup(a, b),
                "mfu_ratio": _ratio(b.get("mfu"), a.get("mfu"))}
    v = verdict.judge(verdict.Timing.of(a, ref.samples.get(cid)), verdict.Timing.of(b, run.samples.get(cid)),
                      threshold)
    return {**rec, "change": v.change, "verdict": v.verdict, "evidence": v.evidence, "p_value": v.p_value}


def _pair_summary(records: list[dict]) -> list[dict]:
    """Per workload, backend and run: verdict counts and geometric means of the ratios."""
    out = []
    for (wl, backend, tag), recs in bucket(records, lambda r: (r["workload"], r["backend"], r["run"])).items():
        both = [r for r in recs if r["status_ref"] == r["status_run"] == "ok"]
        counts = {v: sum(1 for r in recs if r["verdict"] == v) for v in ("faster", "slower", "same", "inconclusive", "failed")}
        ratios = [speedup(*_sides(r)) for r in both]
        if not both and not any(counts.values()):
            continue
        out.append({"workload": wl, "backend": backend, "run": f"{tag} vs A", "cases": len(both), **counts,
                     "geomean ×TFLOPS": geomean(ratios), "geomean ×MFU": geomean([r["mfu_ratio"] for r in both])})
    return out


def _ratio(num, den) -> float | None:
    return num / den if num is not None and den else None


def _sides(rec: dict) -> tuple[dict, dict]:
    """A paired record's reference and run as rows, for ratios.speedup."""
    return tuple({"status": rec[f"status_{s}"], "time_ms": rec[f"time_ms_{s}"]} for s in ("ref", "run"))
