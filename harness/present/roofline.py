"""The roofline chart of a run: every measured case against the device's compute and memory roofs.

x is arithmetic intensity (FLOP per byte moved), y achieved TFLOPS, both logarithmic. Each dtype
measured gets its compute roof, min(peak, intensity · bandwidth): solid from the datasheet
(meta.json `peak`), dashed from measured ceilings (meta.json `ceilings`, from `mfu ceilings`)
where the run has them. A device without a datasheet peak (a CPU) gets its measured roofs if any,
or its points alone, and the title says so.

Readable at a glance: dtypes whose roofs coincide share one label ("fp8/int8 1979 TFLOPS"); the
labels sit right of the plot, spread apart so none overlaps, each tied to its roof by a leader
line; numbers carry 4 significant digits and a unit. Points are coloured by backend (legend below
the plot, any number of backends) and shaped by dtype (legend in the plot's upper left, the
region above the memory roof where no point can be). Each point is its own artist with the gid
`point-<i>` (i: its index in `points(rows)`), so the SVG gets a <title> per point that a browser
shows on hover: problem, backend, dtype, TFLOPS, GB/s, MFU, MBU.

Built on matplotlib's Figure directly (no pyplot, no global state); PNG and SVG come from it.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from harness.store import ids
from harness.store.schema import Schema

MARKERS = "osD^vP*Xh<>"
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
LABEL_GAP_PT = 11  # vertical distance between two roof labels' centres (8 pt text)
_STYLE = {"datasheet": "-", "measured": "--"}
_INK = {"datasheet": "black", "measured": "dimgrey"}


def points(rows: list[dict]) -> list[dict]:
    """The rows that can be plotted: measured, with an intensity and a throughput."""
    return [r for r in rows if r["status"] == "ok" and r.get("intensity") and r.get("tflops")]


def roofs(meta: dict, dtypes: list[str]) -> list[dict]:
    """One roof per dtype and source: {dtype, source, peak_tflops, bandwidth_tbs}."""
    found = []
    peak = meta.get("peak") or {}
    ceilings = meta.get("ceilings") or {}
    measured_bw = ceilings.get("bandwidth_gbps")
    for source, peaks, bandwidth in (
        ("datasheet", peak.get("peaks_tflops") or {}, peak.get("bandwidth_tbs")),
        ("measured", ceilings.get("matmul_tflops") or {}, measured_bw / 1e3 if measured_bw else None),
    ):
        for dtype in dtypes:
            if peaks.get(dtype) and bandwidth:
                found.append({"dtype": dtype, "source": source, "peak_tflops": peaks[dtype],
                              "bandwidth_tbs": bandwidth})
    return found


def merged_roofs(lines: list[dict]) -> list[dict]:
    """The roofs to draw and label: dtypes of one source with the same peak share one roof,
    labelled like 'fp8/int8 1979 TFLOPS'."""
    merged: dict[tuple, dict] = {}
    for ln in lines:
        key = (ln["source"], ln["peak_tflops"], ln["bandwidth_tbs"])
        if key in merged:
            merged[key]["dtypes"].append(ln["dtype"])
        else:
            merged[key] = {**ln, "dtypes": [ln["dtype"]]}
    for roof in merged.values():
        roof["label"] = f"{'/'.join(roof['dtypes'])} {rate(roof['peak_tflops'])}"
    return list(merged.values())


def rate(tflops: float) -> str:
    """A compute rate with its unit: '1979 TFLOPS', '51.36 TFLOPS', '427 GFLOPS'."""
    return f"{_digits(tflops)} TFLOPS" if tflops >= 1 else f"{_digits(tflops * 1e3)} GFLOPS"


def bandwidth(tbs: float) -> str:
    """A bandwidth with its unit: '4.351 TB/s', '21.3 GB/s'."""
    return f"{_digits(tbs)} TB/s" if tbs >= 1 else f"{_digits(tbs * 1e3)} GB/s"


def _digits(value: float) -> str:
    """Four significant digits, without exponents at 1000 and above."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def hover_text(row: dict) -> str:
    """What a point says on hover: the case's problem, backend and dtype, and its numbers."""
    problem = ids.params(row)
    mfu, mbu = (("n/a" if row.get(k) is None else f"{row[k]:.1%}") for k in ("mfu", "mbu"))
    gbps = "n/a" if row.get("gbps") is None else f"{_digits(row['gbps'])} GB/s"
    return (f"{row['workload']} {problem.replace(',', ', ')}\n{row['backend']}, {row['dtype']}\n"
            f"{_digits(row['tflops'])} TFLOPS, {gbps}\nMFU {mfu}, MBU {mbu}")


