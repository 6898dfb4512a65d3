"""A run directory on disk: cases.jsonl (appended per case), results.csv, meta.json, summary.md,
and samples.jsonl (each measured case's raw sample times, for significance tests).

cases.jsonl is the source of truth: one JSON object per finished case, written, flushed and synced
as it finishes, so a crash or Ctrl-C loses at most the case in flight. results.csv and summary.md
are rebuilt from it, and meta.json and results.csv are replaced whole (written beside, then
renamed), so a crash never leaves them half written. Reading back keeps the last row per case_id,
so a resumed run may re-run a case.

A crash in the middle of an append leaves a cut-short last line: readers skip it, `repair()` sets
it aside in cases.jsonl.corrupt before a resume re-runs that case, and every append starts on a
fresh line. A broken line anywhere else is corruption, reported and never rewritten.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

from harness.errors import UsageError
from harness.store import columns

FAILED = ("error", "mismatch", "suspect")  # statuses that make `mfu run` exit 1

CORRUPT_SUFFIX = ".corrupt"  # where a cut-short last line is set aside
# Every file `mfu run` (with its report and claims) writes into a run directory: what `--force`
# may delete when it starts a run over. Anything else in the directory is the user's.
WORKER_LOG = "worker.log"  # the case worker's stdout and stderr (harness/measure/supervisor.py)
RUN_FILES = ("cases.jsonl", "samples.jsonl", "results.csv", "meta.json", "summary.md", "report.md",
             "report.html", "roofline.png", "roofline.svg", "claims.md", "claims.html",
             "cases.jsonl" + CORRUPT_SUFFIX, "samples.jsonl" + CORRUPT_SUFFIX, WORKER_LOG)
PARTIAL_SUFFIX = ".partial"  # `.meta.json.partial`: a whole-file write in progress
RANK_LOG = re.compile(r"worker\.rank\d+\.log")  # the workers of ranks other than 0 (a distributed run)


def worker_log(rank: int = 0) -> str:
    """The file a rank's case worker writes its output to: worker.log for rank 0 (and a single run)."""
    return WORKER_LOG if rank == 0 else f"worker.rank{rank}.log"


def is_run_file(name: str) -> bool:
    """Whether a file name in a run directory is one `mfu run` writes."""
    return name in RUN_FILES or bool(RANK_LOG.fullmatch(name)) or (
        name.startswith(".") and name.endswith(PARTIAL_SUFFIX) and name[1:-len(PARTIAL_SUFFIX)] in RUN_FILES)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cases_file = self.path / "cases.jsonl"

    def append(self, row: dict) -> None:
        _append_line(self.cases_file, json.dumps(_clean(row)))

    def append_samples(self, case_id: str, samples_ms: list[float], pass_index: int | None = None,
                       rank: int | None = None) -> None:
        """Keep a case's raw sample times (6 significant digits) for later significance tests."""
        line = {"case_id": case_id, "samples_ms": [float(f"{x:.6g}") for x in samples_ms]}
        if pass_index is not None:
            line["pass"] = pass_index
        if rank:  # rank 0's lines (and a single-process run's) carry none
            line["rank"] = rank
        _append_line(self.path / "samples.jsonl", json.dumps(line, separators=(",", ":")))

    def samples(self, by_rank: bool = False) -> dict:
        """Raw sample times per case_id (or per (case_id, rank) with by_rank): all passes pooled (the
        last record of each pass), and without by_rank all ranks too.

        Unreadable lines are skipped: samples only sharpen significance tests, the rows are the record.
        """
        by_pass: dict = {}
        for _, row in _lines(self.path / "samples.jsonl"):
            if _is_sample(row):
                rank = row.get("rank", 0)
                key = (row["case_id"], rank) if by_rank else row["case_id"]
                by_pass.setdefault(key, {})[(row.get("pass", 0), rank)] = row["samples_ms"]
        return {key: [x for p in sorted(passes) for x in passes[p]] for key, passes in by_pass.items()}

    def rows(self) -> list[dict]:
        """Finished rows, the last per (case_id, pass, rank), in first-seen order.

        A broken last line (a case cut short by a crash, or one being written now) is skipped;
        a broken line before it is corruption: a UsageError naming the file and line.
        """
        latest: dict[tuple, dict] = {}
        lines = _lines(self.cases_file)
        for i, (number, row) in enumerate(lines):
            problem = _row_problem(row)
            if problem is None:
                latest[(row["case_id"], row.get("pass", 0), row.get("rank", 0))] = row
            elif i < len(lines) - 1:
                raise UsageError(_corrupt_message(self.cases_file, number, problem))
        return list(latest.values())

    def repair(self) -> str | None:
        """Before appending to an existing run: set a cut-short last line of cases.jsonl (and of
        samples.jsonl) aside in *.corrupt and end each file on a fresh line. Returns a warning for
        the user when a case row was set aside; raises UsageError if an earlier line is broken."""
        self.rows()  # raises on corruption before the last line, and changes nothing
        cut = _set_aside_broken_tail(self.cases_file, lambda row: _row_problem(row) is None)
        _set_aside_broken_tail(self.path / "samples.jsonl", _is_sample)
        if cut is None:
            return None
        return (f"{self.cases_file}: line {cut} was cut short (a crash while writing it); set aside in "
                f"{self.cases_file.name}{CORRUPT_SUFFIX}, and its case runs again")

    def write_meta(self, meta: dict) -> None:
        _replace(self.path / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")

    def read_meta(self) -> dict:
        """meta.json, or {} where there is none; a file that is not a JSON object is a UsageError."""
        path = self.path / "meta.json"
        if not path.exists():
            return {}
        try:
            meta = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not valid JSON ({exc}); the run's meta.json is damaged") from None
        if not isinstance(meta, dict):
            raise UsageError(f"{path}: not a JSON object; the run's meta.json is damaged")
        return meta

    def write_csv(self, rows: list[dict], param_columns: list[str]) -> Path:
        """results.csv: the results contract (DESIGN.md), columns in harness/store/columns.py's order
        with the workload parameters after `dtype` and the workloads' extras at the end."""
        names = columns.csv_order(param_columns, rows)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in names})
        out = self.path / "results.csv"
        _replace(out, buffer.getvalue())
        return out


