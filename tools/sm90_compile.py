"""Compile our Triton kernels for Hopper (sm_90a) without a GPU and say whether each would launch
on an H100/H200: shared memory, registers, local memory (spills), and the tensor-core (wgmma), TMA
and setmaxnreg (warp specialization) instructions in the SASS.

    python tools/sm90_compile.py                 # every FIXED_CONFIG case the `gpu` tests run, and more dtypes
    python tools/sm90_compile.py --autotune      # also every production autotune config (report only)
    python tools/sm90_compile.py --only 'gemm tma.*fp8'   # rows whose label matches a regex

How: each kernel's own prepare() runs on meta tensors (no memory; address 0, so 16-byte aligned
like CUDA allocations) with the GPU questions answered as an H100 would (sm_90, 132 SMs, 227 KB
of shared memory per block). Each launch is captured instead of run and compiled ahead of time by
triton.compile for GPUTarget("cuda", 90, 64), with the signature, constexprs and specialization
(divisibility by 16) that Triton's launcher computes for the same arguments. The cubin is read
with the cuobjdump that ships with Triton.

A row fails (exit 1, FIXED_CONFIG rows only) when it does not compile, when Triton's dynamic plus
ptxas's static shared memory exceeds 232448 B (the sm_90 opt-in maximum per block), or when
registers x threads exceed 65536. It warns on local memory: the stack frame plus local bytes
per thread that cuobjdump reports, where ptxas puts spilled registers (Triton's n_spills is that
number / 4, from CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES), when the expected wgmma (HGMMA/QGMMA/IGMMA)
or TMA (UTMALDG) instructions are missing, and when a warp-specialized kernel has no setmaxnreg
(USETMAXREG: Triton dropped the specialization). Threads are Triton's own count, which includes
the warps a warp-specialized kernel adds.
TRITON_INTERPRET is ignored (removed from this process's environment).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

os.environ.pop("TRITON_INTERPRET", None)  # before kernels/ reads it: we compile, not interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kernels/

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime import jit  # noqa: E402

from kernels import attention, attention_ws, common, decode_attention, gemm, moe, probes  # noqa: E402

TARGET = GPUTarget("cuda", 90, 64)
SMEM_LIMIT = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin on H100 and H200 (227 KB)
REGS_PER_SM = 65536
SMS = 132  # H100 SXM and H200
META = torch.device("meta")
FP8 = torch.float8_e4m3fn
WGMMA = ("HGMMA", "QGMMA", "IGMMA")
MMA = ("HMMA", "IMMA", "QMMA")
OPCODES = re.compile(r"\b(HGMMA|QGMMA|IGMMA|HMMA|IMMA|QMMA|UTMALDG|UTMASTG|UBLKCP|USETMAXREG)\b")


@dataclass
class Case:
    """One prepare()+launch of our kernels with one config; `expect` maps a jit function's name to
    the tensor-core kind its SASS should hold: "wgmma", "mma", or "none" (absent: not checked)."""

    label: str
    launch: object  # callable(config) that prepares and launches (the launches are captured)
    config: triton.Config
    expect: dict = field(default_factory=dict)
    tma: tuple = ()  # jit functions that must load through TMA
    ws: tuple = ()  # jit functions that must be warp-specialized (setmaxnreg)
    only: tuple = ()  # report only these jit functions (empty: all the case launches)


@dataclass
class Row:
    label: str
    kernel: str
    config: str
    error: str = ""
    smem: int = 0  # Triton's dynamic shared memory + ptxas's static
    regs: int = 0
    threads: int = 0
    local: int = 0
    ops: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def _tool(name: str) -> str:
    return getattr(triton.knobs.nvidia, name.replace("-", "_")).path


@contextlib.contextmanager
def _as_h100(captured: list):
    """Answer the kernels' device questions as an H100 would, and capture launches instead of running."""
    def record(self, *args, grid, warmup, **kwargs):
        captured.append((self, args, kwargs))

    patches = [mock.patch.object(jit.JITFunction, "run", record),
               mock.patch.object(common, "platform_unsupported", lambda *a: None),
               mock.patch.object(torch.cuda, "get_device_capability", lambda *a: (9, 0)),
               mock.patch.object(gemm, "_num_sms", lambda device: SMS),
               mock.patch.object(decode_attention, "_sm_count", lambda device: SMS)]
    patches += [mock.patch.object(m, "smem_bytes", lambda index: SMEM_LIMIT)
                for m in (gemm, moe, attention, attention_ws)]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def _source(fn, args, kwargs):
    """What Triton's launcher would compile for fn(*args, **kwargs) on sm_90 (see JITFunction.run):
    the source with its signature, constexprs and specialization, and the compile options."""
    backend = make_backend(TARGET)
    kwargs = dict(kwargs, debug=False)
    binder = jit.create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options.__dict__


