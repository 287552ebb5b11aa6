"""Curate raw code into phase-1 token sources: ``python launch/curate.py inputs=[DIR,...] output_dir=OUT``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from arctic_pretrain.common.config import ConfigError, conf_dir
from arctic_pretrain.curate.config import CurateConfig, register, to_config

register()


@hydra.main(version_base=None, config_path=conf_dir("curate"), config_name="curate")
def main(cfg: DictConfig) -> None:
    from arctic_pretrain.curate.pipeline import run
    from arctic_pretrain.curate.slurm import submitted_jobs

    config: CurateConfig = to_config(cfg)
    try:
        out = run(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # a stage did not complete (its logs are named)
        print(f"curation failed: {err}", file=sys.stderr)
        sys.exit(1)
    if config.executor.kind == "slurm" and not config.executor.wait:
        jobs = submitted_jobs(out)
        if not jobs:
            print(f"nothing to submit: every stage is complete; report: {out}/report.json")
            return
        print(f"submitted {len(jobs)} SLURM jobs, each starting after the previous one succeeds (afterok):")
        print("  " + ", ".join(f"{stage}={job}" for stage, job in jobs.items()))
        print(f"report: {out}/report.json and tokens in {out}/tokens/<language> once job {list(jobs.values())[-1]} "
              f"(finalize) ends; watch: squeue -j {','.join(jobs.values())}; logs: {out}/logs/<stage>/slurm_logs "
              "(or add executor.wait=true to block until the chain ends)")
        return
    print(f"curated: {out}/report.json, tokens in {out}/tokens/<language>")


if __name__ == "__main__":
    main()
