"""Every table the harness prints: a titled grid of text cells with notes, rendered to a terminal
that it fits, or to markdown, CSV, JSON or HTML.

run, plan, compare, history, gpus, claims, check and report build their output as Tables, so every
format shows the same cells. Console rendering never wraps: a table is fitted to the width by
(1) shortening long text cells with an ellipsis in the middle, (2) switching to short headers
where a table has them (with a legend), (3) dropping columns by priority (registry priorities,
harness/store/columns.py: 0 is never dropped, higher numbers go first), and says which columns it
dropped. A number and a header are never cut. Notes (reasons, legends) are printed below the table
as wrapped prose.

Columns whose cells are all empty are dropped when the table is built. Of the first `keys` columns
(those that tell rows apart), the ones with one value in every row are shown once above the table
instead (`context`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text

# Cell text that gets a colour on the console.
STYLES = {"faster": "green", "slower": "red", "failed": "red", "inconclusive": "yellow"}
GAP = "  "  # between columns
ELLIPSIS = "…"
MIN_TEXT = 12  # a text column is first shortened to no fewer characters than this (or its header)
FORMATS = ("console", "md", "csv", "json")  # --format of run, plan, compare, history, gpus, claims


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    priorities: list[int] | None = None  # per column (harness/store/columns.py meaning); None: all 0
    keys: int = 0  # the first `keys` columns identify a row; constant ones move to `context`
    short_headers: list[str] | None = None  # used, with a legend, when the full ones do not fit
    context: list[str] = field(default_factory=list)  # "dtype: bf16" lines shown above the rows

    def __post_init__(self):
        n = len(self.headers)
        self.priorities = list(self.priorities or [0] * n)
        self.short_headers = list(self.short_headers or self.headers)
        keep = [i for i in range(n) if any(row[i] for row in self.rows)]
        if len(self.rows) > 1:
            constant = [i for i in keep[: self.keys] if i < self.keys and len({row[i] for row in self.rows}) == 1]
            self.context += [f"{self.headers[i]}: {self.rows[0][i]}" for i in constant]
            kept_keys = [i for i in keep if i < self.keys and i not in constant]
            keep = [i for i in keep if i not in constant]
            self.keys = len(kept_keys)
        self._select(keep)

    def _select(self, keep: list[int]) -> None:
        self.headers = [self.headers[i] for i in keep]
        self.short_headers = [self.short_headers[i] for i in keep]
        self.priorities = [self.priorities[i] for i in keep]
        self.rows = [[row[i] for i in keep] for row in self.rows]

    def numeric(self, column: int) -> bool:
        """Right-aligned: a column where most cells are numbers (others may say `skipped`)."""
        filled = [row[column] for row in self.rows if row[column]]
        return 2 * sum(1 for c in filled if NUMBER.fullmatch(c)) >= len(filled) > 0

    def records(self) -> list[dict]:
        return [dict(zip(self.headers, row)) for row in self.rows]


NUMBER = re.compile(r"[+-]?(\d[\d,]*\.?\d*|\.\d+)(e[+-]?\d+)?( ?[%×▲▼])?")


class Footnotes:
    """Numbered notes: the same text gets the same number; cells carry the marker `[n]`."""

    def __init__(self):
        self.texts: dict[str, int] = {}

    def mark(self, text: str | None) -> str:
        if not text:
            return ""
        number_ = self.texts.setdefault(text, len(self.texts) + 1)
        return f" [{number_}]"

    def notes(self) -> list[str]:
        return [f"[{n}] {text}" for text, n in self.texts.items()]


def number(value, pattern: str = "{}") -> str:
    """A cell: the value formatted, or empty for None, '' and NaN."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return pattern.format(value)


def tflops(value) -> str:
    """Four significant digits, without switching to exponents at 1000 and above."""
    return "" if value is None else (f"{value:.0f}" if value >= 1000 else f"{value:.4g}")


# ------------------------------------------------------------------------------ column choice