def _inspect(compiled, row: Row) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    res = dict((k, int(v)) for k, v in re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", usage))
    row.regs, row.local = res["REG"], res["LOCAL"] + res["STACK"]  # spills land in the stack frame
    row.smem = compiled.metadata.shared + res["SHARED"]
    row.threads = compiled.metadata.num_warps * 32
    for op in OPCODES.findall(sass):
        row.ops[op] = row.ops.get(op, 0) + 1


def _judge(row: Row, expect: str | None, tma: bool, ws: bool = False) -> None:
    if row.smem > SMEM_LIMIT:
        row.problems.append(f"shared memory {row.smem} B > {SMEM_LIMIT} B")
    if row.regs * row.threads > REGS_PER_SM:
        row.problems.append(f"{row.regs} registers x {row.threads} threads > {REGS_PER_SM}")
    if row.local:
        row.warnings.append(f"{row.local} B local memory per thread (spills)")
    found = set(row.ops)
    want = {"wgmma": WGMMA, "mma": MMA + WGMMA}.get(expect)
    if want and not found & set(want):
        row.warnings.append(f"no {expect} instruction")
    if expect == "none" and found & set(WGMMA + MMA):
        row.warnings.append("tensor-core instructions where none were expected")
    if tma and "UTMALDG" not in found:
        row.warnings.append("no TMA load (UTMALDG)")
    if ws and "USETMAXREG" not in found:
        row.warnings.append("not warp-specialized (no USETMAXREG)")


def _config_text(config) -> str:
    if config is None:
        return "launcher's own"
    text = " ".join(k.lower() if v is True else f"{k.removeprefix('BLOCK_')}{v}"
                    for k, v in config.kwargs.items() if v is not False)
    return f"{text} w{config.num_warps} s{config.num_stages}"


def run_case(case: Case, cache: dict) -> list[Row]:
    captured = []
    with _as_h100(captured):
        case.launch(case.config)
    rows = []
    for fn, args, kwargs in captured:
        name = fn.__name__
        if case.only and name not in case.only:
            continue
        row = Row(case.label, name, _config_text(case.config))
        try:
            src, options = _source(fn, args, kwargs)
            key = (src.hash(), repr(sorted(options.items())))
            if key not in cache:
                cache[key] = triton.compile(src, target=TARGET, options=options)
            _inspect(cache[key], row)
            _judge(row, case.expect.get(name), name in case.tma, name in case.ws)
        except Exception as e:  # a compile error is this row's result, not the end of the report
            row.error = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            row.problems.append("does not compile")
            if os.environ.get("SM90_TRACEBACK"):
                traceback.print_exc()
        rows.append(row)
    return rows


# --- the cases -------------------------------------------------------------------------------------

def _gemm(m, n, k, dtype, variant, b_kmajor=False, precision="ieee", splits=None):
    def launch(config):
        a = torch.empty(m, k, dtype=dtype, device=META)
        b = torch.empty(n, k, dtype=dtype, device=META).T if b_kmajor else torch.empty(k, n, dtype=dtype, device=META)
        out = torch.empty(m, n, dtype=gemm.OUT_DTYPE[dtype], device=META)
        gemm.prepare(a, b, out, precision=precision, variant=variant, config=config, splits=splits)()
    return launch


def _moe(tokens, experts, top_k, hidden, inter, dtype, block_m=None):
    def launch(config):
        gen = torch.Generator().manual_seed(0)
        ids = torch.rand(tokens, experts, generator=gen).topk(top_k, dim=1).indices
        weights = torch.full((tokens, top_k), 1.0 / top_k)
        x = torch.empty(tokens, hidden, dtype=dtype, device=META)
        w_gate_up = torch.empty(experts, 2 * inter, hidden, dtype=dtype, device=META)
        w_down = torch.empty(experts, hidden, inter, dtype=dtype, device=META)
        out = torch.empty(tokens, hidden, dtype=moe.OUT_DTYPE[dtype], device=META)
        moe.prepare(x, w_gate_up, w_down, ids, weights, out, block_m=block_m, config=config)()
    return launch


def _attention(kernel, b, hq, hkv, sq, skv, d, dtype, causal):
    def launch(config):
        q, out = (torch.empty(b, hq, sq, d, dtype=dtype, device=META) for _ in range(2))
        k, v = (torch.empty(b, hkv, skv, d, dtype=dtype, device=META) for _ in range(2))
        kernel.prepare(q, k, v, out, causal=causal, config=config)()
    return launch


def _probes(config):
    x = torch.empty(1 << 24, dtype=torch.float32, device=META)
    probes.copy_launcher(x, torch.empty_like(x))()
    probes.exp2_launcher(x)[0]()


NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", FP8: "fp8", torch.float32: "fp32", torch.int8: "int8"}
GEMM_DTYPES = [(torch.bfloat16, "ieee"), (torch.float16, "ieee"), (FP8, "ieee"), (torch.float32, "ieee"),
               (torch.float32, "tf32"), (torch.int8, "ieee")]


def _gemm_name(dtype, precision):
    return "tf32" if precision == "tf32" else NAMES[dtype]


def _gemm_expect(dtype, precision, variant):
    ieee = dtype == torch.float32 and precision == "ieee"
    if variant == "splitk":  # BLOCK_M 16 and 32 are below wgmma's 64 rows: mma.sync (HMMA) is expected there
        return {"_splitk_kernel": "none" if ieee else "mma", "_splitk_sum_kernel": "none"}
    return {"_tiled_kernel" if variant == "tiled" else "_tma_kernel": "none" if ieee else "wgmma"}


def fixed_cases() -> list[Case]:
    """The FIXED_CONFIG launches of the `gpu` tests (tests/test_kernels_gemm.py, test_moe_kernel.py,
    test_attention_kernels.py; test_block.py and test_moe_backends.py at their shapes), over every
    dtype each kernel takes on a GPU."""
    cases = []
    for variant in ("tiled", "tma"):
        for b_kmajor in (False, True):
            for dtype, precision in GEMM_DTYPES:
                cases.append(Case(f"gemm {variant} {_gemm_name(dtype, precision)} "
                                  f"{'b_kmajor' if b_kmajor else 'b_rowmajor'} 512x384x256",
                                  _gemm(512, 384, 256, dtype, variant, b_kmajor, precision), gemm.FIXED_CONFIG,
                                  _gemm_expect(dtype, precision, variant), ("_tma_kernel",)))
        cases.append(Case(f"gemm {variant} bf16 block-test 4x48x32", _gemm(4, 48, 32, torch.bfloat16, variant),
                          gemm.FIXED_CONFIG, _gemm_expect(torch.bfloat16, "ieee", variant), ("_tma_kernel",)))
    for dtype in (torch.bfloat16, FP8):
        cases.append(Case(f"gemm tiled {NAMES[dtype]} unaligned 333x197x131", _gemm(333, 197, 131, dtype, "tiled"),
                          gemm.FIXED_CONFIG, _gemm_expect(dtype, "ieee", "tiled")))
    for dtype, precision in GEMM_DTYPES:  # the decode shape of the splitk `gpu` test, B as the workload stores it
        cases.append(Case(f"gemm splitk {_gemm_name(dtype, precision)} decode 16x512x4096",
                          _gemm(16, 512, 4096, dtype, "splitk", True, precision), gemm.FIXED_CONFIG,
                          _gemm_expect(dtype, precision, "splitk")))
    moe_shapes = {"deepseek-v3 decode": (64, 256, 8, 7168, 2048), "ragged prefill": (333, 8, 2, 1000, 1400),
                  "mid": (200, 32, 8, 1024, 768), "block-test": (4, 4, 2, 32, 16)}
    for name, shape in moe_shapes.items():
        for dtype in (torch.bfloat16, torch.float16, FP8):
            block_m = moe.pick_block_m(shape[0] * shape[2], min(shape[1], shape[0] * shape[2]))
            kind = "wgmma" if block_m >= 64 else "mma"
            cases.append(Case(f"moe {NAMES[dtype]} {name} (BLOCK_M {block_m})", _moe(*shape, dtype), moe.FIXED_CONFIG,
                              {"_gate_up_kernel": kind, "_down_kernel": kind, "_topk_sum_kernel": "none"}))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        kind = "none" if dtype == torch.float32 else "wgmma"  # fp32 attention is IEEE (no TF32)
        for causal in (True, False):
            cases.append(Case(f"attention {NAMES[dtype]} d128 {'causal' if causal else 'full'} 1000x1536",
                              _attention(attention, 2, 16, 4, 1000, 1536, 128, dtype, causal),
                              attention.FIXED_CONFIG, {"_forward_kernel": kind}))
    for d in (64, 256, 8):
        cases.append(Case(f"attention bf16 d{d} causal 1000x1000", _attention(attention, 2, 16, 4, 1000, 1000, d,
                          torch.bfloat16, True), attention.FIXED_CONFIG, {"_forward_kernel": "wgmma"}))
    cases += _attention_ws_cases()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        kind = "none" if dtype == torch.float32 else "mma"  # BLOCK_M 16 rows: below wgmma's 64
        for batch, sq, skv in ((1, 1, 32768), (64, 1, 4099), (4, 4, 8191)):
            cases.append(Case(f"decode {NAMES[dtype]} d128 b{batch} sq{sq} kv{skv}",
                              _attention(decode_attention, batch, 32, 8, sq, skv, 128, dtype, True),
                              decode_attention.FIXED_CONFIG, {"_split_kernel": kind, "_reduce_kernel": "none"}))
    cases.append(Case("decode bf16 d8 block-test", _attention(decode_attention, 4, 4, 2, 1, 300, 8, torch.bfloat16,
                      True), decode_attention.FIXED_CONFIG, {"_split_kernel": "mma"}))
    cases.append(Case("probes copy + exp2", _probes, None, {"_copy_kernel": "none", "_exp2_chain_kernel": "none"}))
    return cases


def _attention_ws_case(label, b, hq, hkv, sq, skv, d, causal, config) -> Case:
    ws = ("_forward_kernel",) if config.kwargs["WARP_SPECIALIZE"] else ()
    launch = _attention(attention_ws, b, hq, hkv, sq, skv, d, torch.bfloat16, causal)
    return Case(f"{label}{' ws' if ws else ''}", launch, config, {"_forward_kernel": "wgmma"}, ("_forward_kernel",), ws)


def _attention_ws_cases() -> list[Case]:
    """kernels/attention_ws.py at the `gpu` tests' cases: FIXED_CONFIG, and FIXED_WS_CONFIG where
    the case is non-causal (warp specialization is offered for non-causal only)."""
    cases = []
    for d in attention_ws.HEAD_DIMS:
        for sq, skv, causal in ((1024, 1024, True), (1024, 1024, False), (1000, 1536, True), (1000, 1000, False)):
            label = f"attention-ws bf16 d{d} {'causal' if causal else 'full'} {sq}x{skv}"
            for config in (attention_ws.FIXED_CONFIG,) + (() if causal else (attention_ws.FIXED_WS_CONFIG,)):
                cases.append(_attention_ws_case(label, 2, 8, 2, sq, skv, d, causal, config))
    return cases


def autotune_cases() -> list[Case]:
    """Every production autotune config of each kernel, at one large shape per dtype (report only)."""
    cases = []
    for variant, kernel in (("tiled", gemm._tiled_kernel), ("tma", gemm._tma_kernel)):
        for dtype, precision in GEMM_DTYPES:
            for cfg in kernel.configs:
                cases.append(Case(f"[autotune] gemm {variant} {_gemm_name(dtype, precision)} 8192^3",
                                  _gemm(8192, 8192, 8192, dtype, variant, precision=precision), cfg,
                                  _gemm_expect(dtype, precision, variant), ("_tma_kernel",)))
    for m in (16, 64):  # Llama-3-8B's down projection at decode sizes, B as the workload stores it
        for dtype, precision in GEMM_DTYPES:
            for cfg in gemm._splitk_kernel.configs:
                cases.append(Case(f"[autotune] gemm splitk {_gemm_name(dtype, precision)} {m}x4096x14336",
                                  _gemm(m, 4096, 14336, dtype, "splitk", True, precision), cfg,
                                  _gemm_expect(dtype, precision, "splitk"), only=("_splitk_kernel",)))
    for dtype in (torch.bfloat16, FP8):
        for kernel in (moe._gate_up_kernel, moe._down_kernel):
            for cfg in kernel.configs:
                cases.append(Case(f"[autotune] moe {NAMES[dtype]} 8192 tokens (BLOCK_M 128)",
                                  _moe(8192, 8, 2, 4096, 14336, dtype), cfg, {kernel.fn.__name__: "wgmma"},
                                  only=(kernel.fn.__name__,)))
    for dtype, d in ((torch.bfloat16, 128), (torch.bfloat16, 256), (torch.float32, 128)):
        for cfg in attention._forward_kernel.configs:
            cases.append(Case(f"[autotune] attention {NAMES[dtype]} d{d} causal 4096",
                              _attention(attention, 1, 32, 8, 4096, 4096, d, dtype, True), cfg,
                              {"_forward_kernel": "none" if dtype == torch.float32 else "wgmma"}))
    for d in attention_ws.HEAD_DIMS:
        for causal in (True, False):
            for cfg in attention_ws._forward_kernel.configs:
                if not (causal and cfg.kwargs["WARP_SPECIALIZE"]):  # never offered: see the kernel
                    cases.append(_attention_ws_case(f"[autotune] attention-ws bf16 d{d} "
                                                    f"{'causal' if causal else 'full'} 4096", 1, 32, 8, 4096, 4096,
                                                    d, causal, cfg))
    for cfg in decode_attention._split_kernel.configs:
        cases.append(Case("[autotune] decode bf16 d128 b1 kv32768", _attention(decode_attention, 1, 32, 8, 1, 32768,
                          128, torch.bfloat16, True), cfg, {"_split_kernel": "mma"}))
    return cases


def _kept_by_prune(case: Case) -> str:
    """Whether the kernel's own early_config_prune keeps this autotune config (at this shape)."""
    captured = []
    with _as_h100(captured):
        case.launch(case.config)
        for fn, args, kwargs in captured:
            tuner = {k.fn: k for k in (gemm._tiled_kernel, gemm._tma_kernel, gemm._splitk_kernel,
                                       moe._gate_up_kernel, moe._down_kernel, attention._forward_kernel,
                                       attention_ws._forward_kernel, decode_attention._split_kernel)}.get(fn)
            if tuner is None or not any(c is case.config for c in tuner.configs):
                continue
            if tuner.early_config_prune is None:
                return "no prune"
            consts = {k: v for k, v in kwargs.items() if k not in case.config.all_kwargs()}
            kept = tuner.early_config_prune(tuner.configs, dict(zip(fn.arg_names, args)), **consts)
            return "kept" if any(c is case.config for c in kept) else "pruned"
    return ""


def _line(row: Row, prune: str = "") -> str:
    ops = " ".join(f"{op}x{n}" for op, n in sorted(row.ops.items())) or "-"
    verdict = ("FAIL: " + "; ".join(row.problems + ([row.error] if row.error else []))) if row.problems else \
        ("warn: " + "; ".join(row.warnings)) if row.warnings else "ok"
    cells = [row.label, row.kernel, row.config, f"{row.smem}", f"{row.regs}", f"{row.local}", ops, verdict]
    return "| " + " | ".join(cells + ([prune] if prune else [])) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--autotune", action="store_true", help="also compile every production autotune config")
    parser.add_argument("--only", metavar="REGEX", help="only cases whose label matches this regex")
    args = parser.parse_args(argv)
    for tool in ("ptxas", "cuobjdump"):
        if not Path(_tool(tool)).is_file():
            print(f"sm90_compile: {tool} not found at {_tool(tool)} (Triton's NVIDIA backend ships it)",
                  file=sys.stderr)
            return 2
    cases = fixed_cases() + (autotune_cases() if args.autotune else [])
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.label)]
    print(f"triton {triton.__version__}, target sm_90a, ptxas {_ptxas_version()}; shared memory limit "
          f"{SMEM_LIMIT} B per block\n")
    print("| case | kernel | config | smem B | regs | spill B | MMA/TMA SASS | verdict |" +
          (" prune |" if args.autotune else ""))
    print("|---" * (9 if args.autotune else 8) + "|")
    cache, failed = {}, 0
    for case in cases:
        autotuned = case.label.startswith("[autotune]")
        prune = _kept_by_prune(case) if autotuned else ""
        for row in run_case(case, cache):
            print(_line(row, prune if autotuned else ""), flush=True)
            failed += bool(row.problems) and not autotuned
    print(f"\n{failed} FIXED_CONFIG kernel compile(s) would fail on sm_90" if failed else
          "\nevery FIXED_CONFIG kernel compiles and fits sm_90")
    return 1 if failed else 0


def _ptxas_version() -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    out = subprocess.run([get_ptxas(TARGET.arch).path, "--version"], capture_output=True, text=True).stdout
    return (re.findall(r"release ([\d.]+)", out) or ["?"])[0]


if __name__ == "__main__":
    sys.exit(main())
