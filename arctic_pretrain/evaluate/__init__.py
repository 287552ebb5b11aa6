"""Evaluation: a run's phase exports (or any HF causal LM) on HumanEval(+), MBPP+, EvoEval, BigCodeBench.

``run(cfg) -> Path`` is the entry point (launch/evaluate.py); ``summary(cfg, out)`` is the table it prints.
The pieces: runner.py (the loop), tasks.py, sandbox.py and judge.py (verdicts), results.py, cache.py,
ablation.py (arms= compared per problem);
light.py and phase_end.py are the phase-end evaluation training attaches as a callback.
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Evaluate every model on every task (cached where possible); returns ``cfg.output_dir``."""
    import sys

    from arctic_pretrain.common.logs import setup_logging
    from arctic_pretrain.evaluate.runner import evaluate

    setup_logging(stream=sys.stderr)  # stdout carries the results table
    evaluate(cfg)
    return Path(cfg.output_dir)


def summary(cfg, out: Path) -> str:
    """The results table (the run's rows beside the paper's) and where the files are."""
    import json

    from arctic_pretrain.evaluate.results import markdown_table

    results = json.loads((out / "results.json").read_text())
    text = (markdown_table(results, cfg.reference) + "\n"
            f"results written to {cfg.output_dir}/results.json, results.md, pass_at_1.png")
    if cfg.arms and (out / "ablation.md").is_file():
        text += f"\n\n{(out / 'ablation.md').read_text()}\nablation written to {cfg.output_dir}/ablation.json, " \
                "ablation.md, ablation.png"
    return text


__all__ = ["run", "summary"]
