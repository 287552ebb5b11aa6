"""Running the curation chain on SLURM through datatrove's SlurmPipelineExecutor: the sbatch arguments
our jobs need, the submission record, and an optional wait (common/slurm.py) that names the stage that failed.

Verified against tests/curate/fake_slurm, a one-node scheduler speaking the sbatch/squeue/srun protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from arctic_pretrain.common.slurm import SlurmStep, job_id, squeue, wait_for_jobs
from arctic_pretrain.curate.config import ConfigError, CurateConfig

if TYPE_CHECKING:
    from arctic_pretrain.curate.pipeline import Stage


SLURM_RECORD = "slurm_jobs.json"


def submitted_jobs(output_dir: str | Path) -> dict[str, str]:
    """{stage: SLURM job id} of the last submission to ``output_dir`` (stages with nothing to do are left out)."""
    record = Path(output_dir) / "logs" / SLURM_RECORD
    return json.loads(record.read_text())["jobs"] if record.is_file() else {}


def submit(cfg: CurateConfig, stages: list[Stage], executors: list, out: Path) -> dict[str, str]:
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        raise ConfigError("executor=slurm submits jobs: run launch/curate.py on a login node, not inside "
                                  f"a SLURM array job (SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']})")
    for tool in ("sbatch", "squeue"):
        if shutil.which(tool) is None:
            raise ConfigError(f"executor=slurm: `{tool}` is not on PATH (run from a SLURM login node)")
    earlier = set(submitted_jobs(out).values())
    if earlier:
        queued = squeue(earlier)
        if queued is None or queued:
            raise ConfigError(
                f"output_dir={cfg.output_dir!r}: jobs {sorted(queued or earlier)} of an earlier submission are "
                "still queued or running (or squeue failed); wait for them or scancel them, then re-run")
    executors[-1].run()  # launches the whole chain through `depends` (finalize's dependencies first)
    jobs = {stage.name: job for stage, ex in zip(stages, executors, strict=True) if (job := job_id(ex))}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / SLURM_RECORD).write_text(json.dumps({"jobs": jobs, "submitted": time.time()}, indent=1))
    if jobs:
        logger.info(f"submitted {len(jobs)} SLURM job(s), each after the previous one (afterok): {jobs}; "
                    f"report: {out / 'report.json'} once job {list(jobs.values())[-1]} ends")
    return jobs


def wait(stages: list[Stage], executors: list, jobs: dict[str, str], out: Path, grace_s: float = 60.0) -> None:
    """Block until the chain's jobs leave the queue, then require every stage's completion markers
    (common.slurm.wait_for_jobs: a failed job names its stage)."""
    steps = [SlurmStep(stage.name, ex, stage.tasks, jobs.get(stage.name))
             for stage, ex in zip(stages, executors, strict=True)]
    wait_for_jobs(steps, out / "logs", grace_s=grace_s)
