"""Runs as pandas DataFrames: the one reader of a run directory's rows.

`load_run(path)` gives one row per case, typed by the run's schema (harness/store/schema.py): numbers as
ints or floats, booleans as booleans, text as strings, missing values as NA. `df.attrs["meta"]` is
meta.json, `df.attrs["schema"]` the schema (column units under `units`). `load_runs(paths)` stacks
several runs with a `run` column (the directory name) and each run's timing settings
(`timing_l2_flush`, `timing_cuda_graph`), which decide what a time means.

The rows are results.csv's (where `--repeat` passes are pooled) when it holds every case of
cases.jsonl, else cases.jsonl's own (the last row per case: a run still going, killed, or whose
results.csv is missing, empty or damaged). Nothing here imports torch, a workload or a backend.

    import numpy as np, harness
    df = harness.load_run("results/h200-sxm-default-cuda-2026-12-04")
    gemm = df[(df.workload == "gemm") & (df.status == "ok")]
    side = gemm.pivot_table(index=["dtype", "m", "n", "k"], columns="backend", values="tflops")
    ratio = (side["triton"] / side["torch"]).dropna()
    print(f"triton over torch, geomean: {np.exp(np.log(ratio).mean()):.2f}")
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pandas as pd

from harness.errors import UsageError
from harness.store.results import RunDir
from harness.store.schema import Schema, infer

TIMING_SETTINGS = ("l2_flush", "cuda_graph")  # the timing settings that change what a time means


def load_run(path: str | Path) -> pd.DataFrame:
    """One run (a run directory or a pytest-benchmark JSON file) as a typed DataFrame."""
    from harness.store import runs

    return runs.load(path).frame


def load_runs(paths: list[str | Path]) -> pd.DataFrame:
    """Several runs stacked, with `run` (a short unique name) and the timing settings as columns
    (timing_l2_flush, timing_cuda_graph: prefixed, since a workload may have a `cuda_graph` parameter);
    a directory holding run directories (such as results/) stands for all of them."""
    from harness.store import runs

    found = runs.find(paths)
    parts = []
    for name, run in zip(runs.labels(found), found):
        timing = run.meta.get("timing") or {}
        part = run.frame.assign(**{f"timing_{k}": timing.get(k) for k in TIMING_SETTINGS})
        parts.append(part.assign(run=name)[["run", *part.columns]])
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    df.attrs = {"meta": {n: r.meta for n, r in zip(runs.labels(found), found)},
                "schema": {n: r.schema.data for n, r in zip(runs.labels(found), found)}}
    return df


def read_run_dir(run_dir: RunDir, meta: dict) -> tuple[list[dict], Schema]:
    """A run directory's final rows (plain Python values) and its schema."""
    table_path = run_dir.path / "results.csv"
    table, header, problem = _read_table(table_path) if table_path.exists() else ([], [], None)
    try:
        journal = run_dir.rows()
    except UsageError as exc:  # a corrupt cases.jsonl: a sound results.csv can still be read
        if not table or problem:
            raise
        _warn(f"{exc}; reading {table_path.name} instead")
        journal = []
    if table and not problem and {r["case_id"] for r in journal} <= {r["case_id"] for r in table}:
        rows = table
    elif journal:
        if problem:
            _warn(f"{table_path}: {problem}; read the rows from {run_dir.cases_file.name} instead")
        rows = list({(r["case_id"], r.get("rank", 0)): r for r in journal}.values())  # the last pass
        header = list(dict.fromkeys(k for r in journal for k in r))
    elif problem:
        raise UsageError(f"{table_path}: {problem}, and {run_dir.cases_file.name} has no rows to rebuild it from")
    else:
        raise UsageError(f"{run_dir.path}: no finished cases ({run_dir.cases_file.name} holds no rows)")
    stored = meta.get("schema")
    schema = Schema(stored if isinstance(stored, dict) and stored.get("columns") else infer(header, rows, str(run_dir.path)))
    return rows, schema


def _read_table(path: Path) -> tuple[list[dict], list[str], str | None]:
    """results.csv's rows typed as cases.jsonl held them, its header, and what is wrong with the
    file (None when it reads cleanly)."""
    try:
        text = path.read_text(encoding="utf-8")
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        return [], [], f"unreadable ({exc})"
    header = lines[0] if lines else []
    if not header:
        return [], [], "empty"
    if "case_id" not in header or "status" not in header:
        return [], [], "no case_id and status columns (not a results table)"
    first = header.index("case_id")
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) != len(header) or not cells[first]:
            return [], [], f"line {number} does not match the header (cut short?)"
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    return records(_cells_typed(df)), header, None


def _cells_typed(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells to what they were written from: numbers, booleans (True/False) or text."""
    out = {}
    for name, cells in df.items():
        known = cells.dropna()
        if known.isin(["True", "False"]).all() and len(known):
            out[name] = cells.map({"True": True, "False": False}, na_action="ignore")
            continue
        numbers = pd.to_numeric(cells, errors="coerce")
        if numbers[cells.notna()].notna().all():
            whole = known.str.fullmatch(r"-?\d+").all()
            out[name] = numbers.astype("Int64") if whole and len(known) else numbers
        else:
            out[name] = cells
    return pd.DataFrame(out, index=df.index)


def frame(rows: list[dict], schema: Schema, meta: dict) -> pd.DataFrame:
    """Rows as a DataFrame in the schema's column order, each column typed by the schema."""
    names = list(dict.fromkeys([*(n for n in schema.names if any(n in r for r in rows)),
                                *(k for r in rows for k in r)]))
    df = pd.DataFrame.from_records([{n: r.get(n) for n in names} for r in rows], columns=names)
    df = pd.DataFrame({n: _typed(df[n], schema.column(n).type) for n in names}, index=df.index)
    df.attrs = {"meta": meta, "schema": {**schema.data, "units": schema.units()}}
    return df


def _typed(values: pd.Series, kind: str | None) -> pd.Series:
    if kind == "float":
        try:
            return pd.to_numeric(values).astype("float64")
        except (ValueError, TypeError):
            return values  # text in a number column: kept as it is, not turned into NaN
    if kind == "int":
        try:
            return pd.to_numeric(values).astype("Int64")
        except (ValueError, TypeError):
            return values.convert_dtypes()
    if kind == "bool":
        return values.astype("boolean") if values.dropna().map(type).eq(bool).all() else values
    if kind == "str":
        return values.astype("string")
    return values.convert_dtypes()


def records(df: pd.DataFrame) -> list[dict]:
    """A DataFrame's rows as plain Python values (int, float, bool, str, None for NA)."""
    return [{k: _plain(v) for k, v in row.items()} for row in df.astype(object).to_dict("records")]


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def _warn(message: str) -> None:
    print(f"mfu: warning: {message}", file=sys.stderr)
