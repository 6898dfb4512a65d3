"""Model architecture presets: the few numbers of a transformer layer that fix its kernel shapes.

Workloads turn a preset into their own parameters: GEMM into the layer's projection shapes, MoE
into its expert-layer sizes, attention into its head layout. Each entry cites the model's published
config.json.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width, or the routed experts' width for an MoE
    source: str
    experts: int = 0  # routed experts; 0 for a dense model
    top_k: int = 0
    shared_experts: int = 0  # always-active experts of the routed width (DeepSeek, Llama 4)
    # False where the real attention is not GQA (DeepSeek-V3's MLA): the head counts here then
    # describe a GQA stand-in, and shape-exact consumers (the GEMM presets) leave the model out.
    attention_exact: bool = True
    note: str = ""

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def projections(self) -> list[tuple[str, int, int]]:
        """The layer's weight GEMMs as (name, n, k): a token row x[k] times W^T gives y[n]."""
        q_width = self.heads * self.head_dim
        rows = [
            ("qkv", (self.heads + 2 * self.kv_heads) * self.head_dim, self.hidden),
            ("o", self.hidden, q_width),
        ]
        if self.is_moe:
            rows.append(("router", self.experts, self.hidden))
        mlp = "expert" if self.is_moe else "mlp"
        rows += [
            (f"{mlp}_gate_up", 2 * self.intermediate, self.hidden),
            (f"{mlp}_down", self.hidden, self.intermediate),
        ]
        return rows


_HF = "https://huggingface.co/{}/blob/main/config.json"

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama3-8b", 4096, 32, 8, 128, 14336, _HF.format("meta-llama/Meta-Llama-3-8B")),
        ModelSpec("llama3-70b", 8192, 64, 8, 128, 28672, _HF.format("meta-llama/Meta-Llama-3-70B")),
        ModelSpec("qwen3-8b", 4096, 32, 8, 128, 12288, _HF.format("Qwen/Qwen3-8B")),
        ModelSpec("qwen3-30b-a3b", 2048, 32, 4, 128, 768, _HF.format("Qwen/Qwen3-30B-A3B"), 128, 8),
        ModelSpec("mixtral-8x7b", 4096, 32, 8, 128, 14336, _HF.format("mistralai/Mixtral-8x7B-v0.1"), 8, 2),
        ModelSpec("deepseek-v3", 7168, 128, 128, 128, 2048, _HF.format("deepseek-ai/DeepSeek-V3"), 256, 8,
                  shared_experts=1, attention_exact=False,
                  note="MLA attention (q_lora 1536, kv_lora 512) stands in as 128-head GQA with head_dim 128"),
        ModelSpec("llama4-scout", 5120, 40, 8, 128, 8192,
                  _HF.format("meta-llama/Llama-4-Scout-17B-16E"), 16, 1, shared_experts=1),
        ModelSpec("llama4-maverick", 5120, 40, 8, 128, 8192,
                  _HF.format("meta-llama/Llama-4-Maverick-17B-128E"), 128, 1, shared_experts=1,
                  note="MoE in every other layer; the dense layers' MLP is 16384 wide"),
        ModelSpec("gpt-oss-120b", 2880, 64, 8, 64, 2880, _HF.format("openai/gpt-oss-120b"), 128, 4),
        ModelSpec("gpt-oss-20b", 2880, 64, 8, 64, 2880, _HF.format("openai/gpt-oss-20b"), 32, 4),
    )
}


def get(name: str) -> ModelSpec:
    return MODELS[name]
