"""The model schema: shared by training (builds it) and every stage that loads an export."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from arctic_pretrain.common.config import require

LOSSES = ("auto", "logits", "chunked", "liger", "cut_ce")
CHECKPOINTING = ("none", "full", "selective")


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
    attention: str = "auto"  # auto (flash_attention_2 when flash-attn imports, else flex_attention on GPUs, sdpa on CPU) | flash_attention_2 | flex_attention | sdpa | eager
    # Throughput knobs (README "Throughput"); none changes the loss beyond the tolerances tests/model states.
    # Recompute decoder-layer activations in backward: none | full (every layer, ~30% more compute) |
    # selective (every activation_checkpointing_every-th layer). The old booleans still read: true=full, false=none.
    activation_checkpointing: str = "none"
    activation_checkpointing_every: int = 2
    # Next-token loss: logits (full logits, then cross-entropy) | chunked (PyTorch, over sequence chunks, recomputed in
    # backward: never holds batch x seq x vocab) | liger (liger-kernel's fused linear + CE, GPU) | cut_ce (Apple's
    # cut cross-entropy, GPU) | auto (liger, else cut_ce, when installed on a GPU; else logits)
    loss: str = "logits"
    loss_chunk_tokens: int = 2048  # chunked: sequence positions per chunk (the logits held: chunk x vocab in fp32)
    liger_kernels: bool = False  # liger-kernel's RMSNorm, RoPE and SwiGLU in place of transformers' eager ones (GPU)
    compile: bool = False  # torch.compile each decoder layer (the attention mask is still built once per forward)

    def __post_init__(self) -> None:
        validate_knobs(self)


def validate_knobs(cfg: ModelConfig) -> None:
    """The throughput knobs' values, each error naming its key (train/validate checks the rest)."""
    require(cfg.activation_checkpointing in CHECKPOINTING, "model.activation_checkpointing",
            cfg.activation_checkpointing, f"must be one of {CHECKPOINTING}")
    require(cfg.activation_checkpointing_every >= 1, "model.activation_checkpointing_every",
            cfg.activation_checkpointing_every, "must be >= 1 (selective checkpoints every k-th layer)")
    require(cfg.loss in LOSSES, "model.loss", cfg.loss, f"must be one of {LOSSES}")
    require(cfg.loss_chunk_tokens >= 1, "model.loss_chunk_tokens", cfg.loss_chunk_tokens, "must be positive")
