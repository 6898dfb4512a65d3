"""The published claims `mfu claims` tests, and the verdict rules: a pure function of result rows.

`evaluate(rows, meta)` turns a run's rows (cases.jsonl) and its meta.json into Findings, one per
claim and measured subject: the claim, its source, what is measured, when it holds, the value on
this device and the verdict: "holds", "does not hold", or "not measurable here". A claim is not
measurable when the rows it needs are missing or not ok, when a denominator is unknown (a CPU has
no datasheet peak; exp utilization needs `mfu ceilings`), and always off a GPU: every claim here is
about GPUs, so a CPU run shows its values for the pipeline's sake and no verdict. Thresholds widen
an "about X" claim to X ± 10% (relative) and are written in the table's "holds when" column.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.present.ratios import geomean, speedup
from harness.store.ids import problem

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable here"
LARGE_GEMM = 4096  # "large": every GEMM dimension at least this
GEMM_MFU = (0.72, 0.88)  # "about 0.8 of datasheet", ±10%
MOE_OVER_DENSE = 0.6  # the claim's 20% / 50% = 0.4, with room: MoE keeps at most 60% of dense's MFU
DECODE_MFU, DECODE_MBU = 0.05, 0.63  # "under 5% MFU"; "about 70-80% MBU" from 70% less 10%
FP8_SPEEDUP = 1.8  # "doubles", less 10%
TRITON_VS_VENDOR = 0.75  # the lower published ratio (attention 477 / 630)
LAYERS = ("tp-linear", "ep-moe")  # layers split over ranks, timed in phases (workloads/overlap_model.py)
COMM_RATIO = 1.0  # compute at least as long as its communication
OURS = {"gemm": ("triton", "triton-splitk"), "attention": ("triton", "triton-ws", "triton-decode"), "moe": ("triton",), "block": ("kernels",)}
VENDOR = {"gemm": ("torch",), "attention": ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient"),
          "moe": ("torch-grouped",), "block": ("eager",)}

CLAIMS = {
    "gemm": "Dense GEMMs reach about 80% of the datasheet peak at large sizes",
    "moe": "MoE training runs at about 20% MFU against about 50% for dense",
    "decode": "LLM decode runs under 5% MFU while the best implementations reach about 70-80% MBU",
    "fp8": "FP8 doubles usable FLOPs",
    "exp": "On newer GPUs attention is bound by the exp units, not the tensor cores",
    "triton": "Triton kernels come within about 25% of vendor kernels",
    "comm": "Keeping the compute/communication ratio above 1 is infrastructure's core goal",
}
SOURCES = {
    "gemm": ("cuBLAS bf16 8192³ about 790-800 of 989 TFLOPS on H100 SXM; maximum-achievable-matmul sweeps "
             "794.5 bf16 (mamf-finder, github.com/stas00/ml-engineering, compute/accelerator/benchmarks)"),
    "moe": ("dense: Llama 3 38-43% (arXiv:2407.21783), PaLM 46.2% (arXiv:2204.02311), MegaScale 55.2% "
            "(arXiv:2402.15627); MoE: DeepSeek-V3 about 20% in FP8 as estimated from its report "
            "(arXiv:2412.19437), depending on the denominator"),
    "decode": ("gpt-fast, Llama-2-7B bf16 batch 1: 1397 GB/s on A100-80GB, about 70% (github.com/"
               "pytorch-labs/gpt-fast); Hazy Research megakernel, Llama-1B batch 1: 78% on H100 "
               "(hazyresearch.stanford.edu/blog/2025-05-27-no-bubbles)"),
    "fp8": ("NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): 1979 fp8 vs 989 bf16 dense TFLOPS; "
            "maximum-achievable-matmul sweeps 1402.6 vs 794.5 on H100 SXM (mamf-finder, "
            "github.com/stas00/ml-engineering)"),
    "exp": ("FlashAttention-3 (arXiv:2407.08608): H100 SXM5 has 989 TFLOPS of FP16 matmul but 3.9 TFLOPS "
            "of special functions (exp)"),
    "triton": ("attention fwd hd128 on H100: the Triton tutorial kernel about 477 TFLOPS (github.com/"
               "triton-lang/triton, python/tutorials/06-fused-attention.py) vs cuDNN about 595-630 "
               "(FlashAttention-3, arXiv:2407.08608), 0.76; MoE on H100 bf16 (E=128, top-8): Triton fused "
               "MoE 215 vs torch._grouped_mm 242 TFLOPS, 0.89 (VeOmni, github.com/ByteDance-Seed/VeOmni)"),
    "comm": ("the ratio of compute to communication cost must not fall as clusters grow, or added GPUs stop "
             "adding capability; expert parallelism adds two all-to-alls per MoE layer, and DeepSeek-V3 "
             "overlaps them with compute to keep its ratio near 1 (arXiv:2412.19437, section 3.2)"),
}


@dataclass(frozen=True)
class Finding:
    claim: str
    source: str
    measured: str
    holds_when: str
    value: str
    verdict: str


def evaluate(rows: list[dict], meta: dict) -> list[Finding]:
    """Every claim's findings for a run. Pure: reads the rows and meta, nothing else."""
    ok = [r for r in rows if r.get("status") == "ok"]
    on_gpu = meta.get("device_kind") == "cuda"
    ceilings = meta.get("ceilings") or {}
    findings = []
    for rule in (_gemm_mfu, _moe_vs_dense, _decode, _fp8, _exp, _triton_vs_vendor, _compute_comm):
        findings += rule(ok, rows, on_gpu, ceilings)
    return findings


