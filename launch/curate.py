"""Curate raw code into phase-1 token sources (curated documents/, tokens/<language>, tokenizer/).

Usage: python launch/curate.py inputs=[DIR_OR_DATASET,...] output_dir=OUT [key=value ...]

Examples:
    python launch/curate.py inputs=[/data/code] output_dir=/data/curated
    python launch/curate.py inputs=[hf:bigcode/the-stack-dedup] output_dir=/data/curated read.languages=[python]
    python launch/curate.py inputs=[/data/code] output_dir=/data/curated executor=slurm executor.tasks=512
"""

from __future__ import annotations

from arctic_pretrain.common.config import entry_point
from arctic_pretrain.curate import run, summary
from arctic_pretrain.curate.config import CurateConfig, register

register()


@entry_point("curate", "curate", CurateConfig, __doc__, missing_hint="usage: python launch/curate.py "
             "inputs=[DIR,...] output_dir=OUT (--help for more)")
def main(cfg: CurateConfig) -> str:
    return summary(cfg, run(cfg))


if __name__ == "__main__":
    main()
