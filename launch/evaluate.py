"""Evaluate a training run's phase exports (or any HF causal LM) on HumanEval(+), MBPP+, EvoEval, BigCodeBench.

Usage: python launch/evaluate.py model=<run_dir | HF folder | hub name> output_dir=DIR [key=value ...]

Examples:
    python launch/evaluate.py model=runs/demo output_dir=eval/demo limit=20
    python launch/evaluate.py model=bigcode/starcoder2-3b tasks=[humaneval_plus,mbpp_plus] \
        data.humaneval_plus=/data/HumanEvalPlus-v0.1.10.jsonl data.mbpp_plus=/data/MbppPlus-v0.2.0.jsonl
    python launch/evaluate.py model=runs/demo generation.do_sample=true generation.n_samples=10 \
        generation.pass_k=[1,10]
    python launch/evaluate.py samples=completions.jsonl tasks=[humaneval] output_dir=eval/theirs  # made elsewhere
"""

from __future__ import annotations

from arctic_pretrain.common.config import entry_point
from arctic_pretrain.evaluate import run, summary
from arctic_pretrain.evaluate.config import EvalConfig, register

register()


@entry_point("evaluate", "evaluate", EvalConfig, __doc__)
def main(cfg: EvalConfig) -> str:
    return summary(cfg, run(cfg))


if __name__ == "__main__":
    main()
