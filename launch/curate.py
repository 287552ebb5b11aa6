"""Curate raw code into phase-1 token sources (curated documents/, tokens/<language>, tokenizer/).

Usage: python launch/curate.py inputs=[DIR_OR_DATASET,...] output_dir=OUT [key=value ...]

Examples:
    python launch/curate.py inputs=[/data/code] output_dir=/data/curated
    python launch/curate.py inputs=[hf:bigcode/the-stack-dedup] output_dir=/data/curated read.languages=[python]
    python launch/curate.py inputs=[/data/code] output_dir=/data/curated executor=slurm executor.tasks=512
"""

from __future__ import annotations

import sys

from arctic_pretrain.common.config import ConfigError, entry_point
from arctic_pretrain.curate.config import CurateConfig, register

register()


@entry_point("curate", "curate", CurateConfig, __doc__, missing_hint="usage: python launch/curate.py "
             "inputs=[DIR,...] output_dir=OUT (--help for more)", version_base=None)
def main(config: CurateConfig) -> None:
    from arctic_pretrain.common.slurm import submitted_jobs
    from arctic_pretrain.curate.pipeline import run

    try:
        out = run(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # a stage did not complete (its logs are named)
        print(f"curation failed: {err}", file=sys.stderr)
        sys.exit(1)
    if config.executor.kind == "slurm" and not config.executor.wait:
        jobs = submitted_jobs(out / "logs")
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
