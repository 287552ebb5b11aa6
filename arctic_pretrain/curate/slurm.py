"""Running the curation chain on SLURM through datatrove's SlurmPipelineExecutor: the sbatch arguments
our jobs need, the submission record, and an optional wait (common/slurm.py) that names the stage that failed.

Verified against tests/support/fake_slurm, a one-node scheduler speaking the sbatch/squeue/srun protocol.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from arctic_pretrain.common.slurm import (
    SlurmStep,
    job_id,
    submit_once,
    wait_for_jobs,
)
from arctic_pretrain.curate.config import ConfigError, CurateConfig

if TYPE_CHECKING:
    from arctic_pretrain.curate.pipeline import Job

logger = logging.getLogger(__name__)


def submit(cfg: CurateConfig, stages: list[Job], executors: list, out: Path) -> dict[str, str]:
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        raise ConfigError("executor=slurm submits jobs: run launch/curate.py on a login node, not inside "
                                  f"a SLURM array job (SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']})")
    for tool in ("sbatch", "squeue"):
        if shutil.which(tool) is None:
            raise ConfigError(f"executor=slurm: `{tool}` is not on PATH (run from a SLURM login node)")

    def submit_chain() -> dict[str, str]:
        executors[-1].run()  # launches the whole chain through `depends` (finalize's dependencies first)
        jobs = {stage.name: job for stage, ex in zip(stages, executors, strict=True) if (job := job_id(ex))}
        if jobs:
            logger.info(f"submitted {len(jobs)} SLURM job(s), each after the previous one (afterok): {jobs}; "
                        f"report: {out / 'report.json'} once job {list(jobs.values())[-1]} ends")
        return jobs

    return submit_once(out / "logs", f"output_dir={cfg.output_dir!r}", cfg.executor.wait, submit_chain)


def wait(stages: list[Job], executors: list, jobs: dict[str, str], out: Path, grace_s: float = 60.0) -> None:
    """Block until the chain's jobs leave the queue, then require every stage's completion markers
    (common.slurm.wait_for_jobs: a failed job names its stage)."""
    steps = [SlurmStep(stage.name, ex, stage.tasks, jobs.get(stage.name))
             for stage, ex in zip(stages, executors, strict=True)]
    wait_for_jobs(steps, out / "logs", grace_s=grace_s)
