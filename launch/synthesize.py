"""Phase-3 synthetic data: ``python launch/synthesize.py seeds=<annotate output_dir> backend=openai
backend.base_url=http://node:8000/v1 backend.model=<name>`` (or backend=vllm / backend=transformers)."""

from __future__ import annotations

from arctic_pretrain.common.config import entry_point
from arctic_pretrain.synthesize import run, summary
from arctic_pretrain.synthesize.config import SynthesizeConfig, register

register()


@entry_point("synthesize", "synthesize", SynthesizeConfig, __doc__,
             missing_hint="usage: python launch/synthesize.py seeds=<annotate output_dir> backend=openai|vllm|transformers ...")
def main(cfg: SynthesizeConfig) -> str:
    return summary(cfg, run(cfg))


if __name__ == "__main__":
    main()
