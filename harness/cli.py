"""The `mfu` command line: run, plan and gpus.

Usage and suite errors print one line (`FILE: cases[2].heads: ...`) and exit 2, never a traceback;
so does a file that cannot be read or written (`DIR/results.csv: Permission denied`), in any command.
`mfu run` exits 0 when every case is ok or skipped, 1 when any is error, mismatch or suspect, and
130 when interrupted (after writing what finished).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from harness.errors import UsageError, os_error_text
from harness.present import tables
from harness.present.summary import fmt
from harness.store import rundir_lock
from harness.store.results import RunDir

if TYPE_CHECKING:  # annotations only: reading commands must not import workloads (and torch)
    from harness.hardware import specs
    from harness.measure import config
    from harness.present import summary

EXIT_USAGE = 2
PLAN_SUMMARY_OVER = 60  # more planned cases than this: a grouped summary, not every case
# Modules that each add one subcommand: a module-level `add_command(subparsers)` registers a parser
# whose `command` default is a function (args, console) -> exit code.
COMMAND_MODULES: list[str] = ["harness.hardware.ceilings", "harness.present.compare.command", "harness.present.history", "harness.present.report", "harness.present.export",
                               "harness.present.claims", "harness.checkup"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    # A terminal's tables are fitted to its width (harness/present/tables.py); in a pipe or a CI log the
    # tables are markdown and every other line is printed whole, never folded at 80 columns.
    console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
    if getattr(args, "format", None) in ("csv", "json"):
        console = Console(highlight=False, stderr=True, soft_wrap=True)  # stdout carries only the data
    try:
        return args.command(args, console)
    except UsageError as exc:  # config.ConfigError is one too
        print(f"mfu: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # an output that cannot be written (read-only, full, missing), or an input unread
        # A failed write() names no file: it is the command's output then.
        output = getattr(args, "out", None) or getattr(args, "plot", None)
        print(f"mfu: {os_error_text(exc, output)}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfu", description="Measure GPU FLOP and bandwidth utilization.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite and write a run directory")
    run.add_argument("config", nargs="?", help="suite YAML (default: the shipped suite for the device)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    run.add_argument("--out", type=Path, help="run directory, new or empty (default: runs/<time>-<suite>)")
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue a run directory of the same suite, skipping finished cases")
    run.add_argument("--force", action="store_true",
                     help="start over in an --out that holds a run: delete that run's files (other files are kept)")
    run.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                     help="interleave N passes over the suite, to tell drift from noise")
    run.add_argument("--only", metavar="REGEX", help="run only the cases whose case_id matches")
    run.add_argument("--isolate", choices=("run", "case", "none"), default="run",
                     help="run: one worker process for the run, replaced after a case that kills, hangs or "
                          "poisons it (default); case: a fresh worker per case; none: in this process, unprotected "
                          "and without a time limit (for a debugger)")
    run.add_argument("--case-timeout", type=_positive_float, metavar="S",
                     help="a case with no result after S seconds (compile and autotune included) is an error "
                          "row, and its worker is replaced (default: the suite's timing.case_timeout_s, 600)")
    run.add_argument("--nproc", type=_positive_int, metavar="N",
                     help="run on N GPUs of this node at once: starts torchrun with N ranks (for several "
                          "nodes, start `mfu run` under torchrun yourself; see the README)")
    run.add_argument("--straggler-threshold", type=_fraction, default=0.05, metavar="F",
                     help="in a run on several GPUs, a rank more than F (0.05 = 5%%) slower than the median of "
                          "a case's ranks is called a straggler")
    add_output_flags(run, columns=True)
    run.add_argument("--long", action="store_true",
                     help="one row per case instead of the backends side by side (implied by --columns and --wide)")
    run.set_defaults(command=_run)

    plan = sub.add_parser("plan", help="expand a suite and predict its cost, allocating nothing")
    plan.add_argument("config", nargs="?", help="suite YAML (default: the shipped GPU suite)")
    plan.add_argument("--gpu", help="peak table entry to predict on, e.g. h100-sxm (see `mfu gpus`)")
    plan.add_argument("--out", type=Path, help="write DIR/results.csv")
    plan.add_argument("--only", metavar="REGEX", help="plan only the cases whose case_id matches")
    plan.add_argument("--all", action="store_true",
                      help=f"list every case even when there are more than {PLAN_SUMMARY_OVER}")
    plan.add_argument("--nproc", default="1", metavar="N",
                      help="ranks (GPUs) per node the collectives are predicted over, as `mfu run --nproc N` "
                           "would start (default 1: one GPU, no interconnect)")
    plan.add_argument("--nnodes", default="1", metavar="M",
                      help="nodes: more than 1 puts the collectives on the network instead of NVLink (default 1)")
    add_output_flags(plan)
    plan.set_defaults(command=_plan)

    gpus = sub.add_parser("gpus", help="list the peak table, or one entry in full")
    gpus.add_argument("key", nargs="?", help="one entry (e.g. h100-sxm): every figure with its sources")
    gpus.add_argument("--detect", action="store_true", help="show what this machine's GPU matched and why")
    add_output_flags(gpus)
    gpus.set_defaults(command=_gpus)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in NEEDS:
                raise
            _unavailable(sub, name.rsplit(".", 1)[-1], exc.name)
            continue
        module.add_command(sub)
    return parser


# What measuring needs and reading does not: without it, `mfu compare`, `history`, `report`,
# `export` and `claims --from` still work, and the commands that measure say what is missing.
NEEDS = ("torch", "triton")


def _unavailable(sub, command: str, missing: str) -> None:
    def refuse(args, console) -> int:
        raise UsageError(f"mfu {command} needs {missing}, which is not installed")

    p = sub.add_parser(command, help=f"(needs {missing}, not installed)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(command=refuse)


def add_output_flags(parser: argparse.ArgumentParser, columns: bool = False) -> None:
    """--format (and for run, --columns and --wide): how a command's tables are printed."""
    parser.add_argument("--format", choices=("console", "md", "markdown", "csv", "json"),
                        help="console: fitted to the terminal; md: markdown; csv, json: the data "
                             "(default: console on a terminal, md in a pipe or log)")
    if columns:
        parser.add_argument("-c", "--columns", metavar="SPEC",
                            help="add or remove columns of the per-case table, e.g. +power_w,-gbps")
        parser.add_argument("--wide", action="store_true", help="every column of the per-case table")


