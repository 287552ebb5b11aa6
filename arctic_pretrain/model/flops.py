"""Training FLOPs per token and device peaks, for MFU (PaLM, appendix B)."""

from __future__ import annotations

import torch

from arctic_pretrain.model.config import ModelConfig

# Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """6N + 12 * layers * heads * head_dim * seq_len, with N the matmul parameters (tied output counted once)."""
    h, layers = cfg.hidden_size, cfg.num_layers
    head_dim = h // cfg.num_heads
    kv = cfg.num_kv_heads * head_dim
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * cfg.intermediate_size  # q, k+v, o, gate/up/down
    n = layers * per_layer + vocab_size * h  # output projection (the embedding lookup costs no FLOPs)
    return 6.0 * n + 12.0 * layers * cfg.num_heads * head_dim * seq_len


def peak_flops(configured_tflops: float | None) -> float | None:
    """Per-device peak FLOP/s: the configured value, a known GPU's, or None (MFU is then not reported)."""
    if configured_tflops:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None
