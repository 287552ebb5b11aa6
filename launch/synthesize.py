"""Phase-3 synthetic data: ``python launch/synthesize.py seeds=<annotate output_dir> backend=openai
backend.base_url=http://node:8000/v1 backend.model=<name>`` (or backend=vllm / backend=transformers)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from arctic_pretrain.common.config import ConfigError, conf_dir
from arctic_pretrain.synthesize.config import register, to_config

register()


@hydra.main(version_base=None, config_path=conf_dir("synthesize"), config_name="synthesize")
def main(cfg: DictConfig) -> None:
    from arctic_pretrain.synthesize import run

    try:
        config = to_config(cfg)
        out = run(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # requests that gave up: finished seeds are kept, a rerun retries the rest
        print(f"synthesis incomplete: {err}", file=sys.stderr)
        sys.exit(1)
    if config.workers.worker is not None or not config.workers.finalize:
        print(f"worker {config.workers.worker} done: {out}/generations; rerun without workers.worker to finalize")
        return
    print(f"synthesized: {out}/synthesis.json, token source {out}/manifest.json")


if __name__ == "__main__":
    main()