def default_suite(kind: str):
    """The suite (a config.Suite) shipped inside the package for this device kind."""
    from harness.measure import config

    name = f"default-{kind}.yaml"
    text = (resources.files("harness") / "suites" / name).read_text()
    return config.parse(text, f"<shipped {name}>")


def _run(args, console: Console) -> int:
    from harness.distributed import launch
    from harness.measure import faults

    faults.check_environment()  # a malformed MFU_INJECT_FAULT is refused before anything is written
    if args.resume and args.force:
        raise UsageError("--force starts a run over and --resume continues one: give one of them")
    if args.resume and args.out and args.out.resolve() != args.resume.resolve():
        raise UsageError("--resume DIR writes to DIR: give it without --out")
    try:
        here = launch.Launch.from_environment()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.nproc and here:
        raise UsageError("--nproc starts torchrun itself: under torchrun, leave it out")
    if args.nproc:
        return launch.run_torchrun(args.nproc, _without_nproc(args.argv))
    if here and args.isolate == "none":
        raise UsageError("--isolate none runs cases in the launching process, which a distributed run keeps "
                         "for coordination: use --isolate run or case under torchrun")
    if here is None:
        with _claimed(args, console) as (suite, kind, out, resume):
            return _measure(suite, kind, out, console, args, resume)
    return _run_rank(args, console, here)


def _run_rank(args, console: Console, here) -> int:
    """One rank of a distributed run: rank 0 claims the run directory and hands every rank the suite,
    the device kind and the directory (each rank's worker writes its log there)."""
    from harness.distributed import launch
    from harness.distributed.control import Control
    from harness.measure import supervisor

    case_timeout = args.case_timeout or 600.0
    control = Control(here, timeout_s=max(3600.0, 2 * case_timeout + supervisor.START_LIMIT_S))
    try:
        if control.writes:
            shared = False
            try:
                with _claimed(args, console) as claimed:
                    control.share(claimed)
                    shared = True
                    return launch.finish(_measure(*claimed[:3], console, args, claimed[3], control), True)
            except UsageError as exc:
                if not shared:
                    control.share(str(exc))  # the other ranks stop too, instead of waiting
                raise
        claimed = control.share(None)
        if isinstance(claimed, str):
            raise UsageError(f"rank 0 stopped the run: {claimed}")
        suite, kind, out, resume = claimed
        _device_kind(kind, {})
        out.mkdir(parents=True, exist_ok=True)  # for this rank's worker log (a host without rank 0's disk)
        return launch.finish(_measure(suite, kind, out, console, args, resume, control), False)
    finally:
        control.close()


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line a rank runs: this one without --nproc N."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@contextlib.contextmanager
def _claimed(args, console: Console):
    """(suite, device kind, run directory, resuming) of this `mfu run`, holding the directory's lock."""
    from harness.measure import config

    if args.resume:
        yield from _resumed(args, console)
        return
    kind = _device_kind(args.device, {})
    if args.config:
        suite = config.load(args.config)
    else:
        if kind == "cpu" and not args.device:
            console.print("No CUDA GPU found: running the small CPU suite (GPU peaks do not apply).")
        suite = default_suite(kind)
    suite = _only(suite, args.only)
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    with rundir_lock.locked(out):
        for line in rundir_lock.claim_new(out, args.force):
            console.print(line, markup=False, soft_wrap=True)
        yield suite, kind, out, False