def choose(available: list[str], default: list[str], spec: str | None = None, wide: bool = False) -> list[str]:
    """The columns to show, in `available`'s order: the default set, or all with `wide`, changed
    by a `--columns` spec like "+power_w,-gbps" (a bare name adds). Unknown names are refused."""
    chosen = set(available if wide else default)
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name = item.lstrip("+-")
        if name not in available:
            from harness.errors import UsageError

            raise UsageError(f"--columns: no column {name!r} here; these are: {', '.join(available)}")
        (chosen.discard if item.startswith("-") else chosen.add)(name)
    return [c for c in available if c in chosen]


# ------------------------------------------------------------------------------ console


def width(console: Console | None = None) -> int:
    """The terminal's width: COLUMNS when set, else the console's (or the real terminal's)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return console.width if console is not None else shutil.get_terminal_size().columns


def fit(t: Table, limit: int) -> tuple[list[int], list[int], list[str], list[str]]:
    """Which columns to show at `limit` characters, each one's width, the headers to use and the
    notes that say what was shortened or left out."""
    n = len(t.headers)
    headers = list(t.headers)
    numeric = [t.numeric(i) for i in range(n)]
    natural = [max([len(headers[i])] + [len(row[i]) for row in t.rows]) for i in range(n)]
    # A numeric column keeps its numbers whole; a text column can give up to MIN_TEXT, then its header.
    def floor(i: int, loose: bool) -> int:
        whole = max([len(headers[i])] + [len(row[i]) for row in t.rows if NUMBER.fullmatch(row[i])])
        if numeric[i]:
            return whole
        return whole if loose else max(whole, min(natural[i], MIN_TEXT))

    shown = list(range(n))
    widths = list(natural)
    notes: list[str] = []
    total = lambda: sum(widths[i] for i in shown) + len(GAP) * (len(shown) - 1)  # noqa: E731

    def shrink(loose: bool, which) -> None:
        while total() > limit:
            candidates = [i for i in shown if which(i) and widths[i] > floor(i, loose)]
            if not candidates:
                return
            i = max(candidates, key=lambda i: widths[i] - floor(i, loose))
            widths[i] = max(floor(i, loose), widths[i] - (total() - limit))

    def distinct_without(i: int) -> bool:
        keys = [k for k in shown if k < t.keys and k != i]
        return len({tuple(row[k] for k in keys) for row in t.rows}) == len({tuple(row[:t.keys]) for row in t.rows})

    def drop(which) -> None:
        while total() > limit:
            droppable = [i for i in shown if t.priorities[i] > 0 and which(i)]
            if not droppable:
                return
            i = max(droppable, key=lambda i: (t.priorities[i], i))
            shown.remove(i)
            dropped.append(t.headers[i])

    dropped: list[str] = []
    values = lambda i: i >= t.keys  # noqa: E731
    shrink(False, values)
    if total() > limit and t.short_headers != t.headers:
        legend = [f"{s} = {h}" for s, h in zip(t.short_headers, t.headers) if s != h]
        headers = list(t.short_headers)
        natural = [max([len(headers[i])] + [len(row[i]) for row in t.rows]) for i in range(n)]
        widths = [max(min(w, natural[i]) if not numeric[i] else natural[i], len(headers[i]))
                  for i, w in enumerate(widths)]
        notes.append("columns: " + "; ".join(dict.fromkeys(legend)))
        shrink(False, values)
    drop(values)
    drop(lambda i: t.priorities[i] > 1 and distinct_without(i))  # a key column that the rest imply
    shrink(False, lambda i: True)
    drop(distinct_without)  # a key column goes only when the rest still tell every row apart
    shrink(True, lambda i: True)
    while total() > limit and len(shown) > 1:  # even the must-show columns do not fit: drop from the right
        dropped.append(t.headers[shown.pop()])
    if dropped:
        notes.append(f"not shown at {limit} columns: {', '.join(reversed(dropped))} (see --wide, --columns)")
    return shown, widths, headers, notes


def shorten(text: str, room: int) -> str:
    """The text in `room` characters, with an ellipsis in the middle when it does not fit."""
    if len(text) <= room:
        return text
    if room <= 1:
        return text[:room]
    head = room // 2
    return text[:head] + ELLIPSIS + text[len(text) - (room - 1 - head):]


def console_lines(t: Table, limit: int) -> list[Text]:
    """The table as lines of styled text, none longer than `limit`."""
    out = [Text(_cut(t.title, limit), style="bold")]
    if t.context:
        out += [Text(w) for w in _wrap(" · ".join(t.context), limit, "  ")]
    if t.rows:
        shown, widths, headers, fit_notes = fit(t, limit)
        numeric = {i: t.numeric(i) for i in shown}

        def line(cells: list[tuple[str, str | None]]) -> Text:
            text = Text()
            for k, (i, (cell, style)) in enumerate(zip(shown, cells)):
                if k:
                    text.append(GAP)
                cell = shorten(cell, widths[i])
                text.append(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]), style=style)
            text.rstrip()
            return text

        out.append(line([(headers[i], "bold") for i in shown]))
        out.append(Text(GAP.join("─" * widths[i] for i in shown)))
        out += [line([(row[i], STYLES.get(row[i])) for i in shown]) for row in t.rows]
    else:
        fit_notes = []
    for note in t.notes + fit_notes:
        out += [Text(w) for w in _wrap(note, limit, "  ")]
    return out


def _wrap(text: str, limit: int, indent: str) -> list[str]:
    return textwrap.wrap(text, limit, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False) or [""]


def _cut(text: str, limit: int) -> str:
    return shorten(text, limit)


def print_console(tables: list[Table], console: Console) -> None:
    limit = width(console)
    for k, t in enumerate(tables):
        if k:
            console.print()
        for line in console_lines(t, limit):
            console.print(line, no_wrap=True, overflow="ignore", crop=False, soft_wrap=True)


# ------------------------------------------------------------------------------ files and pipes


def markdown(tables: list[Table], level: int = 2) -> str:
    lines = []
    for t in tables:
        lines += [f"{'#' * level} {t.title}", ""]
        lines += [f"- {c}" for c in t.context] + ([""] if t.context else [])
        if t.rows:
            lines += ["| " + " | ".join(t.headers) + " |",
                      "|" + "".join("--:|" if t.numeric(i) else "---|" for i in range(len(t.headers)))]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
            lines.append("")
        lines += [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(lines)


def to_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in records for k in r)),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buffer.getvalue()


def to_json(records) -> str:
    return json.dumps(records, indent=1, default=str) + "\n"


def output_format(asked: str | None) -> str:
    """--format as given, or console on a terminal and markdown in a pipe or a CI log."""
    if asked == "markdown":
        return "md"
    return asked or ("console" if sys.stdout.isatty() else "md")


def emit(tables: list[Table], fmt: str, console: Console, records: list[dict] | None = None) -> None:
    """Tables to stdout in a format; csv and json carry `records` (every column), else the cells."""
    if fmt == "console":
        print_console(tables, console)
    elif fmt == "md":
        print(markdown(tables), end="")
    else:
        data = records if records is not None else [dict(r, table=t.title) for t in tables for r in t.records()]
        print(to_csv(data) if fmt == "csv" else to_json(data), end="")


def to_html(tables: list[Table], level: int = 2) -> str:
    parts = []
    for t in tables:
        parts.append(f"<h{level}>{html.escape(t.title)}</h{level}>")
        if t.context:
            parts.append("<p>" + "; ".join(html.escape(c) for c in t.context) + "</p>")
        if t.rows:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
            body = "".join(
                "<tr>" + "".join(f'<td class="{_cell_class(t.numeric(i), c)}">{html.escape(c)}</td>'
                                 for i, c in enumerate(row)) + "</tr>" for row in t.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if t.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in t.notes) + "</ul>")
    return "\n".join(parts)


def _cell_class(numeric: bool, text: str) -> str:
    return " ".join(filter(None, ["num" if numeric else "", text if text in STYLES else ""]))
