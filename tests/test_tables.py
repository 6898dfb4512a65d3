"""Console tables fit the terminal: every table of a CPU run, a plan of configs/moe.yaml and
`mfu gpus`, rendered at 80 and 120 columns, has no line wider than the terminal, no number or
header cut, and no two rows printed alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.measure import config, plan
from harness.store import runs
from harness.hardware import specs
from harness.present import summary, tables
from harness.present.tables import NUMBER, Table

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (80, 120)
# The shipped CPU suite's shape (every workload, ok and skipped rows, a long backend name), tiny.
TINY = """
suite: tiny-tables
timing: {warmup_ms: 0, min_samples: 3, max_time_s: 0.02, rel_ci: 0.5, l2_flush: false}
cases:
  - workload: gemm
    backends: [torch, triton]
    dtype: [fp32, bf16, fp8]
    shapes: [{m: 16, n: 16, k: 16}, {m: 32, n: 16, k: 16}]
  - workload: moe
    tokens: [1, 8]
    experts: 4
    top_k: 2
    hidden: 32
    intermediate: 16
    backends: [torch-loop, torch-grouped, dense-equivalent]
    dtype: bf16
  - workload: attention
    phase: prefill
    batch: 1
    heads: 2
    kv_heads: 1
    seq_kv: 32
    head_dim: 16
    causal: [true, false]
    backends: [torch, sdpa-math, sdpa-flash]
    dtype: fp32
"""


def check(t: Table, width: int) -> list[str]:
    """Render `t` at `width` and assert the rules; returns the lines."""
    lines = [line.plain for line in tables.console_lines(t, width)]
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    if not t.rows:
        return lines
    shown, _, headers, _ = tables.fit(t, width)
    start = next(i for i, line in enumerate(lines) if line.startswith("─") or " ─" in line[:20]) - 1
    head, body = lines[start], lines[start + 2: start + 2 + len(t.rows)]
    assert all(headers[i] in head for i in shown), head  # every shown header whole
    for row, line in zip(t.rows, body):
        for i in shown:
            if NUMBER.fullmatch(row[i]):
                assert f" {row[i]}" in f" {line} ", (row[i], line)  # the number whole, not cut or folded
    assert len(set(body)) == len(body), "two rows print alike:\n" + "\n".join(body)
    return lines


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> runs.Run:
    suite = tmp_path_factory.mktemp("tables") / "tiny.yaml"
    suite.write_text(TINY)
    out = suite.parent / "run"
    assert cli.main(["run", str(suite), "--device", "cpu", "--out", str(out), "--isolate", "none",
                     "--format", "md"]) in (0, 1)
    return runs.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("form", ["side", "long"])
def test_every_table_of_the_default_cpu_run_fits(cpu_run, width, form):
    shown = summary.console_tables(cpu_run.rows, summary.View(form=form, wide=form == "long"))
    assert {t.title.split(":")[0] for t in shown} == {r["workload"] for r in cpu_run.rows}
    for t in shown:
        check(t, width)


def test_wide_keeps_every_column_in_the_table_and_columns_adds_and_removes(cpu_run):
    rows = [r for r in cpu_run.rows if r["workload"] == "gemm"]
    compact = summary.long_table(rows, "gemm")
    assert "GB/s" in compact.headers and "bytes" not in compact.headers
    changed = summary.long_table(rows, "gemm", "+bytes,-gbps")
    assert "bytes" in changed.headers and "GB/s" not in changed.headers
    assert len(summary.long_table(rows, "gemm", wide=True).headers) > len(compact.headers)
    with pytest.raises(Exception, match="--columns: no column 'nonsense'"):
        summary.long_table(rows, "gemm", "+nonsense")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("every", [True, False])
def test_a_plan_of_the_moe_suite_fits_and_tells_its_336_cases_apart(width, every):
    suite = config.load(ROOT / "configs" / "moe.yaml")
    rows = plan.plan(suite, specs.lookup("h200-sxm"))
    shown = plan.tables(suite, rows, specs.lookup("h200-sxm"), every=every)
    if every:
        assert sum(len(t.rows) for t in shown) == len(rows) == 336
    for t in shown:
        check(t, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_gpus_is_one_line_per_gpu_with_the_key_whole(width, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    assert cli.main(["gpus", "--format", "console"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= width for line in lines)
    for spec in specs.table():
        assert sum(1 for line in lines if line.startswith(spec.key + " ")) == 1  # the --gpu key, on one line
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    assert len(lines) < len(specs.table()) + rule + 6


def test_one_gpu_in_full_names_its_source(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["gpus", "h200-sxm", "--format", "console"]) == 0
    out = capsys.readouterr().out
    assert "source: https://" in out and all(len(line) <= 80 for line in out.splitlines())


def test_text_is_shortened_in_the_middle_and_numbers_never():
    t = Table("t", ["name", "value"], [["a-very-long-backend-name-" + "x" * 40, "123456.7"], ["short", "1"]],
              keys=1)
    lines = [line.plain for line in tables.console_lines(t, 30)]
    assert all(len(line) <= 30 for line in lines) and any("…" in line and "123456.7" in line for line in lines)
    assert tables.shorten("abcdefghij", 5) == "ab…ij"


def test_constant_key_columns_move_above_the_table_and_empty_headings_are_not_printed():
    t = Table("t", ["dtype", "m", "ms"], [["bf16", "1", "2.0"], ["bf16", "2", "3.0"]], keys=2)
    assert t.headers == ["m", "ms"] and t.context == ["dtype: bf16"]
    from harness.present import compare

    assert all(table.rows or table.notes for table in compare.Comparison([], [], []).tables)


def test_markdown_and_csv_in_a_pipe_have_no_box_drawing(cpu_run, capsys):
    assert cli.main(["compare", str(cpu_run.path)]) == 0  # stdout is not a terminal under pytest: markdown
    out = capsys.readouterr().out
    assert "| " in out and "─" not in out and "┃" not in out
    assert cli.main(["gpus", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("name,key,origin")


def test_plan_and_run_give_one_memory_figure_for_a_case():
    from harness.measure import memory

    need = 400 * 2**30
    suite = config.parse("suite: s\ncases:\n  - workload: gemm\n    m: 8192\n    n: 8192\n    k: 8192\n"
                         "    backends: [torch]\n    dtype: bf16\n", "<test>")
    row = plan.plan(suite, None)[0]
    from harness import workloads
    from harness.measure.dtypes import DTYPES

    wl_need = workloads.REGISTRY["gemm"].memory_bytes(suite.cases[0].p, DTYPES["bf16"])
    assert row["memory_gib"] * 2**30 == pytest.approx(memory.required_bytes(wl_need))
    assert memory.gib(memory.required_bytes(need)) in f"needs {memory.gib(memory.required_bytes(need))} GiB"
