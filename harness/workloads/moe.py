"""MoE expert layer (SwiGLU, routed experts only): parameters, routing, formulas, inputs and check.

Given x[T, H] and a routing (k distinct expert ids and weights per token), expert e holds
W_gate_up[e] = [W_gate; W_up], one [2I, H] weight (the fused layout inference engines load), and
W_down[e] [H, I]:   out_t = sum_j w_tj · W_down_e (silu(W_gate_e x_t) ⊙ W_up_e x_t),  e = id_tj.
The router GEMM is left out: it is a small GEMM, the gemm workload's `router` shape.

flops = 6·T·k·H·I (useful; rows a backend pads are its `flops_executed`);
bytes = E_act·3·H·I·s + T·H·(s + s_out), E_act = experts that receive at least one token
(2·T·H·s for bf16 and fp16; fp8 reads e4m3 x and writes bf16).

fp8 recipe (per-tensor scales): x and the weights are e4m3; each expert's W_gate_up and W_down
carry a float32 scale (x's is 1); gate/up stay in fp32 through SiLU·mul, h is quantized to e4m3
with a static unit scale (saturating at ±448; h stays O(1) with these inputs), and the down
projection writes bf16. The reference follows the same chain in fp32: rounding gate/up to bf16
before quantizing h (what torch's fp8 grouped GEMM would force) moves h by whole fp8 steps and
errs about 0.1, against 0.003 for this chain.

The routing is realized on the CPU from (tokens, experts, top_k, routing, seed) alone, once per
problem (cached), so every backend sees the same one and `mfu plan` never touches the device:
- balanced: token t goes to experts (t·k + j) mod E, j < k;
- uniform:  k distinct experts per token, uniformly at random;
- zipf:<s>: k distinct experts drawn without replacement with popularity ∝ rank^-s, the ranks
  given to experts in a seeded random order (real routers favour a few experts).
Routing weights are a seeded softmax over the k slots. `model:` presets fill experts, top_k,
hidden and intermediate from harness/measure/models.py (each cites its config.json); shared experts are
left out. The `dense-equivalent` backend runs a different problem (one expert, T·k rows); it
declares it (Backend.problem = DENSE, one of this workload's `problems`) and check() compares it
with that problem's reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from harness.measure import models
from harness.measure.check import Comparison, Tolerance, rows_from, tolerance
from harness.measure.dtypes import DType, matmul_precision
from harness.workloads import LABEL, Param, Workload

DENSE = "dense-equivalent"
ROUTINGS = "balanced, uniform or zipf:<s> with s > 0 (e.g. zipf:1.2)"
FP8_MAX = 448.0  # largest finite float8_e4m3fn
MAX_BLOCK_M = 128  # the most rows a backend pads each active expert to (kernels/moe.py)
_CHUNK_BYTES = 64 << 20  # the reference works through rows in chunks of about this size
_DRAW_ROWS = 8192  # routing draws T x E random keys this many tokens at a time


@dataclass(frozen=True)
class Routing:
    """A realized routing. Shared through a cache: never modify its tensors."""

    ids: torch.Tensor  # [T, k] int64, distinct within a row
    weights: torch.Tensor  # [T, k] float32, positive, rows sum to 1
    counts: torch.Tensor  # [E] int64: how many (token, slot) pairs each expert receives

    @property
    def experts_active(self) -> int:
        return int((self.counts > 0).sum())


def parse_routing(text: str) -> float | None:
    """The zipf exponent, or None for balanced/uniform; ValueError with what is allowed."""
    if text in ("balanced", "uniform"):
        return None
    kind, _, s = text.partition(":")
    try:
        exponent = float(s)
    except ValueError:
        exponent = float("nan")
    if kind != "zipf" or not math.isfinite(exponent) or exponent <= 0:
        raise ValueError(f"must be {ROUTINGS} (got {text!r})")
    return exponent


@functools.lru_cache(maxsize=16)
def realize(tokens: int, experts: int, top_k: int, routing: str, seed: int) -> Routing:
    """The routing of a problem, made on the CPU from its parameters alone."""
    gen = torch.Generator().manual_seed(seed)
    if routing == "balanced":
        ids = (torch.arange(tokens)[:, None] * top_k + torch.arange(top_k)) % experts
    else:
        ids = _sample(tokens, experts, top_k, _log_popularity(experts, parse_routing(routing), gen), gen)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    return Routing(ids, weights, torch.bincount(ids.flatten(), minlength=experts))


def _log_popularity(experts: int, zipf: float | None, gen: torch.Generator) -> torch.Tensor:
    if zipf is None:
        return torch.zeros(experts)
    rank = torch.empty(experts)
    rank[torch.randperm(experts, generator=gen)] = torch.arange(1, experts + 1, dtype=torch.float32)
    return -zipf * rank.log()


def _sample(tokens: int, experts: int, top_k: int, log_p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """k distinct experts per token, without replacement, by the Gumbel-top-k trick."""
    picks = []
    for start in range(0, tokens, _DRAW_ROWS):
        u = torch.rand(min(_DRAW_ROWS, tokens - start), experts, generator=gen).clamp_min(1e-20)
        picks.append((log_p - (-u.log()).log()).topk(top_k, dim=1).indices)
    return torch.cat(picks)


def _routing(p: dict) -> Routing:
    return realize(p["tokens"], p["experts"], p["top_k"], p["routing"], p["seed"])


def _preset_rows(model: str):
    def rows() -> list[dict]:
        m = models.get(model)
        return [{"experts": m.experts, "top_k": m.top_k, "hidden": m.hidden,
                 "intermediate": m.intermediate, "label": model}]

    return rows


class Moe(Workload):
    name = "moe"
    params = (
        Param("tokens", int, "tokens in the batch (T)", required=True, minimum=1),
        Param("experts", int, "routed experts (E); a model preset fills it", required=True, minimum=1),
        Param("top_k", int, "experts per token (k); a model preset fills it", required=True, minimum=1),
        Param("hidden", int, "model width (H); a model preset fills it", required=True, minimum=1),
        Param("intermediate", int, "each expert's width (I); a model preset fills it", required=True, minimum=1),
        Param("routing", str, f"how tokens pick experts: {ROUTINGS}", default="balanced"),
        Param("seed", int, "seed of the routing (the inputs have the case's own seed)", default=0, minimum=0),
        LABEL,
    )
    dtypes = ("bf16", "fp16", "fp8")
    default_dtype = "bf16"
    baseline = DENSE  # the same useful FLOPs as dense GEMMs: the ceiling MoE is compared with
    problems = (DENSE,)  # the dense-equivalent backend's: one expert over T·k rows
    summary_columns = ("experts_active", "expert_tokens_max", "flops_executed")
    presets = {name: _preset_rows(name) for name, spec in models.MODELS.items() if spec.is_moe}

    def validate(self, p: dict) -> tuple[str, str] | None:
        try:
            parse_routing(p["routing"])
        except ValueError as exc:
            return "routing", str(exc)
        if p["top_k"] > p["experts"]:
            return "top_k", (f"must be at most experts ({p['experts']}): a token's k experts are "
                             f"distinct (got {p['top_k']})")
        return None

    def flops(self, p: dict) -> int:
        return rows_flops(p, p["tokens"] * p["top_k"])

    def bytes(self, p: dict, dtype: DType) -> int:
        h, i, s = p["hidden"], p["intermediate"], dtype.size
        return _routing(p).experts_active * 3 * h * i * s + p["tokens"] * h * (s + dtype.out_size)

    def extra_columns(self, p: dict, dtype: DType) -> dict:
        r = _routing(p)
        return {"experts_active": r.experts_active, "expert_tokens_max": int(r.counts.max())}

    def memory_bytes(self, p: dict, dtype: DType) -> int:
        t, e, k, h, i = (p[n] for n in ("tokens", "experts", "top_k", "hidden", "intermediate"))
        s, pairs = dtype.size, t * k
        tensors = e * 3 * h * i * s + t * h * (s + dtype.out_size) + pairs * 12  # + ids and weights
        padded = pairs + min(e, pairs) * (MAX_BLOCK_M - 1)
        # The hungriest backend holds gathered x, y and y unsorted (at most 2 bytes each), and
        # gate/up, silu and h (fp32 in the fp8 recipe).
        work = padded * (3 * h * 2 + 4 * i * (4 if dtype.name == "fp8" else s))
        # The reference: fp32 output (T·k rows for the dense-equivalent), one expert's weights in
        # fp32, and its row chunks and comparison temporaries.
        check = pairs * h * 4 + 3 * h * i * 4 + 4 * _CHUNK_BYTES
        return tensors + work + check

    def make_inputs(self, p: dict, dtype: DType, device: str, gen: torch.Generator) -> dict:
        t, e, h, i = p["tokens"], p["experts"], p["hidden"], p["intermediate"]
        r = _routing(p)
        x = torch.randn((t, h), dtype=torch.float32 if dtype.name == "fp8" else dtype.storage,
                        device=device, generator=gen).to(dtype.storage)
        w_gate_up, gate_up_scale = random_weights((e, 2 * i, h), dtype, device, gen)
        w_down, down_scale = random_weights((e, h, i), dtype, device, gen)
        inputs = {"x": x, "w_gate_up": w_gate_up, "w_down": w_down,
                  "topk_ids": r.ids.to(device, copy=True), "topk_weights": r.weights.to(device, copy=True),
                  "out": torch.full((t, h), float("nan"), dtype=dtype.output, device=device)}
        if dtype.name == "fp8":
            inputs.update(w_gate_up_scale=gate_up_scale, w_down_scale=down_scale)
        return inputs

    def check(self, inputs: dict, out: torch.Tensor, p: dict, dtype: DType, problem: str | None = None,
              weights_of=None) -> str | None:
        """`weights_of`: as in reference(), for a caller whose inputs do not hold every expert (ep-moe)."""
        rows = p["tokens"] * (p["top_k"] if problem == DENSE else 1)
        want = (rows, p["hidden"])
        if tuple(out.shape) != want or out.dtype != dtype.output:
            return f"output is {tuple(out.shape)} {out.dtype}, expected {want} {dtype.output}"
        with matmul_precision("highest"):  # the reference never runs on TF32
            ref = reference(inputs, p, problem, weights_of)
        comparison = Comparison(tolerance_for(p, dtype))
        chunk = max(1, _CHUNK_BYTES // (p["hidden"] * 4))
        for start in range(0, rows, chunk):
            wrong = comparison.add(out[start:start + chunk].float(), ref[start:start + chunk], rows_from(start))
            if wrong:
                return f"{dtype.name} {wrong}"
        wrong = comparison.finish()
        return f"{dtype.name} {wrong}" if wrong else None


def tolerance_for(p: dict, dtype: DType) -> Tolerance:
    """harness/measure/check.py's rule for this layer, for the workload's check and the kernel tests alike.

    Reductions are H (gate/up) and I (down) long. Roundings to the output dtype, counted for the
    backend that rounds most (torch-loop): gate/up, SiLU, the product h, the down projection, the
    routing weight, then k - 1 additions into out; every other backend rounds a subset. In fp8
    gate/up stays fp32, but the reference itself quantizes h to e4m3, so h's tiny differences
    flip some of its elements by a whole fp8 step (the requantization term). A wrong expert,
    weight or activation moves whole rows by O(1): an outlier far above these bounds."""
    fp8_h = p["hidden"] if dtype.name == "fp8" else None
    return tolerance(dtype, max(p["hidden"], p["intermediate"]), roundings=4 + p["top_k"], requantized_k=fp8_h)


def random_weights(shape: tuple, dtype: DType, device: str, gen: torch.Generator):
    """Expert weights ~ N(0, 1/fan-in), so every stage stays near unit size (far from fp16's
    range): the values themselves in 16-bit dtypes; for fp8, N(0, 1) in e4m3 with a per-expert
    scale, made one expert at a time (a float copy of all experts may not fit)."""
    scale = shape[2] ** -0.5
    if dtype.name != "fp8":
        return torch.randn(shape, dtype=dtype.storage, device=device, generator=gen).mul_(scale), None
    w = torch.empty(shape, dtype=dtype.storage, device=device)
    for e in range(shape[0]):
        w[e] = torch.randn(shape[1:], device=device, generator=gen)
    return w, torch.full((shape[0],), scale, device=device)


def quantize_h(h: torch.Tensor) -> torch.Tensor:
    """The fp8 recipe's h: e4m3 with a unit static scale, saturating rather than overflowing."""
    return h.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def expert_weights(inputs: dict, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's W_gate_up and W_down in float32, scales applied."""
    ws = []
    for name in ("w_gate_up", "w_down"):
        w = inputs[name][e].float()
        ws.append(w * inputs[f"{name}_scale"][e] if f"{name}_scale" in inputs else w)
    return ws[0], ws[1]


def rows_flops(p: dict, rows: int) -> int:
    """FLOPs of the three expert GEMMs over `rows` (token, expert) rows: 2·rows·H·(2I + I)."""
    return 6 * rows * p["hidden"] * p["intermediate"]


def dense_equivalent_bytes(p: dict, dtype: DType) -> int:
    """Traffic of the dense-equivalent: one expert's weights, T·k rows in and T·k rows out."""
    h, rows = p["hidden"], p["tokens"] * p["top_k"]
    return 3 * h * p["intermediate"] * dtype.size + rows * h * (dtype.size + dtype.out_size)


def by_expert(ids: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The one grouping of routed (token, slot) pairs by expert, used by every MoE path: the pair
    ids (token · top_k + slot) sorted by expert, stably so each expert keeps token order, and how
    many pairs each expert received. Expert e's pairs are order[start:end], see `spans`."""
    flat = ids.flatten()
    return torch.argsort(flat, stable=True), torch.bincount(flat, minlength=experts)


def spans(counts: torch.Tensor) -> list[tuple[int, int, int]]:
    """(expert, start, end) in by_expert's order, for each expert that received any pair."""
    ends = counts.cumsum(0).tolist()
    return [(e, start, end) for e, (start, end) in enumerate(zip([0] + ends[:-1], ends)) if end > start]


def expert_groups(p: dict, problem: str | None = None):
    """(expert, input rows, output rows, weights) per expert with rows, on the CPU.

    For the MoE, (token, slot) pairs grouped by expert, input and output row both the token; for
    the dense-equivalent, all T·k pairs on expert 0 with output row = pair and weight 1.
    """
    k = p["top_k"]
    if problem == DENSE:
        pairs = torch.arange(p["tokens"] * k)
        yield 0, pairs // k, pairs, torch.ones(len(pairs))
        return
    r = _routing(p)
    order, counts = by_expert(r.ids, p["experts"])
    weights = r.weights.flatten()[order]
    for e, start, end in spans(counts):
        tokens = order[start:end] // k
        yield e, tokens, tokens, weights[start:end]


def reference(inputs: dict, p: dict, problem: str | None = None, weights_of=None) -> torch.Tensor:
    """The float32 output, one expert (and one chunk of its rows) at a time, so that its extra
    memory is one expert's weights in fp32 plus a chunk, whatever the number of experts.
    weights_of(e) gives expert e's float32 (W_gate_up, W_down); by default expert_weights(inputs, e)."""
    x, i, fp8 = inputs["x"], p["intermediate"], inputs["x"].dtype == torch.float8_e4m3fn
    rows = p["tokens"] * (p["top_k"] if problem == DENSE else 1)
    ref = torch.zeros(rows, p["hidden"], dtype=torch.float32, device=x.device)
    chunk = max(1, _CHUNK_BYTES // ((2 * p["hidden"] + 3 * i) * 4))
    for e, rows_in, rows_out, weights in expert_groups(p, problem):
        w_gate_up, w_down = weights_of(e) if weights_of else expert_weights(inputs, e)
        for start in range(0, len(rows_in), chunk):
            part = slice(start, start + chunk)
            gate_up = x.index_select(0, rows_in[part].to(x.device)).float() @ w_gate_up.T
            h = torch.nn.functional.silu(gate_up[:, :i]) * gate_up[:, i:]
            if fp8:
                h = quantize_h(h).float()
            y = (h @ w_down.T) * weights[part].to(x.device)[:, None]
            ref.index_add_(0, rows_out[part].to(x.device), y)
    return ref


MOE = WORKLOAD = Moe()
