"""`mfu report`: report.md, a self-contained report.html, and the roofline chart as PNG and SVG.

The GPU-shaped run is synthetic (made-up times against the H100 SXM datasheet entry), only to
check what the chart draws; the label-layout and hover tests read the committed H200 run in
results/ (a copy, where a report is written).
"""

import re
import shutil
from itertools import pairwise
from pathlib import Path

import pytest
from matplotlib.text import Text
from test_compare import case_id, make_run, mfu, noisy

from harness.present import report, roofline
from harness.store import runs
from harness.hardware import specs

H200_RUN = Path(__file__).resolve().parent.parent / "results" / "h200-sxm-default-cuda-2026-12-04"

CEILINGS = {"matmul_tflops": {"bf16": 760.0, "fp8": 1300.0}, "bandwidth_gbps": 2900.0, "measured": "2026-01-01"}


@pytest.fixture
def gpu_run(tmp_path):
    cases = {case_id(m, dtype, backend): noisy(t, n=12, seed=i)
             for i, (m, dtype, backend, t) in enumerate([
                 (256, "bf16", "torch", 0.01), (4096, "bf16", "torch", 0.2), (256, "bf16", "triton", 0.012),
                 (4096, "bf16", "triton", 0.25), (4096, "fp8", "torch", 0.12)])}
    cases[case_id(4096, "fp8", "triton")] = "skipped"
    meta = {"peak": specs.lookup("h100-sxm").to_dict(), "ceilings": CEILINGS, "device_kind": "cuda"}
    return make_run(tmp_path / "run", cases, meta=meta)


