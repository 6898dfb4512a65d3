"""`mfu check`: verify a GPU and an install in one short command, into one directory.

Four steps, in order, each a child `mfu` process (python -m harness.cli ...) with its own time
limit, its output logged to DIR/<step>.log:

1. correctness: every workload, backend and dtype at small sizes (the shipped
   suites/check-<device>.yaml, or --suite), with a short timing budget. Every row must be ok or
   skipped; mismatch, error or suspect fails the step.
2. ceilings: `mfu ceilings` with a sweep that fits the step's limit, written to DIR/ceilings.json
   as well as the device store, so the next two steps report against it. On a CPU only to
   DIR/ceilings.json (its store is DIR/mfu-home): a one-second CPU sweep is no denominator, and
   would make the later steps' rows `suspect`.
3. default: the default suite (`mfu run`) into DIR/default.
4. claims: the claims suite into DIR/claims (`mfu run` of it), then `mfu claims --from` on that run
   (claims.md, claims.html). On a CPU the suite is the shipped claims-cpu.yaml; on a GPU,
   suites/check-claims-cuda.yaml: the claims suite cut to fit the budget (the full one takes 10-20
   minutes).

Budget: the steps share --budget-s (default 480 s on a GPU, 180 s on a CPU). Each step's limit is
its SHARE of what is left, over the shares of the steps still to run, so time a step leaves
unused rolls forward. At its limit a step gets SIGINT (the harness then writes what finished) and,
GRACE_S later, SIGKILL; both go to the child's whole process group.

Verdicts: passed (exit 0 within its limit); failed (any other exit within its limit); partial
(stopped at its limit, and what finished was written); timed out (stopped at its limit with nothing
readable, or killed). `mfu check` prints one line per step last, writes check.md and check.json,
and exits 0 only when every step passed (1 otherwise, 2 on a usage error, 130 when interrupted).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from rich.console import Console

from harness.present import tables
from harness.present.claim_rules import evaluate
from harness.store import runs

GRACE_S = 20.0  # after SIGINT: time to write what finished before SIGKILL
DEFAULT_BUDGET_S = {"cuda": 480.0, "cpu": 180.0}
# The ceilings step's matmul sweep gets its limit less this (start-up, the memory and exp probes).
CEILINGS_OVERHEAD_S = {"cuda": 35.0, "cpu": 9.0}
CEILINGS_MAX_SWEEP_S = {"cuda": 150.0, "cpu": 1.0}  # a CPU's ceilings only need to exist
CLAIMS_EVAL_S = 15.0  # what the claims step keeps back for `mfu claims --from`
PASSED, FAILED, PARTIAL, TIMED_OUT, NOT_RUN = "passed", "failed", "partial", "timed out", "not run"


@dataclass
class Plan:
    kind: str  # cpu | cuda
    out: Path
    suite: Path | None = None  # the correctness step's suite, when not the shipped one


@dataclass
class Outcome:
    step: str
    verdict: str
    seconds: float
    limit_s: float
    numbers: str = ""
    exit_codes: list[int | None] = field(default_factory=list)


@dataclass
class Step:
    """One step: its share of the budget, the child command lines (full argv, given the step's
    limit; `mfu(...)` builds them) and a reader that turns what it wrote into key numbers
    and whether its results are usable (None: nothing readable)."""

    name: str
    share: float
    commands: Callable[[Plan, float], list[list[str]]]
    read: Callable[[Plan], tuple[str, bool] | None]
    about: str
    env: Callable[[Plan], dict] = lambda plan: {}  # environment the step's children add


def mfu(*args: str) -> list[str]:
    """The argv of a child `mfu` process, run by this Python with this copy of the harness."""
    return [sys.executable, "-m", "harness.cli", *args]


def shipped(name: str) -> Path:
    """A suite shipped inside the package, as a file path a child process can read."""
    return Path(str(resources.files("harness") / "suites" / name))


def _correctness_commands(plan: Plan, limit_s: float) -> list[list[str]]:
    suite = plan.suite or shipped(f"check-{plan.kind}.yaml")
    return [mfu("run", str(suite), "--device", plan.kind, "--out", str(plan.out / "correctness"))]


def _ceilings_commands(plan: Plan, limit_s: float) -> list[list[str]]:
    sweep = min(CEILINGS_MAX_SWEEP_S[plan.kind], max(1.0, limit_s - CEILINGS_OVERHEAD_S[plan.kind]))
    return [mfu("ceilings", "--device", plan.kind, "--budget-s", f"{sweep:.0f}", "--out",
                str(plan.out / "ceilings.json"))]


def _ceilings_env(plan: Plan) -> dict:
    return {"MFU_HOME": str(plan.out / "mfu-home")} if plan.kind == "cpu" else {}


def _default_commands(plan: Plan, limit_s: float) -> list[list[str]]:
    return [mfu("run", "--device", plan.kind, "--out", str(plan.out / "default"))]


def _claims_commands(plan: Plan, limit_s: float) -> list[list[str]]:
    suite = shipped("claims-cpu.yaml" if plan.kind == "cpu" else "check-claims-cuda.yaml")
    run_dir = plan.out / "claims"
    return [mfu("run", str(suite), "--device", plan.kind, "--out", str(run_dir)),
            mfu("claims", "--from", str(run_dir))]


def _load(path: Path) -> runs.Run | None:
    try:
        run = runs.load(path)
    except Exception:  # a run directory cut short: nothing readable
        return None
    return run if run.rows else None


def _status_counts(run: runs.Run) -> str:
    counts = Counter(r.get("status") for r in run.rows)
    return ", ".join(f"{counts[s]} {s}" for s in ("ok", "skipped", "mismatch", "error", "suspect")
                     if counts[s] or s in ("ok", "skipped"))


def _read_correctness(plan: Plan):
    run = _load(plan.out / "correctness")
    return (_status_counts(run), True) if run else None


def _read_ceilings(plan: Plan):
    try:
        result = json.loads((plan.out / "ceilings.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    matmul, memory = result.get("matmul", {}), result.get("memory", {})
    dtype = "bf16" if plan.kind == "cuda" else "fp32"
    parts = [f"{dtype} {matmul.get(dtype, {}).get('tflops', float('nan')):.1f} TFLOPS"]
    if "gbps" in memory.get("torch-copy", {}):
        parts.append(f"copy {memory['torch-copy']['gbps']:.0f} GB/s")
    if result.get("exp", {}).get("exp2_per_s"):
        parts.append(f"exp2 {result['exp']['exp2_per_s'] / 1e12:.2f} T/s")
    return ", ".join(parts), True


def _headline(run: runs.Run, kind: str) -> str:
    """The torch GEMM a reader looks for first: bf16 at 8192³ on a GPU (MFU), fp32 on a CPU."""
    dtype = "bf16" if kind == "cuda" else "fp32"
    rows = [r for r in run.rows if r.get("workload") == "gemm" and r.get("backend") == "torch"
            and r.get("dtype") == dtype and r.get("status") == "ok" and r.get("m") == r.get("n") == r.get("k")]
    if not rows:
        return ""
    best = max(rows, key=lambda r: r["m"])
    mfu = f" (MFU {best['mfu']:.3f})" if isinstance(best.get("mfu"), float) else ""
    return f"torch {dtype} {best['m']}³ {best['tflops']:.1f} TFLOPS{mfu}; "


def _read_default(plan: Plan):
    run = _load(plan.out / "default")
    return (_headline(run, plan.kind) + _status_counts(run), True) if run else None


def _read_claims(plan: Plan):
    run = _load(plan.out / "claims")
    if not run:
        return None
    verdicts = Counter(f.verdict for f in evaluate(run.rows, run.meta))
    text = ", ".join(f"{n} {v}" for v, n in verdicts.items()) or "no claims evaluated"
    return f"claims: {text}; rows: {_status_counts(run)}", (plan.out / "claims" / "claims.md").exists()


STEPS = [
    Step("correctness", 0.2, _correctness_commands, _read_correctness,
         "every workload, backend and dtype at small sizes"),
    Step("ceilings", 0.15, _ceilings_commands, _read_ceilings, "mfu ceilings, sweep cut to fit", _ceilings_env),
    Step("default", 0.35, _default_commands, _read_default, "the default suite (mfu run)"),
    Step("claims", 0.3, _claims_commands, _read_claims, "the claims suite, then mfu claims --from"),
]


def next_limit(budget_s: float, shares: list[float], spent: list[float]) -> float:
    """The next step's limit: its share of what is left, over the shares of the steps to run."""
    left = budget_s - sum(spent)
    return max(0.0, left * shares[len(spent)] / sum(shares[len(spent):]))


