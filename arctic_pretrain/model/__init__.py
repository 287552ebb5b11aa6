"""The model: transformers' LlamaForCausalLM from a ModelConfig, its attention backend, FLOPs and loss.

The builders load lazily (PEP 562): ``arctic_pretrain.model.config`` is imported by every stage's config
schema, and importing the package must not pull torch and transformers (~7 s on 2 cores) into a
``--help``, a config error or a dry run."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# an HF export folder written by training carries this file (phase, step, tokens); evaluation finds exports by it
EXPORT_META = "arctic_export.json"

_LAZY = {"build_model": "build", "llama_config": "build", "padded_vocab_size": "build",
         "resolve_attention": "build", "flops_per_token": "flops", "peak_flops": "flops"}

if TYPE_CHECKING:
    from arctic_pretrain.model.build import build_model, llama_config, padded_vocab_size, resolve_attention
    from arctic_pretrain.model.flops import flops_per_token, peak_flops


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"arctic_pretrain.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXPORT_META", "build_model", "flops_per_token", "llama_config", "padded_vocab_size", "peak_flops",
           "resolve_attention"]
