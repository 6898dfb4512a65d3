"""kernels/attention.py, kernels/attention_ws.py and kernels/decode_attention.py against a float64 reference.

On CPU the kernels run under Triton's interpreter (tests/conftest.py), in fp16 and fp32 (the
interpreter has no bf16), with tiny odd lengths so every path runs: partial query and key tiles,
head_dim padded to a power of two, GQA and MQA, bottom-right causal with seq_q < seq_kv, and decode
with one split, many splits, and a split in which a query sees no key at all. attention_ws (the
Hopper variant: head_dim 64 and 128 only, fp16/bf16) runs there too: the interpreter runs its TMA
descriptors (zero fill past a head's rows, stores clipped) and ignores warp_specialize, so the CPU
tests cover its masking, tiling and validation, not TMA hardware or warp specialization; its
`gpu` tests compare it with SDPA and the reference. The `gpu` tests add bf16 at real sizes, with one
fixed config per kernel.

Outputs are judged by the harness's one rule (harness/measure/check.py) with the attention workload's
tolerance (k = seq_kv + head_dim, P and the output rounded): relative to each output row's scale,
since outputs shrink like 1/sqrt(keys seen); the bf16 tests at real sizes run the workload's check.
"""

import math

import pytest
import torch

import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from harness import backends
from harness.hardware.device import DeviceFacts
from harness.measure.check import Tolerance, compare
from harness.measure.dtypes import DTYPES
from harness.workloads.attention import ATTENTION, tolerance_for as attention_tolerance
from kernels import attention, attention_ws, decode_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAME = {torch.float32: "fp32", torch.float16: "fp16"}


def make(b, hq, hkv, sq, skv, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
               for shape in ((b, hq, sq, d), (b, hkv, skv, d), (b, hkv, skv, d)))
    return q, k, v, torch.full_like(q, float("nan"))