def verdict(on_gpu: bool, measurable: bool, holds: bool) -> str:
    if not (on_gpu and measurable):
        return UNMEASURABLE
    return HOLDS if holds else FAILS


# ---- helpers --------------------------------------------------------------------------------

def _pct(x) -> str:
    return "?" if x is None else f"{x:.1%}"


def _rate(r: dict) -> str:
    """A row's throughput, with its utilization when there is a denominator."""
    text = f"{r['tflops']:.4g} TFLOPS, {r['gbps']:.4g} GB/s"
    return text if r.get("mfu") is None else f"MFU {_pct(r['mfu'])}, MBU {_pct(r.get('mbu'))} ({text})"


def _best(rows: list[dict], key: str = "tflops") -> dict | None:
    rated = [r for r in rows if r.get(key) is not None]
    return max(rated, key=lambda r: r[key]) if rated else None


def _skips(rows: list[dict], **match) -> str:
    """Why the matching rows did not run, for a value cell when nothing is measured."""
    why = {r.get("reason") or r["status"] for r in rows if r.get("status") != "ok"
           and all(r.get(k) == v for k, v in match.items())}
    return "; ".join(sorted(why))[:300] if why else "no such case in this run"


def _shape(r: dict) -> str:
    return f"{r['m']}x{r['n']}x{r['k']}"


def _subject(r: dict) -> str:
    return r.get("label") or f"H{r.get('hidden')} E{r.get('experts')}"


def _describe(r: dict) -> str:
    """A short name for a row's problem."""
    g = r.get
    if r["workload"] == "gemm":
        return f"{r['dtype']} {_shape(r)}"
    if r["workload"] == "attention":
        return (f"{r['dtype']} {g('phase')} batch {g('batch')}, heads {g('heads')}/{g('kv_heads')}, "
                f"{g('seq_q')}x{g('seq_kv')}, head_dim {g('head_dim')}")
    if r["workload"] == "moe":
        return f"{r['dtype']} {g('label') or 'moe'} T={g('tokens')} E={g('experts')} k={g('top_k')}"
    if r["workload"] in LAYERS:
        size = {k: g(k) for k in ("tp", "ep") if g(k) is not None}
        group = ", ".join(f"{k}={v}" for k, v in size.items())
        return f"{r['workload']} {r['dtype']} {g('label') or ''} T={g('tokens')} {group} {r['backend']}".replace("  ", " ")
    return f"{r['dtype']} {_subject(r)} {g('phase')} batch {g('batch')}"


