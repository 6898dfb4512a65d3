"""`mfu claims`: run the shipped claims suite on this device and put published MFU/MBU claims beside
what it measured.

The suite ships inside the package (harness/suites/claims-cuda.yaml, -cpu.yaml; configs/claims.yaml
is the GPU one to read and copy). It runs through harness.measure.runner like any suite, into a run
directory (default runs/<time>-claims-<device>), and then harness/present/claim_rules.py turns its rows into
the claims table: printed, and written beside the run as claims.md and a self-contained
claims.html. On a GPU without stored ceilings (`mfu ceilings`), a short ceilings measurement runs
first and is stored, since the exp claim needs the measured exp2 and matmul rates. On a CPU the
suite is tiny and every claim reads "not measurable here": the claims are about GPUs.
`--from RUN` evaluates an existing run directory again, running nothing.
"""

from __future__ import annotations

import html
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness.present import tables
from harness.present.claim_rules import Finding, evaluate
from harness.store import rundir_lock, runs

CEILINGS_BUDGET_S = 60.0  # the matmul sweeps' share; memory and exp probes add a few seconds
HEADERS = ["claim", "source", "what is measured", "holds when", "value on this device", "verdict"]


def add_command(sub) -> None:
    cmd = sub.add_parser("claims", help="test published MFU/MBU claims on this device (runs the claims suite)",
                         description=__doc__.split("\n\n")[0])
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    cmd.add_argument("--out", type=Path, help="run directory (default: runs/<time>-claims-<device>)")
    cmd.add_argument("--from", dest="source", type=Path, metavar="RUN",
                     help="evaluate the claims of an existing run directory instead of running the suite")
    cmd.add_argument("--format", choices=("console", "md", "markdown", "csv", "json"),
                     help="how the claims are printed (default: console on a terminal, md in a pipe or log)")
    cmd.set_defaults(command=_command)


def shipped_suite(kind: str):
    """The claims suite (a config.Suite) for a device kind, as shipped inside the package."""
    from harness.measure import config

    name = f"claims-{kind}.yaml"
    return config.parse((resources.files("harness") / "suites" / name).read_text(), f"<shipped {name}>")


def _command(args, console: Console) -> int:
    from harness.errors import UsageError

    if args.source:  # reading only: no torch, no workload code
        if args.device or args.out:
            raise UsageError("--from evaluates an existing run: give it without --device and --out")
        write(runs.load(args.source), console, args.format)
        return 0
    import torch

    from harness.hardware import device
    from harness.measure import runner

    kind = args.device or device.default_device()
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    suite = shipped_suite(kind)
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    with rundir_lock.locked(out):
        rundir_lock.claim_new(out, force=False)  # never mixed into an existing run or a busy directory
        if kind == "cuda":
            _ensure_ceilings(console)
        code = runner.run(suite, kind, out, console)
    write(runs.load(out), console, args.format)
    return code


def _ensure_ceilings(console: Console) -> None:
    """Measure and store this GPU's ceilings if none are stored: the exp claim needs them. The
    measurement runs as a child `mfu ceilings`, so its memory (and any crash) is not this process's
    while the cases run."""
    from harness.hardware import ceilings, device

    facts = device.detect("cuda")
    if ceilings.load(facts) is not None:
        return
    console.print(f"no measured ceilings for {facts.name}: measuring them first (about "
                  f"{CEILINGS_BUDGET_S + 20:.0f} s, stored for later runs, as `mfu ceilings` does)")
    child = subprocess.run([sys.executable, "-m", "harness.cli", "ceilings", "--device", "cuda",
                            "--budget-s", str(CEILINGS_BUDGET_S)], capture_output=True, text=True)
    for line in child.stdout.splitlines():
        console.print(f"  {escape(line)}")
    if child.returncode != 0:  # the claims that need no ceilings are still worth running
        why = (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        console.print(f"[yellow]{escape(f'ceilings not measured ({why})')}; the exp claim will read "
                      "'not measurable here'[/]")


def table(findings: list[Finding], run: runs.Run) -> tables.Table:
    rows = [[f.claim, f.source, f.measured, f.holds_when, f.value, f.verdict] for f in findings]
    kind = run.meta.get("device_kind")
    notes = [f"run: {run.path}; device: {run.device_name} ({kind or '?'})",
             "holds / does not hold compare the value with the threshold in `holds when`; an \"about X\" "
             "claim is given X ± 10%.",
             "not measurable here: the rows a claim needs did not run or have no denominator (a CPU has "
             "no datasheet peak; exp utilization needs `mfu ceilings`); off a GPU every claim is."]
    if kind != "cuda":
        notes.append("This run is not on a GPU: values show the pipeline working on tiny presets and "
                     "say nothing about the claims.")
    return tables.Table(f"Claims on {run.device_name}", HEADERS, rows, notes)


def blocks(findings: list[Finding]) -> list[tuple[str, str, list[str]]]:
    """One block per finding: the claim with its verdict and value, then its source and rule."""
    return [(f"{f.claim}: {f.verdict}" + (f", {f.value}" if f.value else ""), f.verdict,
             [f"source: {f.source}", f"rule: {f.measured}; holds when {f.holds_when}"]) for f in findings]


def markdown(t: tables.Table, findings: list[Finding]) -> str:
    lines = [f"# {t.title}", ""]
    for head, _, below in blocks(findings):
        lines += [f"- **{head}**"] + [f"  - {b}" for b in below]
    return "\n".join(lines + [""] + [f"- {n}" for n in t.notes] + [""])


def print_blocks(t: tables.Table, findings: list[Finding], console: Console) -> None:
    """The claims as wrapped blocks fitted to the terminal, the verdict coloured."""
    import textwrap

    width = tables.width(console)
    console.print(t.title, style="bold", markup=False)
    colour = {"holds": "green", "does not hold": "red"}
    for head, verdict_, below in blocks(findings):
        console.print()
        for line in textwrap.wrap(head, width, subsequent_indent="  "):
            console.print(line, style=colour.get(verdict_), markup=False, no_wrap=True, soft_wrap=True)
        for b in below:
            for line in textwrap.wrap(b, width, initial_indent="    ", subsequent_indent="      ",
                                      break_on_hyphens=False):
                console.print(line, markup=False, no_wrap=True, soft_wrap=True)
    console.print()
    for note in t.notes:
        for line in textwrap.wrap(note, width, subsequent_indent="  "):
            console.print(line, markup=False, no_wrap=True, soft_wrap=True)


def write(run: runs.Run, console: Console, fmt: str | None = None) -> list[Path]:
    """Print the claims and write claims.md and claims.html into the run directory."""
    findings = evaluate(run.rows, run.meta)
    t = table(findings, run)
    fmt = tables.output_format(fmt)
    text = markdown(t, findings)
    if fmt == "console":
        print_blocks(t, findings, console)
    elif fmt == "md":
        print(text, end="")
    else:
        tables.emit([t], fmt, console, records=[vars(f) for f in findings])
    md, page = run.path / "claims.md", run.path / "claims.html"
    md.write_text(text)
    page.write_text(_html(t))
    if fmt in ("console", "md"):
        console.print(f"claims: {md}, {page}", markup=False, soft_wrap=True)
    return [md, page]


def _html(t: tables.Table) -> str:
    from harness.present.report import STYLE

    return "\n".join([f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(t.title)}</title>",
                      f"<style>{STYLE}</style></head><body>", tables.to_html([t], level=1), "</body></html>"])
