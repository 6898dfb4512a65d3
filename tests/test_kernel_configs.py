"""`config=`: each autotuned kernel run with one fixed triton.Config, bypassing the autotuner.

Under the interpreter (CPU) with configs other than the autotuner's, so a config that is silently
ignored would go unnoticed only if both tile shapes gave the same wrong answer; the autotuner's
cache must stay empty (nothing benchmarked). The `gpu` tests use the same path with FIXED_CONFIG.
"""

import pytest
import torch
import triton

from kernels import attention, decode_attention, gemm, moe

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def no_autotuning(monkeypatch):
    """Fail the test if any of our autotuners runs."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"autotuner of {self.fn} ran although a config was given")
    monkeypatch.setattr(triton.runtime.autotuner.Autotuner, "run", refuse)


def test_fixed_configs_fit_the_kernels():
    for kernel, config in ((gemm._tiled_kernel, gemm.FIXED_CONFIG), (gemm._tma_kernel, gemm.FIXED_CONFIG),
                           (moe._gate_up_kernel, moe.FIXED_CONFIG), (moe._down_kernel, moe.FIXED_CONFIG),
                           (attention._forward_kernel, attention.FIXED_CONFIG),
                           (decode_attention._split_kernel, decode_attention.FIXED_CONFIG)):
        assert set(config.kwargs) == set(kernel.configs[0].kwargs)


@pytest.mark.parametrize("variant", ["tiled", "tma", "auto"])
def test_gemm_with_a_fixed_config(variant, no_autotuning):
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (37, 48), generator=gen, dtype=torch.int8).to(DEVICE)
    b = torch.randint(-128, 128, (80, 48), generator=gen, dtype=torch.int8).to(DEVICE).T  # k-major B
    config = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 2}, num_stages=1, num_warps=4)
    out = gemm.matmul(a, b, variant=variant, config=config)
    assert torch.equal(out.cpu(), a.cpu().int() @ b.cpu().int())


def test_a_config_of_the_wrong_kernel_is_refused():
    a = torch.ones(8, 16, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="BLOCK_M.*BLOCK_N.*GROUP_M"):
        gemm.matmul(a, a.T, config=moe.FIXED_CONFIG)
    with pytest.raises(ValueError, match="triton.Config"):
        attention.attention(a[None, None], a[None, None], a[None, None], config={"BLOCK_M": 16, "BLOCK_N": 16})
    q = torch.ones(1, 2, 1, 16, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="must divide"):
        decode_attention.decode_attention(q, q, q, config=triton.Config({"BLOCK_N": 48}))


def test_moe_with_a_fixed_config(no_autotuning):
    gen = torch.Generator().manual_seed(0)
    t, e, k, h, i = 7, 4, 2, 48, 40
    x = torch.randn(t, h, generator=gen).half().to(DEVICE)
    w_gate_up = (torch.randn(e, 2 * i, h, generator=gen) / h ** 0.5).half().to(DEVICE)
    w_down = (torch.randn(e, h, i, generator=gen) / i ** 0.5).half().to(DEVICE)
    ids = torch.rand(t, e, generator=gen).topk(k, dim=1).indices.to(DEVICE)
    weights = torch.softmax(torch.randn(t, k, generator=gen), dim=1).to(DEVICE)
    config = triton.Config({"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}, num_stages=1, num_warps=4)
    out = moe.moe(x, w_gate_up, w_down, ids, weights, config=config).double().cpu()
    ref = torch.zeros(t, h, dtype=torch.float64)
    for tok in range(t):
        for j in range(k):
            ex = int(ids[tok, j])
            gu = w_gate_up[ex].cpu().double() @ x[tok].cpu().double()
            act = torch.nn.functional.silu(gu[:i]) * gu[i:]
            ref[tok] += float(weights[tok, j]) * (w_down[ex].cpu().double() @ act)
    assert ((out - ref).abs().max() / ref.abs().max()) < 5e-3


def _attention_inputs(b, hq, hkv, sq, skv, d):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen).half().to(DEVICE)
               for shape in ((b, hq, sq, d), (b, hkv, skv, d), (b, hkv, skv, d)))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.cpu().double(), k.cpu().double().repeat_interleave(hq // hkv, 1),
        v.cpu().double().repeat_interleave(hq // hkv, 1),
        attn_mask=torch.ones(sq, skv, dtype=torch.bool).tril(skv - sq))
    return q, k, v, ref


def test_attention_with_a_fixed_config(no_autotuning):
    q, k, v, ref = _attention_inputs(1, 4, 2, 19, 37, 16)
    out = attention.attention(q, k, v, causal=True, config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 16},
                                                                           num_stages=1, num_warps=4))
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=2e-3)


def test_decode_attention_with_a_fixed_config(no_autotuning):
    q, k, v, ref = _attention_inputs(2, 8, 2, 1, 77, 16)
    config = triton.Config({"BLOCK_N": decode_attention.CHUNK_ALIGN}, num_stages=1, num_warps=4)
    out = decode_attention.decode_attention(q, k, v, splits=3, config=config)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=2e-3)