# ---- the claims -----------------------------------------------------------------------------

def _gemm_mfu(ok, rows, on_gpu, ceilings) -> list[Finding]:
    rated = [r for r in ok if r["workload"] == "gemm" and r["backend"] == "torch" and r["dtype"] == "bf16"]
    large = [r for r in rated if min(r["m"], r["n"], r["k"]) >= LARGE_GEMM] or rated
    best = _best(large)
    value = f"{_rate(best)} at {_shape(best)}" if best else _skips(rows, workload="gemm", dtype="bf16")
    mfu = best.get("mfu") if best else None
    lo, hi = GEMM_MFU
    return [Finding(CLAIMS["gemm"], SOURCES["gemm"],
                    f"gemm, torch (cuBLAS), bf16, every dimension >= {LARGE_GEMM}: the best MFU",
                    f"{lo:.0%} <= MFU <= {hi:.0%}", value,
                    verdict(on_gpu, mfu is not None, mfu is not None and lo <= mfu <= hi))]


_SAME_BLOCK = ("label", "dtype", "batch", "seq", "hidden", "heads", "kv_heads", "head_dim", "intermediate",
               "experts", "top_k", "shared_experts", "routing", "seed")


def _moe_vs_dense(ok, rows, on_gpu, ceilings) -> list[Finding]:
    train = [r for r in ok if r["workload"] == "block" and r.get("phase") == "train"]
    measured = ("block train step (forward + backward), a MoE block vs its dense-equivalent (the same active "
                "parameters): the best backend of each")
    holds_when = f"MoE MFU / dense MFU <= {MOE_OVER_DENSE}"
    findings = []
    for moe in _best_per_problem([r for r in train if r.get("experts") and r.get("mlp") == "model"]):
        key = tuple(moe.get(k) for k in _SAME_BLOCK)
        dense = _best([r for r in train if r.get("mlp") == "dense-equivalent"
                       and tuple(r.get(k) for k in _SAME_BLOCK) == key])
        if dense is None:
            continue
        ratio = moe["tflops"] / dense["tflops"]
        util = "MFU" if moe.get("mfu") is not None else "TFLOPS (no datasheet peak here)"
        a, b = (_pct(r["mfu"]) if r.get("mfu") is not None else f"{r['tflops']:.4g}" for r in (moe, dense))
        value = (f"{_subject(moe)}, {moe['batch']}x{moe['seq']} tokens: MoE {a} ({moe['backend']}) vs "
                 f"dense-equivalent {b} ({dense['backend']}) {util}; ratio {ratio:.2f}")
        findings.append(Finding(CLAIMS["moe"], SOURCES["moe"], measured, holds_when, value,
                                verdict(on_gpu, moe.get("mfu") is not None, ratio <= MOE_OVER_DENSE)))
    if not findings:
        value = "no MoE block and its dense-equivalent both ran: " + _skips(rows, workload="block", phase="train")
        findings.append(Finding(CLAIMS["moe"], SOURCES["moe"], measured, holds_when, value, UNMEASURABLE))
    return findings


def _best_per_problem(rows: list[dict]) -> list[dict]:
    """The fastest backend's row of each problem, in first-seen order."""
    problems: dict[str, list[dict]] = {}
    for r in rows:
        problems.setdefault(problem(r), []).append(r)
    return [_best(group) for group in problems.values()]


