"""What `mfu ceilings` measures: the best this device reaches, beside what its datasheet promises.

- matmul: per dtype, a time-boxed shape sweep. Every dtype gets an equal share of the budget.
  Before its clock starts, each backend is checked against the reference on a few small shapes
  (correctness does not depend on size beyond tiling; the check also pays for library start-up
  and Triton compilation). Then the `torch` backend (the vendor library) times shapes known to be
  good on the device class (SEEDS: multiples of 256 around 8k, and the best shapes of published
  maximum-achievable-matmul sweeps), then explores: neighbours of the best shape so far (one
  dimension moved by 256-1024) alternating with seeded random multiples of 256. A shape whose
  shortest measurement (warm-up and first batch at the best rate seen so far) would end past the
  dtype's share is passed over, so a slow dtype cannot overrun its share by much: fp64 runs at 1/64
  of fp32 on GPUs without FP64 tensor cores, where 8192^3 takes seconds a call, so its sweep
  starts from the smallest seed. For the last part
  of the share our `triton` backend times the best few torch shapes (its per-shape autotuning
  would otherwise eat the share). The dtype's ceiling is the best of both; which backend and
  shape set it is recorded, with every shape tried and its rate.
- memory: a copy and a triad through torch, and our SM-driven Triton copy, over buffers far
  larger than the last-level cache. Bytes count reads plus writes (copy 2·N·s, triad 3·N·s).
- exp: exp2 results per second from a Triton chain of dependent exp2s (kernels/probes.py), beside
  the derivation SMs × clock × 16 per clock per SM. On a CPU, torch.exp2 over a cache-sized buffer.
- launch: the fastest empty launch (a 1-element add, eager and graph-replayed), the floor below
  which a case's time is impossible (metrics.launch_floor_ms).

Shapes are timed as cases are (the same Timer, with an L2 flush on a GPU), so a ceiling is what a
case measured the same way can reach. The sweep's clock is the budget; memory, exp and launch
take a few seconds more.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace

import torch

from harness import backends
from harness.hardware import environment
from harness.hardware.device import DeviceFacts
from harness.measure import memory, telemetry
from harness.measure.dtypes import DTYPES, matmul_precision
from harness.measure.timing import Timer, TimingSettings
from harness.workloads.gemm import GEMM

# On a GPU every dtype a suite may use, the most quoted first: a sweep cut short (`mfu check`)
# still has them. Each gets an equal share either way.
MATMUL_DTYPES = {"cuda": ("bf16", "fp16", "fp8", "int8", "tf32", "fp32", "fp64"), "cpu": ("fp32", "bf16")}
SMALL_SEEDS_FIRST = ("fp64",)  # dtypes whose rate spans 64x across GPUs: seeds in order of size
BACKENDS = {"cuda": ("torch", "triton"), "cpu": ("torch",)}  # Triton on a CPU is the interpreter
DEFAULT_BUDGET_S = {"cuda": 75.0, "cpu": 10.0}
# Known-good shapes first: 8192^3; the Llama-3-8B gate_up projection at 4096 tokens (793 TFLOPS bf16
# on an H200, 2026-12-04); the best shapes of that H200's first sweep (fp16 6144^3, fp8 12288^3,
# int8 4352x12800x14080, tf32 3328x14080x9728); the H100 bf16 best of a published MAMF sweep
# (REFERENCE.md); then multiples of 256 around 8k.
SEEDS = {
    "cuda": [(8192, 8192, 8192), (4096, 28672, 4096), (6144, 6144, 6144), (12288, 12288, 12288),
             (4352, 12800, 14080), (3328, 14080, 9728), (2048, 2048, 13312), (4096, 6144, 4096),
             (7936, 7936, 7936), (8448, 8448, 8448), (8192, 8192, 4096), (8192, 4096, 8192),
             (4096, 8192, 8192), (10240, 10240, 10240), (8192, 16384, 8192)],
    "cpu": [(256, 256, 256), (512, 512, 512), (256, 512, 256), (512, 256, 512)],
}
RANDOM_RANGE = {"cuda": (4, 64), "cpu": (1, 4)}  # random dimensions, in multiples of 256
STEPS = (256, 512, 1024)  # how far a neighbour moves one dimension of the best shape
# Checked before the clock starts: m, n, k all different (a transposed operand fails), multiples of
# 256 like every sweep shape, and within fp8's (k, n % 16) and int8's (m > 16) constraints.
CHECK_SHAPES = [(256, 512, 768), (512, 768, 256)]
TORCH_SHARE = 0.65  # of a dtype's share when our Triton kernel runs after torch
TRITON_SHAPES = 3  # the best torch shapes our kernel is timed at
COPY_ELEMENTS = {"cuda": 1 << 28, "cpu": 1 << 25}  # 1 GiB and 128 MiB of fp32 per buffer
SETTINGS = TimingSettings(warmup_ms=5, min_samples=5, max_time_s=0.2, rel_ci=0.02, l2_flush=False)
CALLS_PER_SHAPE = 2 + SETTINGS.min_samples  # the timer's two warm-up calls and its first batch
LAUNCH_SETTINGS = TimingSettings(warmup_ms=5, min_samples=200, max_time_s=0.2, rel_ci=0.01, l2_flush=False)


def measure(kind: str, facts: DeviceFacts, budget_s: float, log=print) -> dict:
    """Every ceiling of this device, as one JSON-able record; nothing is written here."""
    started = time.perf_counter()
    cases_timer = Timer(kind, replace(SETTINGS, l2_flush=kind == "cuda"), facts.l2_bytes)
    sampler = telemetry.sampler_for(facts)
    dtypes = MATMUL_DTYPES[kind]
    result = {"key": facts.key, "device": facts.to_dict(), "measured": environment.now(),
              "software": environment.software(), "budget_s": budget_s,
              "share_s": budget_s / len(dtypes), "matmul": {}}
    result["launch"] = _launch(kind, log)  # first: it also pays the timing path's one-time start-up
    for dtype in dtypes:
        with matmul_precision(None):  # the tf32 build sets TF32 globally; fp32 after it must not inherit it
            result["matmul"][dtype] = _matmul(kind, facts, dtype, cases_timer, sampler, budget_s / len(dtypes), log)
    plain = Timer(kind, SETTINGS, None)
    result["memory"] = _memory(kind, plain, log)
    result["exp"] = _exp(kind, facts, plain, log)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _matmul(kind, facts, dtype_name, timer, sampler, share_s, log) -> dict:
    dtype = DTYPES[dtype_name]
    usable, notes = [], {}
    for name in BACKENDS[kind]:
        backend = backends.get("gemm", name)
        reason = backend.unsupported({"m": 4096, "n": 4096, "k": 4096}, dtype, facts) or _check(backend, dtype, kind, facts)
        if reason:
            notes[name] = reason
        else:
            usable.append(name)
    if "torch" not in usable:
        log(f"matmul {dtype_name}: skipped (torch: {notes['torch']})")
        return {"skipped": f"torch: {notes['torch']}", "not_used": notes}

    start = time.perf_counter()
    ours = [b for b in usable if b != "torch"]
    torch_until = start + share_s * (TORCH_SHARE if ours else 1.0)
    tried: dict[str, list] = {"torch": []}
    gen = torch.Generator(device=kind).manual_seed(0)
    rng, seen = random.Random(0), set()
    seeds = sorted(SEEDS[kind], key=math.prod) if dtype_name in SMALL_SEEDS_FIRST else SEEDS[kind]
    for shape in _explore(kind, rng, lambda: _best(tried["torch"]), seen, seeds):
        left_s = torch_until - time.perf_counter()
        if left_s <= 0:
            break
        if not _fits(shape, _best(tried["torch"]), left_s):
            continue
        try:
            found = _time_shape("torch", shape, dtype, facts, gen, timer, sampler)
        except torch.cuda.OutOfMemoryError:  # the estimate missed a workspace: this shape is out of reach
            torch.cuda.empty_cache()
            continue
        if found:
            tried["torch"].append(found)
    top = [r["shape"] for r in sorted(tried["torch"], key=lambda r: -r["tflops"])[:TRITON_SHAPES]]
    for name in ours:
        tried[name] = []
        for shape in top:
            if time.perf_counter() > start + share_s:
                break
            try:
                found = _time_shape(name, tuple(shape), dtype, facts, gen, timer, sampler)
            except Exception as exc:  # our kernel failing at a shape must not cost the dtype its ceiling
                notes[name] = f"{'x'.join(map(str, shape))}: {type(exc).__name__}: {exc}"[:300]
                _clean_up(kind)
                break
            if found:
                tried[name].append(found)
    elapsed = time.perf_counter() - start

    everything = [r for rows in tried.values() for r in rows]
    if not everything:
        return {"skipped": "no shape fitted in memory within the time box", "not_used": notes}
    best = _best(everything)
    log(f"matmul {dtype_name}: {best['tflops']:.4g} TFLOPS, {best['backend']} at "
        f"{'x'.join(map(str, best['shape']))} (best of {len(everything)} shapes: "
        + ", ".join(f"{len(rows)} {name}" for name, rows in tried.items()) + f", {elapsed:.1f} s)")
    return {**best, "shapes_tried": len(everything), "elapsed_s": elapsed,
            "tried": {name: [_line(r) for r in rows] for name, rows in tried.items()}, "not_used": notes}


def _check(backend, dtype, kind, facts) -> str | None:
    """Why this backend's output is wrong on the small check shapes, or None (off the sweep's clock)."""
    gen = torch.Generator(device=kind).manual_seed(1)
    for m, n, k in CHECK_SHAPES:
        p = {"m": m, "n": n, "k": k}
        reason = backend.unsupported(p, dtype, facts)
        if reason:
            return reason
        inputs = GEMM.make_inputs(p, dtype, kind, gen)
        try:
            out = backend.build(inputs, p, dtype)()
        except Exception as exc:  # an unsupported corner of a library: this backend sits the dtype out
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        problem = GEMM.check(inputs, out, p, dtype)
        if problem:
            return f"fails its check at {m}x{n}x{k}: {problem}"
    return None


def _fits(shape, best: dict | None, left_s: float) -> bool:
    """Whether timing this shape (CALLS_PER_SHAPE calls at the best rate seen so far) ends within
    left_s; before any shape was timed there is no rate to judge by."""
    if not best:
        return True
    return 2 * math.prod(shape) / (best["tflops"] * 1e12) * CALLS_PER_SHAPE <= left_s


def _explore(kind: str, rng: random.Random, best, seen: set, seeds: list):
    """Seeds, then neighbours of the best shape so far alternating with random shapes; no repeats."""
    lo, hi = RANDOM_RANGE[kind]

    def fresh(shape):
        if shape in seen or min(shape) < 256:
            return False
        seen.add(shape)
        return True

    for shape in seeds:
        if fresh(shape):
            yield shape
    for attempt in range(100_000):
        current = best()
        if attempt % 2 == 0 and current:
            shape = list(current["shape"])
            shape[rng.randrange(3)] += rng.choice(STEPS) * rng.choice((-1, 1))
        else:
            shape = [256 * rng.randint(lo, hi) for _ in range(3)]
        if fresh(tuple(shape)):
            yield tuple(shape)


def _time_shape(name, shape, dtype, facts, gen, timer, sampler) -> dict | None:
    m, n, k, kind = *shape, facts.kind
    p = {"m": m, "n": n, "k": k}
    backend = backends.get("gemm", name)
    if backend.unsupported(p, dtype, facts) or memory.shortfall(GEMM.memory_bytes(p, dtype), kind):
        return None
    inputs = GEMM.make_inputs(p, dtype, kind, gen)
    fn = backend.build(inputs, p, dtype)
    if sampler:
        with sampler:
            ms = timer.measure(fn).summary.median
        clock = sampler.columns()["sm_clock_mhz"]
    else:
        ms, clock = timer.measure(fn).summary.median, None
    del inputs, fn
    return {"tflops": GEMM.flops(p) / ms / 1e9, "shape": [m, n, k], "backend": name, "time_ms": ms,
            "sm_clock_mhz": clock}


def _clean_up(kind: str) -> None:
    if kind == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["tflops"]) if rows else None


def _line(r: dict) -> str:
    return f"{'x'.join(map(str, r['shape']))}: {r['tflops']:.5g}"


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


def _launch(kind, log) -> dict:
    """The fastest empty launch seen: a 1-element add, timed as cases are (eager, and graph-replayed
    on a GPU, whichever is faster). No timed call can be shorter."""
    x = torch.zeros(1, device=kind)
    y = torch.empty_like(x)
    fastest = {}
    for mode in ("eager", "graph") if kind == "cuda" else ("eager",):
        timer = Timer(kind, replace(LAUNCH_SETTINGS, cuda_graph=mode == "graph"), None)
        fastest[mode] = min(timer.measure(lambda: torch.add(x, 1, out=y)).samples_ms)
    best = min(fastest.values())
    log(f"empty launch: {best * 1e3:.2f} us (" + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in fastest.items()) + ")")
    return {"fastest_ms": best, **{f"{k}_ms": v for k, v in fastest.items()},
            "how": "fastest sample of a 1-element torch.add, eager" + (" and CUDA-graph replay" if kind == "cuda" else "")}
