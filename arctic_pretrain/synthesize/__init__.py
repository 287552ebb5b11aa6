"""Phase-3 data: OSS-Instruct-style synthetic code files from the phase-2 selection, through an LLM.

``run(cfg) -> Path`` is the entry point (launch/synthesize.py; ``summary(cfg, out)`` is what it prints); the pieces: seeds.py (which files and
lines), prompts.py (templates), engines.py (openai / vllm / transformers), parse.py and syntax.py (the
per-reply checks), filters.py (dedup, decontamination, tokenization), runner.py (resume and sharding).
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Synthesize into ``cfg.output_dir`` (resuming what is there); returns the folder."""
    from arctic_pretrain.synthesize.runner import run as _run

    return _run(cfg)


def summary(cfg, out: Path) -> str:
    """What a finished synthesis (or one worker of several) tells its user."""
    if cfg.workers.worker is not None or not cfg.workers.finalize:
        return f"worker {cfg.workers.worker} done: {out}/generations; rerun without workers.worker to finalize"
    return f"synthesized: {out}/synthesis.json, token source {out}/manifest.json"


__all__ = ["run", "summary"]