def run_child(argv: list[str], limit_s: float, log, env: dict | None = None) -> tuple[int | None, str]:
    """Run one child until it exits or `limit_s` passes; then SIGINT, and SIGKILL GRACE_S later.
    Returns (exit code or None when killed, how it ended: "exited" | "interrupted" | "killed")."""
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})},
                            start_new_session=True)  # its own group: workers it starts stop with it
    try:
        return proc.wait(timeout=max(0.1, limit_s)), "exited"
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:  # Ctrl-C on `mfu check`: pass it on, let the child write, then stop
        _stop(proc)
        raise
    return _stop(proc)


def _stop(proc: subprocess.Popen) -> tuple[int | None, str]:
    _signal_group(proc, signal.SIGINT)
    try:
        return proc.wait(timeout=GRACE_S), "interrupted"
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return None, "killed"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_step(step: Step, plan: Plan, limit_s: float, console: Console) -> Outcome:
    started = time.monotonic()
    codes, ended = [], "exited"
    commands = step.commands(plan, limit_s)
    with (plan.out / f"{step.name}.log").open("w") as log:
        for i, argv in enumerate(commands):
            left = limit_s - (time.monotonic() - started)
            if i < len(commands) - 1:  # keep time back for the commands after this one
                left -= CLAIMS_EVAL_S * (len(commands) - 1 - i)
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            code, ended = run_child(argv, left, log, env=step.env(plan))
            log.write(f"\n[{ended}, exit code {code}, {time.monotonic() - started:.1f} s into the step]\n")
            log.flush()
            codes.append(code)
            if ended != "exited" or code != 0:
                break
    seconds = time.monotonic() - started
    found = step.read(plan)
    numbers, usable = found if found else ("nothing written", False)
    if ended == "exited":
        verdict = PASSED if codes[-1] == 0 and len(codes) == len(commands) else FAILED
    else:
        verdict = PARTIAL if ended == "interrupted" and usable else TIMED_OUT
    return Outcome(step.name, verdict, seconds, limit_s, numbers, codes)


