"""The model: transformers' LlamaForCausalLM from a ModelConfig, its attention backend, FLOPs and loss."""

from arctic_pretrain.model.build import build_model, llama_config, padded_vocab_size, resolve_attention
from arctic_pretrain.model.flops import flops_per_token, peak_flops

# an HF export folder written by training carries this file (phase, step, tokens); evaluation finds exports by it
EXPORT_META = "arctic_export.json"

__all__ = ["EXPORT_META", "build_model", "flops_per_token", "llama_config", "padded_vocab_size", "peak_flops",
           "resolve_attention"]