def reference(q, k, v, causal):
    """float64 softmax(q·kᵀ/√D, bottom-right causal)·v with K/V repeated to the query heads."""
    g = q.shape[1] // k.shape[1]
    q = q.double().cpu()
    k, v = (t.double().cpu().repeat_interleave(g, 1) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        sq, skv = q.shape[2], k.shape[2]
        hidden = torch.arange(skv)[None, :] > torch.arange(sq)[:, None] + (skv - sq)
        s = s.masked_fill(hidden, float("-inf"))
    return torch.softmax(s, -1) @ v


def assert_matches(out, q, k, v, causal):
    tol = attention_tolerance({"seq_kv": k.shape[2], "head_dim": q.shape[3]}, DTYPES[NAME[out.dtype]])
    problem = compare(out.double().cpu(), reference(q, k, v, causal), tol, rms_dim=-1)
    assert problem is None, problem


PREFILL = [  # b, hq, hkv, sq, skv, d, causal
    (1, 2, 2, 17, 17, 16, True),  # square causal, ragged last tiles
    (2, 4, 2, 19, 53, 24, True),  # GQA, bottom-right causal with seq_q < seq_kv, head_dim padded
    (1, 4, 1, 33, 33, 32, False),  # MQA
    (1, 2, 2, 40, 23, 16, False),  # more queries than keys (non-causal)
    (1, 2, 1, 1, 40, 16, True),  # one decode query through the prefill kernel
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b, hq, hkv, sq, skv, d, causal", PREFILL)
def test_prefill_kernel_matches_the_reference(b, hq, hkv, sq, skv, d, causal, dtype):
    q, k, v, out = make(b, hq, hkv, sq, skv, d, dtype)
    assert attention.prepare(q, k, v, out, causal=causal)() is out
    assert_matches(out, q, k, v, causal)


DECODE = [  # b, hq, hkv, sq, skv, d, causal, splits
    (2, 8, 2, 1, 77, 32, True, 1),  # one split writes out directly
    (2, 8, 2, 1, 77, 32, True, 5),  # many splits and the reduction
    (1, 4, 1, 3, 50, 24, True, 4),  # speculative: the last chunk holds keys query 0 may not see
    (1, 4, 4, 2, 65, 16, False, 3),  # multi-head, no mask
    (1, 4, 2, 4, 48, 16, True, None),  # the heuristic's choice
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b, hq, hkv, sq, skv, d, causal, splits", DECODE)
def test_decode_kernel_matches_the_reference(b, hq, hkv, sq, skv, d, causal, splits, dtype):
    q, k, v, out = make(b, hq, hkv, sq, skv, d, dtype)
    assert decode_attention.prepare(q, k, v, out, causal=causal, splits=splits)() is out
    assert_matches(out, q, k, v, causal)
    if splits:
        assert decode_attention.split_count(b, hkv, skv, DEVICE, splits) == splits


def test_split_heuristic():
    n = decode_attention.num_splits
    assert n(groups=264, seq_kv=131072, sms=132) == 1  # batch x kv heads already fills every slot
    assert n(groups=8, seq_kv=131072, sms=132) >= 16  # batch 1: split to reach the SMs
    assert n(groups=8, seq_kv=256, sms=132) == 1  # nothing worth splitting
    counts = [n(groups=g, seq_kv=32768, sms=132) for g in (1, 4, 16, 64, 256)]
    assert counts == sorted(counts, reverse=True) and max(counts) <= decode_attention.MAX_SPLITS
    for skv, s in ((1000, 7), (131072, 33)):  # chunks cover the cache, none is empty
        chunk = decode_attention.chunk_len(skv, s)
        splits = decode_attention.split_count(1, 1, skv, "cpu", s)
        assert chunk % decode_attention.CHUNK_ALIGN == 0 and (splits - 1) * chunk < skv <= splits * chunk


def test_unsupported_cases_say_why():
    assert "bf16" in attention.unsupported(torch.bfloat16, "cpu", 64) or torch.cuda.is_available()
    assert "above 256" in attention.unsupported(torch.float16, DEVICE, 512)
    reason = decode_attention.unsupported(torch.float16, DEVICE, heads=64, kv_heads=1, seq_q=4, head_dim=64)
    assert "256 rows" in reason and "prefill kernel" in reason
    q, k, v, out = make(1, 2, 2, 5, 3, 16, torch.float32)
    with pytest.raises(ValueError, match="causal needs seq_q <= seq_kv"):
        attention.prepare(q, k, v, out, causal=True)
    with pytest.raises(ValueError, match="splits must be between"):
        decode_attention.prepare(q, k, v, out, causal=False, splits=1000)


def harness_check(q, k, v, out, causal, phase):
    (b, hq, sq, d), (hkv, skv) = q.shape, k.shape[1:3]
    p = dict(phase=phase, batch=b, heads=hq, kv_heads=hkv, seq_q=sq, seq_kv=skv, head_dim=d, causal=causal)
    return ATTENTION.check({"q": q, "k": k, "v": v}, out, p, DTYPES["bf16"])


# GPU: bf16 with each kernel's FIXED_CONFIG (no autotuning). Prefill compiles once per causal flag
# and per seq_kv specialization (3 compiles); decode once per (rows, single split or not): 3 split
# kernels and 2 reductions.
@pytest.mark.gpu
@pytest.mark.parametrize("sq, skv, causal", [(1000, 1536, True), (1000, 1536, False), (1000, 1000, True)])
def test_prefill_bf16_at_real_size(sq, skv, causal):
    q, k, v, out = make(2, 16, 4, sq, skv, 128, torch.bfloat16)
    attention.prepare(q, k, v, out, causal=causal, config=attention.FIXED_CONFIG)()
    assert harness_check(q, k, v, out, causal, "prefill") is None


@pytest.mark.gpu
@pytest.mark.parametrize("batch, sq, seq_kv", [(1, 1, 32768), (64, 1, 4099), (4, 4, 8191)])
def test_decode_bf16_at_real_size(batch, sq, seq_kv):
    q, k, v, out = make(batch, 32, 8, sq, seq_kv, 128, torch.bfloat16)
    decode_attention.prepare(q, k, v, out, causal=True, config=decode_attention.FIXED_CONFIG)()
    assert harness_check(q, k, v, out, True, "decode") is None


# attention_ws: on CPU fp16 only (the interpreter has no bf16, the kernel no fp32), head_dim 64/128.
HOPPER_PREFILL = [  # b, hq, hkv, sq, skv, d, causal
    (1, 2, 2, 37, 37, 64, True),  # square causal, ragged last tiles: unmasked, diagonal, clipped store
    (2, 4, 2, 19, 53, 128, True),  # GQA, bottom-right causal with seq_q < seq_kv
    (1, 4, 1, 33, 48, 64, False),  # MQA, seq_kv a multiple of every BLOCK_N: the unmasked loop
    (1, 2, 2, 40, 23, 128, False),  # ragged seq_kv: the masked loop; more queries than keys
    (1, 2, 1, 1, 40, 64, True),  # one query: sees every key
]


@pytest.mark.parametrize("b, hq, hkv, sq, skv, d, causal", HOPPER_PREFILL)
def test_hopper_prefill_kernel_matches_the_reference(b, hq, hkv, sq, skv, d, causal):
    q, k, v, out = make(b, hq, hkv, sq, skv, d, torch.float16)
    assert attention_ws.prepare(q, k, v, out, causal=causal)() is out
    assert_matches(out, q, k, v, causal)


@pytest.mark.parametrize("sq, skv, d, causal, config", [
    (200, 300, 64, True, attention_ws.FIXED_CONFIG),  # 2 query tiles: unmasked stage, 3 diagonal tiles
    (130, 256, 128, False, attention_ws.FIXED_WS_CONFIG),  # whole key tiles, no mask
    (130, 300, 64, False, attention_ws.FIXED_WS_CONFIG),  # ragged last key tile, masked loop
])
def test_hopper_prefill_with_its_fixed_configs(sq, skv, d, causal, config):
    q, k, v, out = make(1, 2, 1, sq, skv, d, torch.float16)
    attention_ws.prepare(q, k, v, out, causal=causal, config=config)()
    assert_matches(out, q, k, v, causal)


def test_hopper_prefill_through_its_backend():
    p = dict(phase="prefill", batch=1, heads=4, kv_heads=2, seq_q=45, seq_kv=70, head_dim=64, causal=True)
    backend, dtype = backends.get("attention", "triton-ws"), DTYPES["fp16"]
    facts = DeviceFacts(kind=DEVICE, name=DEVICE)
    assert backend.unsupported(p, dtype, facts) is None
    assert "triton-decode" in backend.unsupported({**p, "phase": "decode", "seq_q": 1}, dtype, facts)
    assert "head_dim 96" in backend.unsupported({**p, "head_dim": 96}, dtype, facts)
    assert "fp16, bf16" in backend.unsupported(p, DTYPES["fp32"], facts)
    inputs = ATTENTION.make_inputs(p, dtype, DEVICE, torch.Generator(device=DEVICE).manual_seed(0))
    out = backend.build(inputs, p, dtype)()
    assert out is inputs["out"] and ATTENTION.check(inputs, out, p, dtype) is None


def test_hopper_prefill_refuses_what_it_does_not_do():
    if not torch.cuda.is_available():
        assert "bf16" in attention_ws.unsupported(torch.bfloat16, "cpu", 64)
    q, k, v, out = make(1, 2, 2, 16, 16, 64, torch.float16)
    with pytest.raises(ValueError, match="non-causal kernel only"):
        attention_ws.prepare(q, k, v, out, causal=True, config=attention_ws.FIXED_WS_CONFIG)
    with pytest.raises(ValueError, match="TMA"):  # the head dimension strided: no TMA rows
        attention_ws.prepare(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, out, causal=False)
    with pytest.raises(ValueError, match="scale must be positive"):
        attention_ws.prepare(q, k, v, out, causal=False, scale=-1.0)


def test_hopper_prefill_configs(monkeypatch):
    """FIXED_* fit the autotuner's parameters; on an H100's 227 KB the prune never offers warp
    specialization to causal, nor a config over the shared memory or one known to spill."""
    configs = attention_ws.production_configs()
    for fixed in (attention_ws.FIXED_CONFIG, attention_ws.FIXED_WS_CONFIG):
        assert set(fixed.kwargs) == set(configs[0].kwargs)
    monkeypatch.setattr(attention_ws, "smem_bytes", lambda index: 232448)
    q = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16)
    for d in attention_ws.HEAD_DIMS:
        for causal in (True, False):
            kept = attention_ws._prune(configs, {"q_ptr": q}, HEAD_DIM=d, CAUSAL=causal)
            assert kept and all(attention_ws.smem_estimate(c, d, 2) <= 232448 for c in kept)
            assert any(c.kwargs["BLOCK_N"] == 128 for c in kept)
            ws = [c for c in kept if c.kwargs["WARP_SPECIALIZE"]]
            assert not ws if causal else ws and all(c.num_warps == 4 for c in ws)
            assert d == 64 or all(c.num_warps == 8 for c in kept if not c.kwargs["WARP_SPECIALIZE"])


# GPU: bf16 at real sizes with the fixed configs, against the reference and against SDPA (each
# within the tolerance of the reference, so within twice it of each other). 10 compiles.
@pytest.mark.gpu
@pytest.mark.parametrize("d", attention_ws.HEAD_DIMS)
@pytest.mark.parametrize("sq, skv, causal, config", [
    (1024, 1024, True, attention_ws.FIXED_CONFIG), (1024, 1024, False, attention_ws.FIXED_CONFIG),
    (1024, 1024, False, attention_ws.FIXED_WS_CONFIG), (1000, 1536, True, attention_ws.FIXED_CONFIG),
    (1000, 1000, False, attention_ws.FIXED_WS_CONFIG)], ids=["causal", "full", "full-ws", "ragged-causal",
                                                             "ragged-full-ws"])
def test_hopper_prefill_bf16_against_sdpa(d, sq, skv, causal, config):
    reason = attention_ws.unsupported(torch.bfloat16, torch.device(DEVICE), d)
    if reason:
        pytest.skip(reason)
    q, k, v, out = make(2, 8, 2, sq, skv, d, torch.bfloat16)
    attention_ws.prepare(q, k, v, out, causal=causal, config=config)()
    assert harness_check(q, k, v, out, causal, "prefill") is None
    kv = [t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v)]  # any SDPA kernel, not only GQA ones
    sdpa = F.scaled_dot_product_attention(q, *kv, attn_mask=causal_lower_right(sq, skv) if causal else None)
    tol = attention_tolerance({"seq_kv": skv, "head_dim": d}, DTYPES["bf16"])
    assert compare(out.float(), sdpa.float(), Tolerance(2 * tol.norm, 2 * tol.element), rms_dim=-1) is None