def _resumed(args, console: Console):
    """Continue a run directory: the same suite, under its lock, after setting aside a cut-short line."""
    from harness.measure import config

    out = args.resume
    if not out.is_dir():
        raise UsageError(f"{out}: no such run directory")
    with rundir_lock.locked(out):  # first: a run still starting there has not written meta.json yet
        if not (out / "meta.json").is_file():
            raise UsageError(f"{out}: no meta.json there; is it a run directory?")
        run_dir = RunDir(out)
        previous = run_dir.read_meta()
        if not isinstance(previous.get("suite_text"), str):
            raise UsageError(f"{out}/meta.json: no suite_text, so this run cannot be resumed")
        if args.device and previous.get("device_kind") not in (None, args.device):
            raise UsageError(f"{out} was run on {previous['device_kind']}: resume it without --device "
                             f"{args.device}, or start a new run with --out")
        kind = _device_kind(args.device, previous)
        stored = config.parse(previous["suite_text"], previous.get("suite_source") or str(out / "meta.json"))
        suite = config.load(args.config) if args.config else stored
        changed = config.differences(stored, suite)
        if changed:
            raise UsageError(f"{out} holds a run of another suite ({'; '.join(changed)}): resume it without "
                             f"a suite file, or start this suite with another --out")
        if previous.get("world_size", 1) != _world_size():
            raise UsageError(f"{out} was run by {previous.get('world_size', 1)} ranks: resume it with as many")
        warning = run_dir.repair()
        if warning:
            console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
        yield _only(suite, args.only), kind, out, True


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", 1))


def _device_kind(asked: str | None, previous: dict) -> str:
    from harness.hardware import device

    kind = asked or previous.get("device_kind") or device.default_device()
    if kind == "cuda" and not _cuda_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    return kind


def _measure(suite: config.Suite, kind: str, out: Path, console: Console, args, resume: bool, control=None) -> int:
    """runner.run, holding the lock; a write that fails midway says where the finished cases are."""
    from harness.measure import runner

    try:
        return runner.run(suite, kind, out, console, resume=resume, repeat=args.repeat,
                          isolate=args.isolate, case_timeout_s=args.case_timeout, view=_view(args),
                          control=control, straggler_threshold=args.straggler_threshold)
    except OSError as exc:
        kept = RunDir(out).rows() if (out / "cases.jsonl").exists() else []
        if not kept:
            raise
        raise UsageError(f"{os_error_text(exc, out)}; the {len(kept)} finished cases are kept in "
                         f"{out / 'cases.jsonl'}: continue with --resume {out}") from None


def _view(args) -> "summary.View":
    from harness.present import summary

    long = args.long or bool(args.columns) or args.wide
    return summary.View("long" if long else "side", args.columns, args.wide, tables.output_format(args.format))


def _only(suite: config.Suite, pattern: str | None) -> config.Suite:
    """The suite narrowed to the cases whose case_id matches `pattern` (a regular expression)."""
    if pattern is None:
        return suite
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--only: not a regular expression ({exc})") from None
    cases = [c for c in suite.cases if regex.search(c.case_id)]
    if not cases:
        raise UsageError(f"--only: no case_id of {suite.source} matches {pattern!r} "
                         f"(ids look like {suite.cases[0].case_id})")
    return dataclasses.replace(suite, cases=cases)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, e.g. 0.05 for 5% (got {text!r})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 (got {text!r})")
    return value


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _count(flag: str, text: str) -> int:
    """A whole number of at least 1 given to `flag`, or a one-line usage error."""
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{flag}: must be a whole number of at least 1 (got {text!r})")
    return int(text)


