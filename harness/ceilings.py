"""`mfu ceilings`: measure what this device really reaches, beside what its datasheet promises.

- matmul: per dtype, a time-boxed sweep of GEMM shapes through the `torch` backend (the vendor
  library), squares first, then seeded random shapes in multiples of 256, as a
  maximum-achievable-matmul finder does. The best shape and its TFLOPS are kept. The first shape
  of each dtype is checked against the reference like any case.
- memory: a copy and a triad through torch, and our SM-driven Triton copy, over buffers far
  larger than the last-level cache. Bytes count reads plus writes (copy 2·N·s, triad 3·N·s).
- exp: exp2 results per second from a Triton chain of dependent exp2s (kernels/probes.py), beside
  the derivation SMs × clock × 16 per clock per SM. On a CPU, torch.exp2 over a cache-sized buffer.

The result is stored per device (GPU UUID, or host for a CPU) under $MFU_HOME/ceilings/ (default
~/.cache/mfu-harness); later runs on that device pick it up for `mfu_ceiling` and `mbu_ceiling`.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import torch

from harness import backends, environment, memory
from harness.device import DeviceFacts
from harness.dtypes import DTYPES
from harness.timing import Timer, TimingSettings
from harness.workloads.gemm import GEMM

MATMUL_DTYPES = {"cuda": ("bf16", "fp16", "fp8", "int8", "tf32", "fp32"), "cpu": ("fp32", "bf16")}
SQUARES = {"cuda": (8192, 4096, 6144, 12288, 16384), "cpu": (512, 1024, 256)}
RANDOM_RANGE = {"cuda": (4, 64), "cpu": (1, 6)}  # multiples of 256
COPY_ELEMENTS = {"cuda": 1 << 28, "cpu": 1 << 25}  # 1 GiB and 128 MiB of fp32 per buffer
SETTINGS = TimingSettings(warmup_ms=5, min_samples=5, max_time_s=0.2, rel_ci=0.02, l2_flush=False)


def home() -> Path:
    return Path(os.environ.get("MFU_HOME") or Path.home() / ".cache" / "mfu-harness")


def path_for(key: str) -> Path:
    return home() / "ceilings" / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".json")


def load(facts: DeviceFacts) -> dict | None:
    """The stored ceilings of this device, or None if `mfu ceilings` never ran on it."""
    path = path_for(facts.key)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save(result: dict, extra: Path | None = None) -> list[Path]:
    paths = [path_for(result["key"])] + ([extra] if extra else [])
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(result, indent=2) + "\n")
    return paths


def summary(result: dict | None) -> dict | None:
    """The few numbers a run uses (and meta.json records) from a ceilings file."""
    if not result:
        return None
    return {
        "matmul_tflops": {d: m["tflops"] for d, m in result["matmul"].items() if "tflops" in m},
        "bandwidth_gbps": result["memory"].get("best_gbps"),
        "exp_per_s": result["exp"].get("exp2_per_s"),
        "measured": result["measured"],
        "path": str(path_for(result["key"])),
    }


def measure(kind: str, facts: DeviceFacts, budget_s: float, log=print) -> dict:
    timer = Timer(kind, SETTINGS, None)
    dtypes = MATMUL_DTYPES[kind]
    result = {"key": facts.key, "device": facts.to_dict(), "measured": environment.now(),
              "software": environment.software(), "budget_s": budget_s, "matmul": {}}
    for dtype in dtypes:
        result["matmul"][dtype] = _matmul(kind, facts, dtype, timer, 0.8 * budget_s / len(dtypes), log)
    result["memory"] = _memory(kind, timer, log)
    result["exp"] = _exp(kind, facts, timer, log)
    return result


def _shapes(kind: str):
    """Squares first, then seeded random shapes: the same sequence on every run of a device kind."""
    for s in SQUARES[kind]:
        yield s, s, s
    rng = random.Random(0)
    lo, hi = RANDOM_RANGE[kind]
    while True:
        yield tuple(256 * rng.randint(lo, hi) for _ in range(3))


def _matmul(kind, facts, dtype_name, timer, box_s, log) -> dict:
    backend, dtype = backends.get("gemm", "torch"), DTYPES[dtype_name]
    reason = backend.unsupported({"m": 4096, "n": 4096, "k": 4096}, dtype, facts)
    if reason:
        log(f"matmul {dtype_name}: skipped ({reason})")
        return {"skipped": reason}
    best, tried, deadline = None, 0, time.perf_counter() + box_s
    gen = torch.Generator(device=kind).manual_seed(0)
    for m, n, k in _shapes(kind):
        if time.perf_counter() > deadline:
            break
        p = {"m": m, "n": n, "k": k}
        if memory.shortfall(GEMM.memory_bytes(p, dtype), kind):
            continue
        inputs = GEMM.make_inputs(p, dtype, kind, gen)
        fn = backend.build(inputs, p, dtype)
        if tried == 0:
            problem = GEMM.check(inputs, fn(), p, dtype)
            if problem:
                return {"skipped": f"torch {dtype_name} GEMM fails its check: {problem}"}
        ms = timer.measure(fn).summary.median
        tried += 1
        tflops = GEMM.flops(p) / ms / 1e9
        if best is None or tflops > best["tflops"]:
            best = {"tflops": tflops, "shape": [m, n, k], "time_ms": ms}
        del inputs, fn
    torch.set_float32_matmul_precision("highest")  # the tf32 build changes it; later dtypes need fp32
    if best is None:
        return {"skipped": "no shape fitted in memory within the time box"}
    log(f"matmul {dtype_name}: {best['tflops']:.1f} TFLOPS at {'x'.join(map(str, best['shape']))} "
        f"(best of {tried} shapes)")
    return {**best, "shapes_tried": tried}


def _memory(kind, timer, log) -> dict:
    n = COPY_ELEMENTS[kind]
    a, b, c = (torch.rand(n, device=kind) for _ in range(3))
    runs = {
        "torch-copy": (lambda: a.copy_(b), 2 * n * 4),
        "torch-triad": (lambda: torch.add(b, c, alpha=2.0, out=a), 3 * n * 4),
    }
    found: dict = {}
    if kind == "cuda":
        from kernels import probes

        runs["triton-copy"] = (probes.copy_launcher(b, a), 2 * n * 4)
    else:
        found["triton-copy"] = {"skipped": "Triton needs a GPU (the interpreter would measure numpy)"}
    for name, (fn, nbytes) in runs.items():
        ms = timer.measure(fn).summary.median
        found[name] = {"gbps": nbytes / ms / 1e6, "bytes": nbytes, "time_ms": ms}
        log(f"memory {name}: {found[name]['gbps']:.0f} GB/s")
    best = max((k for k in found if "gbps" in found[k]), key=lambda k: found[k]["gbps"])
    return {**found, "best": best, "best_gbps": found[best]["gbps"]}


def _exp(kind, facts, timer, log) -> dict:
    if kind == "cuda":
        from kernels import probes

        x = -torch.rand((facts.sm_count or 100) * 8192, device=kind)
        launch, exps = probes.exp2_launcher(x)
        rate = exps / (timer.measure(launch).summary.median / 1e3)
        derived = None
        if facts.sm_count and facts.max_sm_clock_mhz and facts.vendor == "nvidia":
            derived = facts.sm_count * facts.max_sm_clock_mhz * 1e6 * probes.SFU_EXP2_PER_CLOCK_PER_SM
        found = {"exp2_per_s": rate, "source": "Triton chain of dependent exp2 (kernels/probes.py)",
                 "derived_per_s": derived,
                 "derivation": (f"{facts.sm_count} SMs x {facts.max_sm_clock_mhz} MHz x "
                                f"{probes.SFU_EXP2_PER_CLOCK_PER_SM} exp2/clock/SM") if derived else None}
    else:
        x = torch.rand(1 << 20)
        y = torch.empty_like(x)
        rate = x.numel() / (timer.measure(lambda: torch.exp2(x, out=y)).summary.median / 1e3)
        found = {"exp2_per_s": rate, "source": "torch.exp2 over 4 MiB (CPU)", "derived_per_s": None,
                 "derivation": None}
    line = f"exp2: {rate / 1e12:.3f} T/s"
    if found["derived_per_s"]:
        line += f" (derived {found['derived_per_s'] / 1e12:.3f} T/s: {found['derivation']})"
    log(line)
    return found


def add_command(sub) -> None:
    cmd = sub.add_parser("ceilings", help="measure this device's achievable matmul, bandwidth and exp rates")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    cmd.add_argument("--out", type=Path, help="also write the result to FILE (it is always stored per device)")
    cmd.add_argument("--budget-s", type=float, default=None,
                     help="time for the matmul sweeps (default: 150 on a GPU, 20 on a CPU)")
    cmd.set_defaults(command=_command)


def _command(args, console) -> int:
    from harness import device
    from harness.errors import UsageError

    kind = args.device or device.default_device()
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    facts = device.detect(kind)
    budget = args.budget_s if args.budget_s is not None else (150.0 if kind == "cuda" else 20.0)
    console.print(f"measuring ceilings of {facts.name} ({kind}), about {budget:.0f} s of matmul sweeps")
    result = measure(kind, facts, budget, log=console.print)
    for path in save(result, args.out):
        console.print(f"written: {path}")
    return 0
