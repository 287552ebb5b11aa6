"""In-training light evaluation: greedy HumanEval pass@1 on the first problems, at phase ends (rank 0).

Cheap enough to run inside a training job (a few dozen problems, short completions, no cache, no
files) while going through the same generation, stop handling and sandbox as the full evaluation.
"""

from __future__ import annotations

from pathlib import Path

from arctic_pretrain.eval.config import EvalConfig, GenerationConfig, SandboxConfig
from arctic_pretrain.eval.generation import Backend, HFBackend
from arctic_pretrain.eval.runner import run_task
from arctic_pretrain.eval.tasks import HumanEval


def light_humaneval(model_dir: str | Path, limit: int = 20, max_new_tokens: int = 128, timeout_s: float = 3.0,
                    batch_size: int = 8, workers: int = 0, backend: Backend | None = None) -> dict[str, float]:
    """{"humaneval_pass@1": fraction passed, "humaneval_problems": count} for an HF export folder.

    ``model_dir`` is a phase export (config.json, weights, tokenizer). ``backend`` overrides loading it
    (tests; or a trainer that wants to reuse its in-memory model through its own Backend).
    """
    task = HumanEval()
    problems = task.load(limit)
    cfg = EvalConfig(model=str(model_dir), tasks=["humaneval"], limit=limit, cache=False, progress=False,
                     generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
                     sandbox=SandboxConfig(timeout_s=timeout_s, workers=workers))
    if backend is None:
        backend = HFBackend(str(model_dir), batch_size=batch_size)
    summary, _ = run_task(task, problems, backend, cfg, label="light")
    return {"humaneval_pass@1": float(summary["pass@1"]), "humaneval_problems": float(summary["problems"])}
