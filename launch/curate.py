"""Curate raw code into phase-1 token sources: ``python launch/curate.py inputs=[DIR,...] output_dir=OUT``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from arctic_pretrain.curation.config import CurateConfig, CurationConfigError, register, to_config

register()


@hydra.main(version_base=None, config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="curate")
def main(cfg: DictConfig) -> None:
    from arctic_pretrain.curation.pipeline import run

    config: CurateConfig = to_config(cfg)
    try:
        out = run(config)
    except CurationConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"curated: {out}/report.json, tokens in {out}/tokens/<language>")


if __name__ == "__main__":
    main()