def figure(rows: list[dict], meta: dict):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pts = points(rows)
    dtypes = list(dict.fromkeys(r["dtype"] for r in pts))
    backends = list(dict.fromkeys(r["backend"] for r in pts))
    peak_key = Schema(meta.get("schema") or {}).peak_key  # the run's own dtype -> peak key
    lines = merged_roofs(roofs(meta, [peak_key(d) for d in dtypes]))
    fig = Figure(figsize=(10, 7), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("achieved TFLOPS" + (" (int8: TOPS)" if "int8" in dtypes else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.08)

    xs = [r["intensity"] for r in pts] + [ln["peak_tflops"] / ln["bandwidth_tbs"] for ln in lines]
    ys = [r["tflops"] for r in pts] + [ln["peak_tflops"] for ln in lines]
    x_lo, x_hi = (min(xs) / 3, max(xs) * 3) if xs else (0.1, 1000)
    y_lo, y_hi = (min(ys) / 3, max(ys) * 2) if ys else (0.01, 100)
    for ln in lines:
        _draw_roof(ax, ln, x_lo, x_hi)
    colour = {b: COLOURS[i % len(COLOURS)] for i, b in enumerate(backends)}
    marker = {d: MARKERS[j % len(MARKERS)] for j, d in enumerate(dtypes)}
    for i, r in enumerate(pts):  # one artist per point: its gid carries the hover text into the SVG
        ax.scatter([r["intensity"]], [r["tflops"]], s=46, zorder=3, color=colour[r["backend"]],
                   marker=marker[r["dtype"]], edgecolors="black", linewidths=0.5, gid=f"point-{i}")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_title(_title(meta, lines, len(pts)), fontsize=11)

    if backends:
        fig.legend(handles=[Line2D([], [], color=colour[b], marker="o", linestyle="", label=b) for b in backends],
                   loc="outside lower center", ncols=min(len(backends), 5), fontsize=9,
                   title="backend (colour)", title_fontsize=9, frameon=False)
    shapes = [Line2D([], [], color="grey", marker=marker[d], linestyle="", label=d) for d in dtypes]
    shapes += [Line2D([], [], color=_INK[s], linestyle=_STYLE[s], label=f"{s} roof")
               for s in dict.fromkeys(ln["source"] for ln in lines)]
    if shapes:  # above the memory roof no point can be: the upper left is free when roofs are drawn
        ax.legend(handles=shapes, loc="upper left" if lines else "best", fontsize=9, framealpha=0.9,
                  title="dtype (shape)", title_fontsize=9, ncols=2 if len(shapes) > 5 else 1)
    _label_roofs(fig, ax, lines)
    return fig


def save(fig, out_dir: Path, stem: str = "roofline", hover: list[str] | None = None) -> list[Path]:
    """A figure as PNG and SVG. The SVG keeps its text as text (smaller, searchable, selectable)
    and gives point i the tooltip hover[i] (a <title> in its group)."""
    from matplotlib import rc_context

    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130)
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": stem}):
        fig.savefig(paths[1], metadata={"Date": None})  # the same run gives the same file
    if hover:
        paths[1].write_text(with_titles(paths[1].read_text(), hover))
    return paths


def with_titles(svg: str, hover: list[str]) -> str:
    """The SVG with <title>hover[i]</title> first inside the group of point i."""
    def titled(match: re.Match) -> str:
        return f"{match.group(0)}\n   <title>{html.escape(hover[int(match.group(1))])}</title>"

    return re.sub(r'<g id="point-(\d+)">', titled, svg)


def _draw_roof(ax, roof: dict, x_lo: float, x_hi: float) -> None:
    peak, bandwidth_tbs = roof["peak_tflops"], roof["bandwidth_tbs"]
    ridge = peak / bandwidth_tbs
    start = min(x_lo, ridge)
    ax.plot([start, ridge, max(x_hi, ridge)], [start * bandwidth_tbs, peak, peak], color=_INK[roof["source"]],
            linestyle=_STYLE[roof["source"]], linewidth=1.2, zorder=2)


def _label_roofs(fig, ax, lines: list[dict]) -> None:
    """Each roof's label right of the plot, at its height where there is room, else moved just
    enough to keep LABEL_GAP_PT from its neighbours, with a leader line to the roof's end."""
    if not lines:
        return
    fig.draw_without_rendering()  # lays the figure out, so the plot's height in points is known
    height_pt = ax.get_window_extent().height * 72 / fig.dpi
    lo, hi = (math.log10(v) for v in ax.get_ylim())
    order = sorted(lines, key=lambda ln: ln["peak_tflops"])
    wanted = [(math.log10(ln["peak_tflops"]) - lo) / (hi - lo) for ln in order]
    for ln, y in zip(order, spread(wanted, LABEL_GAP_PT / height_pt)):
        ink = _INK[ln["source"]]
        ax.annotate(ln["label"], xy=(1, ln["peak_tflops"]), xycoords=("axes fraction", "data"),
                    xytext=(1.035, y), textcoords="axes fraction", ha="left", va="center", fontsize=8,
                    color=ink, style="italic" if ln["source"] == "measured" else "normal",
                    arrowprops={"arrowstyle": "-", "color": ink, "linewidth": 0.6, "shrinkA": 1, "shrinkB": 1})


def spread(wanted: list[float], gap: float) -> list[float]:
    """Positions for ascending `wanted`, at least `gap` apart, each as near its wish as can be:
    labels that would overlap form a block centred on the mean of their wishes."""
    blocks: list[list] = []  # [first position, wishes]
    for y in wanted:
        blocks.append([y, [y]])
        while len(blocks) > 1 and blocks[-2][0] + len(blocks[-2][1]) * gap > blocks[-1][0]:
            wishes = blocks[-2][1] + blocks.pop()[1]
            blocks[-1] = [sum(wishes) / len(wishes) - (len(wishes) - 1) * gap / 2, wishes]
    return [first + i * gap for first, wishes in blocks for i in range(len(wishes))]


def _title(meta: dict, lines: list[dict], count: int) -> str:
    device = (meta.get("device") or {}).get("name") or "?"
    title = f"{meta.get('suite', 'run')} on {device}: {count} measured cases"
    if not lines:
        return title + "\nno datasheet peak or measured ceilings for this device: points only, no roofs"
    bw = {ln["source"]: ln["bandwidth_tbs"] for ln in lines}
    parts = [f"{s} memory roof {bandwidth(b)}" for s, b in bw.items()]
    if "datasheet" not in bw:
        parts.append("no datasheet peak for this device")
    if "measured" not in bw:
        parts.append("no measured ceilings (run `mfu ceilings`)")
    return title + "\n" + "; ".join(parts)