def test_chart_plots_every_measured_point_by_backend_under_roofs_per_dtype(gpu_run):
    run = runs.load(gpu_run)
    fig = roofline.figure(run.rows, run.meta)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "arithmetic intensity (FLOP per byte moved)" and ax.get_ylabel() == "achieved TFLOPS"
    plotted = roofline.points(run.rows)
    assert [c.get_gid() for c in ax.collections] == [f"point-{i}" for i in range(5)]
    assert [tuple(c.get_offsets()[0]) for c in ax.collections] == [(r["intensity"], r["tflops"]) for r in plotted]
    colours = {r["backend"]: tuple(c.get_facecolor()[0]) for r, c in zip(plotted, ax.collections)}
    assert len(set(colours.values())) == 2  # one colour per backend
    roofs = [(ln.get_linestyle(), max(ln.get_ydata())) for ln in ax.lines]
    assert sorted(roofs, key=lambda r: r[1]) == [("--", 760.0), ("-", 989.5), ("--", 1300.0), ("-", 1979.0)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bf16", "fp8", "datasheet roof", "measured roof"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["torch", "triton"]
    assert sorted(t.get_text() for t in ax.texts) == ["bf16 760 TFLOPS", "bf16 989.5 TFLOPS", "fp8 1300 TFLOPS",
                                                      "fp8 1979 TFLOPS"]
    assert "datasheet memory roof 3.35 TB/s; measured memory roof 2.9 TB/s" in ax.get_title()


def test_roof_labels_of_the_h200_run_are_merged_rounded_and_never_overlap():
    run = runs.load(H200_RUN)
    fig = roofline.figure(run.rows, run.meta)
    ax = fig.axes[0]
    fig.draw_without_rendering()
    box = Text.get_window_extent  # the text alone; an annotation's own extent includes its leader line
    labels = sorted(ax.texts, key=lambda t: box(t).y0)
    assert [t.get_text() for t in labels] == [
        "fp32 51.36 TFLOPS", "fp32 67 TFLOPS", "tf32 378.1 TFLOPS", "tf32 494.5 TFLOPS", "fp16 762.4 TFLOPS",
        "bf16 793 TFLOPS", "bf16/fp16 989.5 TFLOPS", "int8 1005 TFLOPS", "fp8 1455 TFLOPS", "fp8/int8 1979 TFLOPS"]
    boxes = [box(t) for t in labels]
    assert all(low.y1 <= high.y0 for low, high in pairwise(boxes)), "two roof labels overlap"
    plot = ax.get_window_extent()
    assert all(b.x0 > plot.x1 for b in boxes)  # right of the plot, clear of the points
    assert len(ax.lines) == 10 and "measured memory roof 4.351 TB/s" in ax.get_title()
    assert len(fig.legends[0].get_texts()) == 7  # every backend, below the plot


def test_spread_keeps_wishes_when_there_is_room_and_the_gap_when_not():
    assert roofline.spread([0.1, 0.5], 0.05) == [0.1, 0.5]
    assert roofline.spread([0.5, 0.5, 0.5], 0.1) == pytest.approx([0.4, 0.5, 0.6])
    assert roofline.spread([0.1, 0.12, 0.3, 0.31], 0.05) == pytest.approx([0.085, 0.135, 0.28, 0.33])
    assert roofline.spread([0.2, 0.21, 0.24], 0.05) == pytest.approx([0.1667, 0.2167, 0.2667], abs=1e-4)


def test_numbers_carry_four_significant_digits_and_a_unit():
    assert [roofline.rate(v) for v in (1979, 1454.7065, 51.35791, 989.5, 0.427013)] == [
        "1979 TFLOPS", "1455 TFLOPS", "51.36 TFLOPS", "989.5 TFLOPS", "427 GFLOPS"]
    assert [roofline.bandwidth(v) for v in (4.8, 4.351313, 0.0213)] == ["4.8 TB/s", "4.351 TB/s", "21.3 GB/s"]


def test_a_cpu_with_measured_ceilings_gets_measured_roofs_in_gflops(tmp_path):
    ceilings = {"matmul_tflops": {"fp32": 0.427013}, "bandwidth_gbps": 21.3}
    run_dir = make_run(tmp_path / "cpu", {case_id(256, "fp32"): noisy(0.3)}, device={"kind": "cpu", "name": "AMD EPYC"},
                       meta={"peak": None, "ceilings": ceilings})
    run = runs.load(run_dir)
    ax = roofline.figure(run.rows, run.meta).axes[0]
    assert [t.get_text() for t in ax.texts] == ["fp32 427 GFLOPS"]
    assert "measured memory roof 21.3 GB/s; no datasheet peak for this device" in ax.get_title()


def test_every_point_of_the_svg_says_what_it_is_on_hover(tmp_path):
    run_dir = tmp_path / "h200"
    shutil.copytree(H200_RUN, run_dir)
    report.build(run_dir)
    svg = (run_dir / "roofline.svg").read_text()
    titles = re.findall(r'<g id="point-(\d+)">\s*<title>([^<]*)</title>', svg)
    assert [int(i) for i, _ in titles] == list(range(48))
    assert titles[0][1] == "gemm m=4096, n=4096, k=4096\ntorch, bf16\n781.2 TFLOPS, 572.2 GB/s\nMFU 78.9%, MBU 11.9%"
    decode = [t for _, t in titles if "phase=decode" in t and "triton-decode" in t]
    assert decode == [("attention phase=decode, batch=16, heads=32, kv_heads=8, seq_q=1, seq_kv=32768, head_dim=128, "
                       "causal=true, label=llama3-8b\ntriton-decode, bf16\n17.32 TFLOPS, 4331 GB/s\nMFU 1.8%, MBU 90.2%")]
    page = (run_dir / "report.html").read_text()
    assert page.count("<title>") == 49  # the page's own, and one per point
    md = (run_dir / "report.md").read_text()  # long reasons and one-valued columns go under the tables
    assert ("- same in every row: label qwen3-30b-a3b, experts 128, top_k 8, hidden 2048, intermediate 768, "
            "routing balanced, seed 0, dtype bf16, status ok, experts_active 128") in md  # the run's column order
    assert "- m=4096, n=4096, k=4096 tf32 torch: suspect: 106% of the measured matmul ceiling" in md
    assert "| note |" not in md


def test_report_files_exist_with_the_expected_content(gpu_run, capsys):
    assert mfu("report", gpu_run) == 0
    written = capsys.readouterr().out
    for name in ("report.md", "report.html", "roofline.png", "roofline.svg"):
        assert (gpu_run / name).stat().st_size > 0 and f"written: {gpu_run / name}" in written
    md = (gpu_run / "report.md").read_text()
    assert md.startswith("# synthetic on NVIDIA H100 80GB HBM3")
    assert "![roofline](roofline.png)" in md and "measured ceilings: bf16 760, fp8 1300 TFLOPS; 2900 GB/s" in md
    assert "## gemm: throughput by backend, × = speedup over torch" in md and "## gemm: every case" in md
    assert "- m=4096, n=4096, k=4096 fp8 triton: skipped: skipped here" in md
    assert (gpu_run / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (gpu_run / "roofline.svg").read_text()
    assert "arithmetic intensity (FLOP per byte moved)" in svg and "bf16 989.5 TFLOPS" in svg
    assert svg.count("<title>") == 5
    page = (gpu_run / "report.html").read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<img" not in page
    assert "<table>" in page and "<th>×torch</th>" in page


def test_a_cpu_run_plots_points_without_roofs_and_says_so(tmp_path):
    run_dir = make_run(tmp_path / "cpu", {case_id(256, "fp32"): noisy(0.3), case_id(512, "fp32"): noisy(2.0, seed=1)},
                       device={"kind": "cpu", "name": "AMD EPYC"}, meta={"peak": None})
    run = runs.load(run_dir)
    fig = roofline.figure(run.rows, run.meta)
    assert len(fig.axes[0].lines) == 0 and len(fig.axes[0].collections) == 2
    assert "no datasheet peak or measured ceilings for this device: points only, no roofs" in fig.axes[0].get_title()
    paths = report.write(run_dir)
    assert [p.name for p in paths] == ["report.md", "report.html", "roofline.png", "roofline.svg"]
    md = (run_dir / "report.md").read_text()
    assert "chart shows the points without roofs" in md and "datasheet peaks: none for this device" in md
    assert "measured ceilings: none recorded" in md


def test_write_never_fails_the_run_it_reports_on(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cases.jsonl").write_text('{"case_id": "x", "status": "ok"}\n')  # no workload
    assert report.write(broken) == []
    assert "report not written: KeyError" in capsys.readouterr().err


def test_report_needs_a_run_directory(tmp_path, capsys):
    assert mfu("report", tmp_path / "nowhere") == 2
    assert "no such run directory" in capsys.readouterr().err