def check(plan: Plan, budget_s: float, console: Console, steps: list[Step] | None = None) -> list[Outcome]:
    """Run the steps in order within the budget; return one Outcome per step (not run ones too)."""
    steps = STEPS if steps is None else steps
    plan.out.mkdir(parents=True, exist_ok=True)
    shares = [s.share for s in steps]
    outcomes: list[Outcome] = []
    try:
        for step in steps:
            limit = next_limit(budget_s, shares, [o.seconds for o in outcomes])
            if limit < 1.0:
                outcomes.append(Outcome(step.name, NOT_RUN, 0.0, limit, "budget spent"))
                continue
            console.print(f"[bold]{step.name}[/]: {step.about} (limit {limit:.0f} s; log {plan.out / step.name}.log)")
            outcome = run_step(step, plan, limit, console)
            console.print(f"  {outcome.verdict} in {outcome.seconds:.0f} s: {outcome.numbers}")
            outcomes.append(outcome)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the step in flight was told to write what finished[/]")
        done = {o.step for o in outcomes}
        outcomes += [Outcome(s.name, NOT_RUN, 0.0, 0.0, "interrupted") for s in steps if s.name not in done]
    return outcomes


def verdict_table(outcomes: list[Outcome], plan: Plan, budget_s: float) -> tables.Table:
    rows = [[o.step, o.verdict, f"{o.seconds:.0f} s", f"{o.limit_s:.0f} s", o.numbers] for o in outcomes]
    ok = all(o.verdict == PASSED for o in outcomes)
    notes = [f"budget {budget_s:.0f} s on {plan.kind}; {sum(o.seconds for o in outcomes):.0f} s spent; "
             f"logs and results in {plan.out}",
             "check passed" if ok else "check FAILED: every step must pass (see its log)"]
    return tables.Table(f"mfu check: {'passed' if ok else 'failed'}", ["step", "verdict", "took", "limit",
                                                                         "key numbers"], rows, notes)


def add_command(sub) -> None:
    cmd = sub.add_parser("check", help="verify a GPU and this install in a few minutes (correctness, ceilings, "
                                       "default suite, claims)", description=__doc__.split("\n\n")[0])
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    cmd.add_argument("--out", type=Path, help="check directory (default: runs/<time>-check)")
    cmd.add_argument("--budget-s", type=float, help="seconds for all steps together (default: 480 on a GPU, "
                                                     "180 on a CPU)")
    cmd.add_argument("--suite", type=Path, help="correctness step: run this suite instead of the shipped one")
    cmd.set_defaults(command=_command)


def _command(args, console: Console) -> int:
    from harness.errors import UsageError
    from harness.hardware import device
    from harness.measure import config

    kind = args.device or device.default_device()
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    if args.budget_s is not None and args.budget_s <= 0:
        raise UsageError(f"--budget-s: must be positive (got {args.budget_s:g})")
    if args.suite:
        config.load(args.suite)  # a bad suite is a usage error now, not a failed step later
    budget = args.budget_s or DEFAULT_BUDGET_S[kind]
    plan = Plan(kind, args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-check", args.suite)
    console.print(f"mfu check on {kind}: {len(STEPS)} steps within {budget:.0f} s, into {plan.out}")
    outcomes = check(plan, budget, console)
    table = verdict_table(outcomes, plan, budget)
    (plan.out / "check.md").write_text(tables.markdown([table], level=1))
    (plan.out / "check.json").write_text(json.dumps({"device": kind, "budget_s": budget,
                                                     "steps": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    tables.emit([table], tables.output_format(None), console)  # fitted on a terminal, markdown in a pipe
    if any(o.numbers == "interrupted" for o in outcomes):
        return 130
    return 0 if all(o.verdict == PASSED for o in outcomes) else 1
