"""The whole recipe in one command: curate -> annotate -> synthesize -> train -> evaluate -> report.

Examples:
    python launch/pipeline.py experiment=demo                  # this machine's code, CPU, minutes
    python launch/pipeline.py experiment=snowcoder_1b3 workdir=/lustre/sc    # the paper, on a SLURM cluster
    python launch/pipeline.py experiment=demo only=[train,evaluate]          # some stages
    python launch/pipeline.py experiment=demo --cfg job                      # print the composed config

Each stage runs as its own command (printed in <workdir>/pipeline.json, logged in <workdir>/logs/) and is
skipped when the file it writes last exists; a failing stage stops the pipeline with its name and log.
"""

from __future__ import annotations

from arctic_pretrain.common.config import entry_point, register
from arctic_pretrain.pipeline.runner import RENAMED, PipelineConfig, run_pipeline

register("pipeline", PipelineConfig)


@entry_point("pipeline", "pipeline", PipelineConfig, __doc__, renamed=RENAMED)
def main(cfg: PipelineConfig) -> None:
    summary = run_pipeline(cfg)  # a failing stage: StageFailed, exit 1 naming the stage and its log
    print(f"\nrecipe {cfg.name}: everything is under {cfg.workdir}/")
    for name, rec in summary["stages"].items():
        print(f"  {name:<17} {rec.get('status', ''):<20} {rec['done']}")
    if summary.get("report"):
        print(f"  {'report':<17} {summary['report']}")


if __name__ == "__main__":
    main()
