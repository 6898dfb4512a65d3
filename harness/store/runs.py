"""Finished runs as the comparison tools read them: a run directory or a pytest-benchmark JSON file.

`load(path)` gives a Run: one row per case (as a DataFrame, `frame`, and as plain dicts, `rows`,
both from harness/store/frames.py, the one reader of a run directory), raw sample times in ms, meta.json
and the run's column schema (harness/store/schema.py: parameters, baseline, units). A
pytest-benchmark file (from `mfu export` or the pytest plugin, or any pytest-benchmark run) is read
into the same shape: stats in seconds become milliseconds, `extra_info` gives the metrics, and
`machine_info["mfu"]` the device and software. `find(paths)` expands directories that hold run
directories (such as results/) for `mfu history`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from harness.errors import UsageError
from harness.store import frames
from harness.store.results import RunDir
from harness.store.schema import Schema, infer

# What a comparison tells runs apart by, in the order it lists what changed between two runs.
SOFTWARE_KEYS = ("torch", "triton", "harness", "git_commit", "cuda_runtime", "hip_runtime", "cudnn", "python")


@dataclass
class Run:
    path: Path
    meta: dict
    rows: list[dict]
    samples: dict[str, list[float]] = field(default_factory=dict)  # case_id -> sample times in ms
    schema: Schema = field(default_factory=lambda: Schema({}))

    @cached_property
    def frame(self):
        """The rows as a typed pandas DataFrame (harness/store/frames.py)."""
        return frames.frame(self.rows, self.schema, self.meta)

    def params(self, workload: str) -> list[str]:
        """The workload's parameter columns in this run (m n k label for gemm)."""
        return self.schema.params(workload)

    def baseline(self, workload: str) -> str | None:
        """The backend the workload's others were compared with when this run was made."""
        return self.schema.baseline(workload)

    @property
    def timing(self) -> dict:
        return self.meta.get("timing") or {}

    @cached_property
    def by_case(self) -> dict[str, dict]:
        return {r["case_id"]: r for r in self.rows}

    @property
    def device(self) -> dict:
        return self.meta.get("device") or {}

    @property
    def device_name(self) -> str:
        return self.device.get("name") or "?"

    @property
    def started(self) -> str:
        return self.meta.get("started") or ""

    @property
    def software(self) -> dict:
        return self.meta.get("software") or {}

    def versions(self) -> dict[str, str]:
        """The software identity of the run (and the GPU driver), as short strings."""
        found = {k: str(self.software[k]) for k in SOFTWARE_KEYS if self.software.get(k)}
        if self.device.get("driver"):
            found["driver"] = str(self.device["driver"])
        return found


def versions_text(versions: dict) -> str:
    """'torch 2.6.0, triton 3.2.0, harness 0.1.0, git 588f6d79c982' (Python left out)."""
    short = {("git" if k == "git_commit" else k): (v[:12] if k == "git_commit" else v)
             for k, v in versions.items() if k != "python"}
    return ", ".join(f"{k} {v}" for k, v in short.items())


def load(path: str | Path) -> Run:
    """A run directory or a pytest-benchmark JSON file; anything else is a usage error."""
    path = Path(path)
    if path.is_dir():
        if not (path / "cases.jsonl").exists():
            raise UsageError(f"{path}: not a run directory (no cases.jsonl)")
        run_dir = RunDir(path)
        meta = run_dir.read_meta()
        rows, schema = frames.read_run_dir(run_dir, meta)
        run = Run(path, meta, [], run_dir.samples(), schema)
        run.frame = frames.frame(rows, schema, meta)
        run.rows = frames.records(run.frame)  # typed by the schema, whichever file they came from
        return run
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not a pytest-benchmark JSON file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise UsageError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
        return from_pytest_benchmark(data, path)
    raise UsageError(f"{path}: no such run directory or pytest-benchmark JSON file")


def find(paths: list[str | Path]) -> list[Run]:
    """Each path's run: a run directory, a JSON file, or a directory searched for run directories."""
    runs = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "cases.jsonl").exists():
            found = sorted(p.parent for p in path.rglob("cases.jsonl"))
            if not found:
                raise UsageError(f"{path}: no run directories (with a cases.jsonl) under it")
            runs += [load(p) for p in found]
        else:
            runs.append(load(path))
    return runs


def labels(runs: list[Run]) -> list[str]:
    """Short unique names: the directory or file name, with the parent's where names repeat."""
    names = [r.path.stem if r.path.is_file() else r.path.name for r in runs]
    return [f"{r.path.parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


TIMING_SETTINGS = frames.TIMING_SETTINGS


def timing_differences(a: Run, b: Run) -> list[str]:
    """How two runs' timing settings differ ('l2_flush on → off'); [] when they match or are unknown."""
    def word(value) -> str:
        return {True: "on", False: "off"}.get(value, "?")

    return [f"{k} {word(a.timing.get(k))} → {word(b.timing.get(k))}" for k in TIMING_SETTINGS
            if k in a.timing and k in b.timing and a.timing[k] != b.timing[k]]


def from_pytest_benchmark(data: dict, path: Path) -> Run:
    rows, samples = [], {}
    for bench in data["benchmarks"]:
        info, stats = bench.get("extra_info") or {}, bench["stats"]
        case_id = info.get("case_id") or bench.get("fullname") or bench["name"]
        rows.append({
            **info, "case_id": case_id,
            "workload": info.get("workload") or bench.get("group") or "benchmark",
            "backend": info.get("backend") or "", "dtype": info.get("dtype") or "",
            "status": info.get("status") or "ok", "time_ms": stats["median"] * 1e3,
            "time_ms_q1": stats.get("q1", stats["median"]) * 1e3,
            "time_ms_q3": stats.get("q3", stats["median"]) * 1e3, "samples": stats.get("rounds"),
        })
        if stats.get("data"):
            samples[case_id] = [x * 1e3 for x in stats["data"]]
    machine = data.get("machine_info") or {}
    ours = machine.get("mfu") or {}
    cpu = machine.get("cpu") or {}
    device = ours.get("device") or {"kind": "host", "host": machine.get("node"),
                                    "name": cpu.get("brand_raw") or machine.get("processor") or machine.get("node")}
    software = ours.get("software") or {"python": machine.get("python_version")}
    commit = (data.get("commit_info") or {}).get("id")
    meta = {"device": device, "peak": ours.get("peak"), "software": {"git_commit": commit, **software},
            "started": data.get("datetime"), "source": "pytest-benchmark"}
    schema = ours.get("schema")
    if not isinstance(schema, dict) or not schema.get("columns"):
        header = list(dict.fromkeys(k for r in rows for k in r))
        schema = infer(header, rows, str(path), quiet=True)
    return Run(path, meta, rows, samples, Schema(schema))
