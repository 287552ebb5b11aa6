"""The model: transformers' LlamaForCausalLM from a ModelConfig, its attention backend and FLOPs."""

from arctic_pretrain.model.build import build_model, llama_config, padded_vocab_size, resolve_attention
from arctic_pretrain.model.flops import flops_per_token, peak_flops

__all__ = ["build_model", "flops_per_token", "llama_config", "padded_vocab_size", "peak_flops",
           "resolve_attention"]
