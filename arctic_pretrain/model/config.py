"""The model schema: shared by training (builds it) and every stage that loads an export."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A Llama-2 style decoder, built as transformers' LlamaForCausalLM."""

    name: str = MISSING  # label used in logs and exports
    hidden_size: int = MISSING
    num_layers: int = MISSING
    intermediate_size: int = MISSING  # FFN width
    num_heads: int = MISSING
    num_kv_heads: int = MISSING  # == num_heads: no grouped-query attention (the paper's choice)
    max_seq_len: int = MISSING  # longest sequence the model can hold (RoPE positions)
    rope_theta: float = 10000.0  # not published for SnowCoder; Llama-2's value
    tie_embeddings: bool = True
    vocab_size: int | None = None  # None: the tokenizer's vocabulary rounded up to vocab_multiple
    vocab_multiple: int = 64
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attention: str = "auto"  # auto (flash_attention_2 when flash-attn imports, else sdpa) | flash_attention_2 | sdpa | eager
    activation_checkpointing: bool = False  # recompute layer activations in backward: less memory, ~30% more compute
