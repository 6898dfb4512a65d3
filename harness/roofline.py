"""The roofline chart of a run: every measured case against the device's compute and memory roofs.

x is arithmetic intensity (FLOP per byte moved), y achieved TFLOPS, both logarithmic. Each dtype
measured gets its compute roof, min(peak, intensity · bandwidth): solid from the datasheet
(meta.json `peak`), dashed from measured ceilings (meta.json `ceilings`, from `mfu ceilings`)
where the run has them. Points are coloured by backend and shaped by dtype. A device without a
datasheet peak (a CPU) gets its points and no roofs, and the title says so.

Built on matplotlib's Figure directly (no pyplot, no global state); PNG and SVG come from it.
"""

from __future__ import annotations

from pathlib import Path

from harness.schema import Schema

MARKERS = "osD^vP*Xh<>"
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]


def points(rows: list[dict]) -> list[dict]:
    """The rows that can be plotted: measured, with an intensity and a throughput."""
    return [r for r in rows if r["status"] == "ok" and r.get("intensity") and r.get("tflops")]


def roofs(meta: dict, dtypes: list[str]) -> list[dict]:
    """One roof per dtype and source: {label, dtype, source, peak_tflops, bandwidth_tbs}."""
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


def figure(rows: list[dict], meta: dict):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pts = points(rows)
    dtypes = list(dict.fromkeys(r["dtype"] for r in pts))
    backends = list(dict.fromkeys(r["backend"] for r in pts))
    peak_key = Schema(meta.get("schema") or {}).peak_key  # the run's own dtype -> peak key
    lines = roofs(meta, [peak_key(d) for d in dtypes])
    fig = Figure(figsize=(10, 6.5), layout="constrained")
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
    for i, backend in enumerate(backends):
        for j, dtype in enumerate(dtypes):
            mine = [r for r in pts if r["backend"] == backend and r["dtype"] == dtype]
            if mine:
                ax.scatter([r["intensity"] for r in mine], [r["tflops"] for r in mine], s=46, zorder=3,
                           color=COLOURS[i % len(COLOURS)], marker=MARKERS[j % len(MARKERS)],
                           edgecolors="black", linewidths=0.5, label=f"{backend} {dtype}")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)

    handles = [Line2D([], [], color=COLOURS[i % len(COLOURS)], marker="o", linestyle="", label=b)
               for i, b in enumerate(backends)]
    handles += [Line2D([], [], color="grey", marker=MARKERS[j % len(MARKERS)], linestyle="", label=d)
                for j, d in enumerate(dtypes)]
    sources = list(dict.fromkeys(ln["source"] for ln in lines))
    handles += [Line2D([], [], color="black", linestyle=_STYLE[s], label=f"{s} roof") for s in sources]
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=9, framealpha=0.9, ncols=2 if len(handles) > 8 else 1)
    ax.set_title(_title(meta, lines, len(pts)), fontsize=11)
    return fig


def save(fig, out_dir: Path, stem: str = "roofline") -> list[Path]:
    """A figure as PNG and SVG; the SVG keeps its text as text (smaller, searchable, selectable)."""
    from matplotlib import rc_context

    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130)
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": stem}):
        fig.savefig(paths[1], metadata={"Date": None})  # the same run gives the same file
    return paths


_STYLE = {"datasheet": "-", "measured": "--"}


def _draw_roof(ax, roof: dict, x_lo: float, x_hi: float) -> None:
    peak, bandwidth = roof["peak_tflops"], roof["bandwidth_tbs"]
    ridge = peak / bandwidth
    style = dict(color="black" if roof["source"] == "datasheet" else "dimgrey", linestyle=_STYLE[roof["source"]],
                 linewidth=1.2, zorder=2)
    start = min(x_lo, ridge)
    ax.plot([start, ridge, max(x_hi, ridge)], [start * bandwidth, peak, peak], **style)
    ax.annotate(f"{roof['dtype']} {peak:g}", xy=(1, peak), xycoords=("axes fraction", "data"),
                xytext=(4, 0), textcoords="offset points", ha="left", va="center", fontsize=8,
                color=style["color"])


def _title(meta: dict, lines: list[dict], count: int) -> str:
    device = (meta.get("device") or {}).get("name") or "?"
    title = f"{meta.get('suite', 'run')} on {device}: {count} measured cases"
    if not lines:
        return title + "\nno datasheet peak for this device: points only, no roofs"
    bw = {ln["source"]: ln["bandwidth_tbs"] for ln in lines}
    parts = [f"{s} memory roof {b:.3g} TB/s" for s, b in bw.items()]
    if "measured" not in bw:
        parts.append("no measured ceilings (run `mfu ceilings`)")
    return title + "\n" + "; ".join(parts)
