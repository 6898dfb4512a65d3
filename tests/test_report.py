"""`mfu report`: report.md, a self-contained report.html, and the roofline chart as PNG and SVG.

The GPU-shaped run is synthetic (made-up times against the H100 SXM datasheet entry), only to
check what the chart draws; no number here is a measurement.
"""

import pytest
from test_compare import case_id, make_run, mfu, noisy

from harness import report, roofline, runs, specs

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
    points = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert points == {"torch bf16": 2, "triton bf16": 2, "torch fp8": 1}
    roofs = [(ln.get_linestyle(), max(ln.get_ydata())) for ln in ax.lines]
    assert sorted(roofs, key=lambda r: r[1]) == [("--", 760.0), ("-", 989.5), ("--", 1300.0), ("-", 1979.0)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["torch", "triton", "bf16", "fp8", "datasheet roof", "measured roof"]
    assert "datasheet memory roof 3.35 TB/s; measured memory roof 2.9 TB/s" in ax.get_title()


def test_report_files_exist_with_the_expected_content(gpu_run, capsys):
    assert mfu("report", gpu_run) == 0
    written = capsys.readouterr().out
    for name in ("report.md", "report.html", "roofline.png", "roofline.svg"):
        assert (gpu_run / name).stat().st_size > 0 and f"written: {gpu_run / name}" in written
    md = (gpu_run / "report.md").read_text()
    assert md.startswith("# synthetic on NVIDIA H100 80GB HBM3")
    assert "![roofline](roofline.png)" in md and "measured ceilings: bf16 760, fp8 1300 TFLOPS; 2900 GB/s" in md
    assert "## gemm: throughput by backend, × = speedup over torch" in md and "## gemm: every case" in md
    assert (gpu_run / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (gpu_run / "roofline.svg").read_text()
    assert "arithmetic intensity (FLOP per byte moved)" in svg and "bf16 989.5" in svg
    page = (gpu_run / "report.html").read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<img" not in page
    assert "<table>" in page and "<th>×torch</th>" in page


def test_a_cpu_run_plots_points_without_roofs_and_says_so(tmp_path):
    run_dir = make_run(tmp_path / "cpu", {case_id(256, "fp32"): noisy(0.3), case_id(512, "fp32"): noisy(2.0, seed=1)},
                       device={"kind": "cpu", "name": "AMD EPYC"}, meta={"peak": None})
    run = runs.load(run_dir)
    fig = roofline.figure(run.rows, run.meta)
    assert len(fig.axes[0].lines) == 0 and len(fig.axes[0].collections[0].get_offsets()) == 2
    assert "no datasheet peak for this device: points only, no roofs" in fig.axes[0].get_title()
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
