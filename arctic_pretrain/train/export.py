"""HF-format exports of checkpoints: what every evaluation tool and `from_pretrained` loads.

The weights come from the checkpoint's fp32 master copy (DeepSpeed's zero_to_fp32), so one path
serves ZeRO 1, 2 and 3 and an export needs no live training job: `python launch/export.py` runs it
after the fact on any checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from arctic_pretrain.model import EXPORT_META

log = logging.getLogger(__name__)



def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed checkpoint, whatever its ZeRO stage and world size."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if any(tag_dir.glob("*optim_states.pt")):
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    model_file = tag_dir / "mp_rank_00_model_states.pt"  # ZeRO stage 0: the module is saved whole
    return {k: v.float() for k, v in torch.load(model_file, map_location="cpu", weights_only=False)["module"].items()}


def export_checkpoint(tag_dir: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                      meta: dict[str, Any] | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``out_dir`` as an HF model folder (config, safetensors, tokenizer, arctic_export.json)."""
    tag_dir, out_dir = Path(tag_dir), Path(out_dir)
    state_file = tag_dir / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    config = LlamaConfig.from_pretrained(tag_dir / "hf_config")
    config.use_cache = True  # training builds the model without a KV cache; an export is for inference
    model = LlamaForCausalLM(config)
    model.generation_config.use_cache = True
    weights = consolidated_state_dict(tag_dir)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{tag_dir}: checkpoint does not match its hf_config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.tie_weights()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(dtype).save_pretrained(tmp, safe_serialization=True)
    tokenizer = tokenizer or state.get("tokenizer")
    if tokenizer:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp)
    info = {"checkpoint": str(tag_dir), "step": state.get("step"), "consumed_tokens": state.get("consumed_tokens"),
            "phase": state.get("phase_end") or state.get("phase"), "phase_index": state.get("phase_index")}
    info.update(meta or {})
    (tmp / EXPORT_META).write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("exported %s -> %s", tag_dir, out_dir)
    return out_dir
