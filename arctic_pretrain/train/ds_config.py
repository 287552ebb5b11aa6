"""The DeepSpeed JSON for a run, generated from the structured config (one source of truth)."""

from __future__ import annotations

from typing import Any

import torch

from arctic_pretrain.train.config import TrainConfig


def use_bf16(precision: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


DEEPSPEED_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)


def deepspeed_config(cfg: TrainConfig, world_size: int, load_universal: bool = False,
                     params: int | None = None) -> dict[str, Any]:
    """``params``: the model's parameter count. ZeRO-1/2 allocate a reduce_bucket_size gradient buffer every
    step (2 GB in fp32 at DeepSpeed's default, NaN-filled by torch's deterministic mode: ~1 s per step per rank
    on CPU); a model smaller than the default gets a bucket of its own size (one bucket, as before)."""
    t, ds, opt = cfg.training, cfg.deepspeed, cfg.optimizer
    gas = t.global_batch_size // (t.micro_batch_size * world_size)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        zero.update(contiguous_gradients=True, overlap_comm=torch.cuda.is_available())
    if ds.zero_stage in (1, 2) and params:
        zero["reduce_bucket_size"] = min(DEEPSPEED_BUCKET, params)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # exports read the fp32 checkpoint
    # the optimizer is ours (guards.make_optimizer: AdamW that can skip a bad step), passed to initialize()
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": opt.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(ds.precision)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return _merge(config, dict(ds.extra))
