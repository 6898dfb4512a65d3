"""A titled table of text cells with notes, rendered to the console (rich), markdown or HTML.

compare, history and report build their output as Tables, so every format shows the same cells.
Columns whose cells are all empty are dropped when the table is built.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

# Cell text that gets a colour on the console.
STYLES = {"faster": "green", "slower": "red", "failed": "red"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        keep = [i for i in range(len(self.headers)) if any(row[i] for row in self.rows)]
        self.headers = [self.headers[i] for i in keep]
        self.rows = [[row[i] for i in keep] for row in self.rows]

    def numeric(self, column: int) -> bool:
        """Right-aligned: a column where some cell is a number (others may say `skipped`)."""
        return any(NUMBER.fullmatch(row[column]) for row in self.rows)


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?[%×]?")


def number(value, pattern: str = "{}") -> str:
    """A cell: the value formatted, or empty for None, '' and NaN."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return pattern.format(value)


def tflops(value) -> str:
    """Four significant digits, without switching to exponents at 1000 and above."""
    return "" if value is None else (f"{value:.0f}" if value >= 1000 else f"{value:.4g}")


def markdown(tables: list[Table], level: int = 2) -> str:
    lines = []
    for t in tables:
        lines += [f"{'#' * level} {t.title}", ""]
        if t.rows:
            lines += ["| " + " | ".join(t.headers) + " |",
                      "|" + "".join("--:|" if t.numeric(i) else "---|" for i in range(len(t.headers)))]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
            lines.append("")
        lines += [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(lines)


def print_console(tables: list[Table], console: Console) -> None:
    for t in tables:
        if t.rows:
            rich = RichTable(title=escape(t.title), title_justify="left")
            for i, h in enumerate(t.headers):
                rich.add_column(escape(h), justify="right" if t.numeric(i) else "left", overflow="fold")
            for row in t.rows:
                rich.add_row(*(f"[{STYLES[c]}]{c}[/]" if c in STYLES else escape(c) for c in row))
            console.print(rich)
        else:
            console.print(f"[bold]{escape(t.title)}[/]")
        for note in t.notes:
            console.print(f"  {note}", markup=False)


def to_html(tables: list[Table], level: int = 2) -> str:
    parts = []
    for t in tables:
        parts.append(f"<h{level}>{html.escape(t.title)}</h{level}>")
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