def _decode(ok, rows, on_gpu, ceilings) -> list[Finding]:
    decode = [r for r in ok if r["workload"] == "block" and r.get("phase") == "decode" and r.get("mlp") == "model"]
    measured = ("block decode step (one token per sequence, KV cache), dense and MoE blocks at batch 1 and "
                "64: the best backend, with or without CUDA graph replay, by bandwidth")
    holds_when = f"MFU < {DECODE_MFU:.0%} and MBU >= {DECODE_MBU:.0%}"
    groups: dict[tuple, list[dict]] = {}
    for r in decode:  # backends and graph replay are ways to run the same step: the best one counts
        groups.setdefault(tuple(r.get(k) for k in _SAME_BLOCK + ("seq_kv",)), []).append(r)
    findings = []
    for r in (_best(g, "gbps") for g in groups.values()):
        kind = "MoE" if r.get("experts") else "dense"
        how = r["backend"] + (", CUDA graph" if r.get("cuda_graph") else "")
        value = f"{_subject(r)} ({kind}), batch {r['batch']}, cache {r['seq_kv']}: {_rate(r)}; {how}"
        mfu, mbu = r.get("mfu"), r.get("mbu")
        known = mfu is not None and mbu is not None
        findings.append(Finding(CLAIMS["decode"], SOURCES["decode"], measured, holds_when, value,
                                verdict(on_gpu, known, known and mfu < DECODE_MFU and mbu >= DECODE_MBU)))
    if not findings:
        findings.append(Finding(CLAIMS["decode"], SOURCES["decode"], measured, holds_when,
                                _skips(rows, workload="block", phase="decode"), UNMEASURABLE))
    return findings


def _fp8(ok, rows, on_gpu, ceilings) -> list[Finding]:
    gemm = [r for r in ok if r["workload"] == "gemm" and r["backend"] == "torch"]
    bf16 = {_shape(r): r for r in gemm if r["dtype"] == "bf16"}
    pairs = [(bf16[_shape(r)], r) for r in gemm if r["dtype"] == "fp8" and _shape(r) in bf16]
    measured = "gemm, torch (cuBLAS), fp8 (e4m3, bf16 out) over bf16 TFLOPS at the largest shape run in both"
    if not pairs:
        return [Finding(CLAIMS["fp8"], SOURCES["fp8"], measured, f"ratio >= {FP8_SPEEDUP}",
                        "fp8: " + _skips(rows, workload="gemm", backend="torch", dtype="fp8"), UNMEASURABLE)]
    base, fp8 = max(pairs, key=lambda pair: pair[0]["m"] * pair[0]["n"] * pair[0]["k"])
    ratio = speedup(base, fp8)  # the same shape, so the same work
    value = f"{ratio:.2f}x at {_shape(fp8)} ({fp8['tflops']:.4g} vs {base['tflops']:.4g} TFLOPS)"
    return [Finding(CLAIMS["fp8"], SOURCES["fp8"], measured, f"ratio >= {FP8_SPEEDUP}", value,
                    verdict(on_gpu, True, ratio >= FP8_SPEEDUP))]


def _exp(ok, rows, on_gpu, ceilings) -> list[Finding]:
    measured = ("fastest attention forward per head_dim: its exp units' utilization (exps/s over the measured "
                "exp2 rate) against its tensor utilization (over the measured matmul ceiling)")
    holds_when = "exp utilization >= tensor utilization"
    prefill = [r for r in ok if r["workload"] == "attention" and r.get("phase") == "prefill"]
    if not prefill:
        return [Finding(CLAIMS["exp"], SOURCES["exp"], measured, holds_when,
                        _skips(rows, workload="attention", phase="prefill"), UNMEASURABLE)]
    by_dim: dict[int, list[dict]] = {}
    for r in prefill:  # exp demand per FLOP grows as head_dim shrinks (4·D FLOPs per exp)
        by_dim.setdefault(r["head_dim"], []).append(r)
    return [_exp_finding(_best(group), on_gpu, ceilings, measured, holds_when) for group in by_dim.values()]


def _exp_finding(best: dict, on_gpu: bool, ceilings: dict, measured: str, holds_when: str) -> Finding:
    tensor = best.get("mfu_ceiling") if best.get("mfu_ceiling") is not None else best.get("mfu")
    exp = best.get("exp_util")
    value = (f"{best['backend']}, head_dim {best['head_dim']}, seq {best['seq_kv']}: "
             f"{best['tflops']:.4g} TFLOPS; exp units {_pct(exp)}, tensor cores {_pct(tensor)}")
    demand = _exp_demand(ceilings, best)
    if demand is not None:
        value += f"; at the matmul ceiling it would need {demand:.2f}x the measured exp rate"
    if exp is None:
        value += " (no measured exp rate for this device: run `mfu ceilings`)"
    known = exp is not None and tensor is not None
    return Finding(CLAIMS["exp"], SOURCES["exp"], measured, holds_when, value,
                   verdict(on_gpu, known, known and exp >= tensor))


