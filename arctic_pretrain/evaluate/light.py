"""In-training light evaluation at phase ends (rank 0): HumanEval pass@1 on the first problems and
held-out loss per data source.

Cheap enough to run inside a training job (a few dozen problems, short completions, no cache, no
files) while going through the same generation, stop handling and sandbox as the full evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arctic_pretrain.evaluate.config import EvalConfig, GenerationConfig, SandboxConfig
from arctic_pretrain.evaluate.runner import run_task
from arctic_pretrain.evaluate.sandbox import kernel_isolation, kernel_refusal
from arctic_pretrain.evaluate.tasks import HumanEval
from arctic_pretrain.generation.backends import Backend, HFBackend

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def light_humaneval(model_dir: str | Path, limit: int = 20, max_new_tokens: int = 128, timeout_s: float = 3.0,
                    batch_size: int = 8, workers: int = 0, backend: Backend | None = None,
                    unsafe_no_kernel_isolation: bool = False) -> dict[str, float]:
    """{"humaneval_pass@1": fraction passed, "humaneval_problems": count} for an HF export folder.

    ``model_dir`` is a phase export (config.json, weights, tokenizer). ``backend`` overrides loading it
    (tests; or a trainer that wants to reuse its in-memory model through its own Backend). Where the
    kernel cannot confine model code it returns {} with a warning: a training run does not stop for it.
    """
    kernel = kernel_isolation()
    if not kernel["confined"] and not unsafe_no_kernel_isolation:
        log.warning("light HumanEval skipped: %s", kernel_refusal(kernel))
        return {}
    task = HumanEval()
    problems = task.load(limit)
    cfg = EvalConfig(model=str(model_dir), tasks=["humaneval"], limit=limit, cache=False, progress=False,
                     generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
                     sandbox=SandboxConfig(timeout_s=timeout_s, workers=workers,
                                           unsafe_no_kernel_isolation=unsafe_no_kernel_isolation))
    if backend is None:
        backend = HFBackend(str(model_dir), batch_size=batch_size)
    summary, _ = run_task(task, problems, backend, cfg, label="light")
    return {"humaneval_pass@1": float(summary["pass@1"]), "humaneval_problems": float(summary["problems"])}


def heldout_loss(model: torch.nn.Module | str | Path, sources: Mapping[str, str | Path], windows: int = 8,
                 seq_len: int = 512, batch_size: int = 4) -> dict[str, float]:
    """{"heldout_loss/<source>": mean next-token loss} on the last ``windows`` windows of each token source.

    The tail of every source is the held-out slice: it is only truly held out when the trainer's
    sampler leaves those windows alone. ``model`` is an in-memory causal LM (the trainer's, on its
    device) or an export folder; documents stay separate inside windows (position ids restart).
    """
    import torch

    from arctic_pretrain.common.cpu_math import resolve_vml_kernels
    from arctic_pretrain.data.shards import TokenSource
    from arctic_pretrain.model.loss import packed_next_token_loss

    resolve_vml_kernels()  # a standalone evaluation's first forward (RoPE cos/sin), see common/cpu_math.py
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, folder in sources.items():
            source = TokenSource(folder)
            total = source.num_windows(seq_len)
            picks = list(range(max(0, total - windows), total))
            loss_sum, count = 0.0, 0
            for lo in range(0, len(picks), batch_size):
                pairs = [source.window(i, seq_len) for i in picks[lo:lo + batch_size]]
                ids = torch.as_tensor(np.stack([p[0] for p in pairs]), device=device)
                pos = torch.as_tensor(np.stack([p[1] for p in pairs]), device=device)
                with torch.no_grad():
                    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
                s, c = packed_next_token_loss(logits, ids, pos)
                loss_sum += float(s.sum())
                count += int(c.sum())
            if count:
                out[f"heldout_loss/{name}"] = loss_sum / count
    finally:
        model.train(was_training)
    return out
