"""Phase-3 data: OSS-Instruct-style synthetic code files from the phase-2 selection, through an LLM.

``run(cfg) -> Path`` is the entry point (launch/synthesize.py); the pieces: seeds.py (which files and
lines), prompts.py (templates), engines.py (openai / vllm / transformers), parse.py and syntax.py (the
per-reply checks), filters.py (dedup, decontamination, tokenization), runner.py (resume and sharding).
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Synthesize into ``cfg.output_dir`` (resuming what is there); returns the folder."""
    from arctic_pretrain.synthesize.runner import run as _run

    return _run(cfg)