def _plan(args, console: Console) -> int:
    from harness.distributed.launch import World
    from harness.hardware import device, specs
    from harness.measure import config, plan, runner

    suite = _only(config.load(args.config) if args.config else default_suite("cuda"), args.only)
    spec = None
    if args.gpu:
        try:
            spec = specs.lookup(args.gpu)
        except ValueError as exc:
            raise UsageError(f"--gpu: {exc}") from None
    elif _cuda_available():
        spec = specs.resolve(device.detect("cuda"))
    if args.out and (args.out / "cases.jsonl").exists():
        raise UsageError(f"{args.out} holds a run: plan --out would replace its results.csv; choose another --out")
    nproc, nnodes = _count("--nproc", args.nproc), _count("--nnodes", args.nnodes)
    world = World(nproc * nnodes, nproc)
    rows = plan.plan(suite, spec, world)
    if args.out:
        RunDir(args.out).write_csv(rows, runner.param_columns(suite))
    fmt = tables.output_format(args.format)
    shown = plan.tables(suite, rows, spec, every=args.all or len(rows) <= PLAN_SUMMARY_OVER or fmt in ("csv", "json"),
                        world=world)
    if len(rows) > PLAN_SUMMARY_OVER and not args.all and fmt not in ("csv", "json"):
        shown[0].notes.append(f"{len(rows)} cases: every one is in " + (
            f"{args.out / 'results.csv'}" if args.out else "DIR/results.csv with --out DIR") + " (or list them with --all)")
    tables.emit(shown, fmt, console, records=rows)
    if fmt in ("console", "md") and args.out:
        console.print(f"written: {args.out / 'results.csv'}")
    return 0


GPU_TABLE_DTYPES = ("bf16", "fp8")  # the peaks `mfu gpus` lists for every GPU (dtype_names.PEAK_KEYS)
GPU_COLUMNS = [("key", "key"), ("name", "name"), *((d, f"{d} TFLOPS") for d in GPU_TABLE_DTYPES),
               ("bandwidth_tbs", "TB/s"), ("sms", "SMs"), ("origin", "peaks")]


def _gpus(args, console: Console) -> int:
    from harness.hardware import device, specs

    if args.detect:
        if not _cuda_available():
            console.print("No CUDA GPU visible to torch: nothing to detect (a CPU has no datasheet peak).")
            return 0
        for line in specs.explain(device.detect("cuda")):
            console.print(line)
        return 0
    fmt = tables.output_format(args.format)
    if args.key:
        try:
            spec = specs.lookup(args.key)
        except ValueError as exc:
            raise UsageError(f"mfu gpus: {exc}") from None
        tables.emit([_gpu_entry(spec)], fmt, console, records=[spec.to_dict()])
        return 0
    rows = [[s.key, s.name, *(fmt_number(s.peaks_tflops.get(d)) for d in GPU_TABLE_DTYPES),
             fmt_number(s.bandwidth_tbs), fmt_number(s.sms), s.origin]
            for s in specs.table()]
    table = tables.Table("GPUs: dense datasheet peaks and memory bandwidth", [h for _, h in GPU_COLUMNS], rows,
                         ["`mfu gpus KEY` shows one entry in full, with its sources; use the key with --gpu"],
                         priorities=[0, 3, 0, 0, 0, 1, 2], keys=1)
    tables.emit([table], fmt, console, records=[s.to_dict() for s in specs.table()])
    return 0


def _gpu_entry(spec: specs.PeakSpec) -> tables.Table:
    """One peak-table entry, every figure a row, with its source and notes below."""
    figures = [("name", spec.name), ("architecture", spec.arch), ("origin", spec.origin)]
    figures += [(f"{k} dense TFLOPS" if k != "int8" else "int8 dense TOPS", fmt_number(v))
                for k, v in spec.peaks_tflops.items()]
    figures += [("memory bandwidth TB/s", fmt_number(spec.bandwidth_tbs)), ("memory GB", fmt_number(spec.memory_gb)),
                ("SMs", fmt_number(spec.sms)), ("boost clock MHz", fmt_number(spec.boost_mhz)),
                ("L2 MB", fmt_number(spec.l2_mb)),
                # per GPU and direction, comparable to nccl-tests' busbw (gpus.yaml's header)
                ("NVLink GB/s per direction", fmt_number(spec.nvlink_gbs)),
                ("network GB/s per direction", fmt_number(spec.network_gbs))]
    notes = [f"source: {spec.source}"] + ([f"links source: {spec.links_source}"] if spec.links_source else [])
    notes += [f"notes: {spec.notes}"] if spec.notes else []
    return tables.Table(f"{spec.key}: {spec.name}", ["figure", "value"],
                        [[k, v] for k, v in figures if v], notes)


def fmt_number(value) -> str:
    return fmt(value, "{:g}")


if __name__ == "__main__":
    sys.exit(main())