def _exp_demand(ceilings: dict, r: dict) -> float | None:
    """Exps per second attention needs at the measured matmul ceiling (4·D FLOPs per exp), over the
    measured exp rate: above 1, the exp units cap attention before the tensor cores do."""
    matmul = (ceilings.get("matmul_tflops") or {}).get(r["dtype"])
    rate = ceilings.get("exp_per_s")
    if not matmul or not rate:
        return None
    return matmul * 1e12 / (4 * r["head_dim"]) / rate


def _triton_vs_vendor(ok, rows, on_gpu, ceilings) -> list[Finding]:
    findings = []
    for workload, ours in OURS.items():
        ratios = []
        for pid in dict.fromkeys(problem(r) for r in ok if r["workload"] == workload):
            mine = _best([r for r in ok if problem(r) == pid and r["backend"] in ours])
            theirs = _best([r for r in ok if problem(r) == pid and r["backend"] in VENDOR[workload]])
            if mine and theirs:
                ratios.append((speedup(theirs, mine), _describe(mine)))
        if not ratios and not any(r["workload"] == workload for r in rows):
            continue
        measured = (f"{workload}: the best of ours ({', '.join(ours)}) over the best vendor backend "
                    f"({', '.join(VENDOR[workload])}) on the same problems, TFLOPS")
        if not ratios:
            value = "no problem where both ran: " + _skips(rows, workload=workload)
            findings.append(Finding(CLAIMS["triton"], SOURCES["triton"],
                                    measured, f"geomean >= {TRITON_VS_VENDOR}", value, UNMEASURABLE))
            continue
        mean = geomean(x for x, _ in ratios)
        worst = min(ratios)
        value = f"{mean:.3g}x geomean over {len(ratios)} problem(s); lowest {worst[0]:.3g}x ({worst[1]})"
        findings.append(Finding(CLAIMS["triton"], SOURCES["triton"],
                                measured, f"geomean >= {TRITON_VS_VENDOR}", value,
                                verdict(on_gpu, True, mean >= TRITON_VS_VENDOR)))
    return findings


def _compute_comm(ok, rows, on_gpu, ceilings) -> list[Finding]:
    measured = ("tp-linear and ep-moe on a group of 2+ GPUs: compute alone over communication alone "
                "(compute_comm_ratio), per case, with how much of the communication overlap hid")
    holds_when = f"compute_comm_ratio >= {COMM_RATIO:g}"
    layers = [r for r in ok if r["workload"] in LAYERS]
    measured_rows = [r for r in layers if r.get("compute_comm_ratio") is not None]
    findings = []
    for r in measured_rows:
        hidden = f", overlap hides {_pct(r['overlap_eff'])}" if r.get("overlap_eff") is not None else ""
        value = (f"{_describe(r)}: compute {r['compute_ms']:.4g} ms, comm {r['comm_ms']:.4g} ms, "
                 f"ratio {r['compute_comm_ratio']:.3g}{hidden}")
        findings.append(Finding(CLAIMS["comm"], SOURCES["comm"], measured, holds_when, value,
                                verdict(on_gpu, True, r["compute_comm_ratio"] >= COMM_RATIO)))
    if not findings:
        present = [w for w in LAYERS if any(r["workload"] == w for r in rows)]
        if layers:
            value = ("every layer ran on a group of one rank, compute only: run them on several GPUs "
                     "(mfu run --nproc N) to measure communication")
        elif present:
            value = "no tp-linear or ep-moe case ran: " + "; ".join(_skips(rows, workload=w) for w in present)
        else:
            value = "no tp-linear or ep-moe case in this run"
        findings.append(Finding(CLAIMS["comm"], SOURCES["comm"], measured, holds_when, value, UNMEASURABLE))
    return findings