def _corrupt_message(path: Path, line: int, problem: str) -> str:
    return (f"{path}: line {line} is {problem}, and it is not the last line: the file is corrupt "
            f"(kept as it is; move the run aside and run it again)")


def _clean(row: dict) -> dict:
    """JSON has no NaN or infinity: store them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# ------------------------------------------------------------------------------ files, line by line


_BROKEN = object()  # a line that is not UTF-8 JSON


def _lines(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed JSON or _BROKEN) for each non-blank line; [] when there is no file."""
    if not path.exists():
        return []
    lines = enumerate(path.read_bytes().split(b"\n"), start=1)
    return [(number, _parse(raw)) for number, raw in lines if raw.strip()]


def _row_problem(row) -> str | None:
    """None for a usable case row, else what is wrong with the line."""
    if row is _BROKEN:
        return "not valid JSON"
    if not isinstance(row, dict) or not isinstance(row.get("case_id"), str) or "status" not in row:
        return "not a case row (a JSON object with case_id and status)"
    return None


def _set_aside_broken_tail(path: Path, usable) -> int | None:
    """Move a last line that is not `usable` to PATH.corrupt and cut the file before it; make the
    file end on a newline. Returns the line number set aside, or None."""
    if not path.exists():
        return None
    data = path.read_bytes()
    body = data.rstrip(b"\n")
    start = body.rfind(b"\n") + 1  # where the last non-blank line begins
    last = body[start:]
    if last.strip() and not usable(_parse(last)):
        with path.with_name(path.name + CORRUPT_SUFFIX).open("ab") as f:
            f.write(last + b"\n")
        os.truncate(path, start)
        return body.count(b"\n") + 1
    if data and not data.endswith(b"\n"):
        with path.open("ab") as f:
            f.write(b"\n")
    return None


def _is_sample(row) -> bool:
    return isinstance(row, dict) and isinstance(row.get("case_id"), str) and isinstance(row.get("samples_ms"), list)


def _parse(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _BROKEN


def _append_line(path: Path, text: str) -> None:
    """Append one line and sync it to disk; start on a fresh line if the file ends mid-line."""
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        fresh = b""
        if end:
            f.seek(end - 1)
            fresh = b"" if f.read(1) == b"\n" else b"\n"
        f.write(fresh + text.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, text: str) -> None:
    """Write the whole file beside it, then rename it over the old one: never half written."""
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    try:
        partial.write_bytes(text.encode("utf-8"))
        os.replace(partial, path)
    except OSError as exc:  # name the file the user knows, not the hidden partial one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        partial.unlink(missing_ok=True)
