"""Running the curation chain on SLURM through datatrove's SlurmPipelineExecutor: the sbatch arguments
our jobs need, the submission record, and an optional wait that names the stage that failed.

Verified against tests/curate/fake_slurm, a one-node scheduler speaking the sbatch/squeue/srun protocol.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from arctic_pretrain.curate.config import ConfigError, CurateConfig

if TYPE_CHECKING:
    from arctic_pretrain.curate.pipeline import Stage


def slurm_arguments(cfg: CurateConfig) -> dict:
    """executor.slurm plus our defaults: the job runs the submitting environment's datatrove launcher
    (its bin folder first on PATH, so an unactivated venv works), the array %limit is executor.workers, and
    a failed stage cancels the jobs after it (--kill-on-invalid-dep=yes) instead of leaving them pending."""
    args = dict(cfg.executor.slurm)
    args.setdefault("workers", cfg.executor.workers)
    args["sbatch_args"] = {"kill-on-invalid-dep": "yes", **dict(args.get("sbatch_args") or {})}
    if not any(args.get(k) for k in ("env_command", "condaenv", "venv_path")):
        launcher = shutil.which("launch_pickled_pipeline") or shutil.which(
            "launch_pickled_pipeline", path=str(Path(sys.executable).parent))
        if launcher is None:
            raise ConfigError("executor=slurm: datatrove's launch_pickled_pipeline is not on PATH; activate "
                                      "the environment or set executor.slurm.env_command")
        args["env_command"] = f"export PATH={shlex.quote(str(Path(launcher).parent))}:$PATH"
    return args


def _squeue(job_ids: set[str], all_states: bool = False) -> dict[str, list[tuple[str, str]]] | None:
    """{job id: [(state, reason) per row]} for those of ``job_ids`` that squeue lists (an array job has a
    row per started task and one for its pending tasks): by default the queued ones (pending, running,
    completing); ``all_states`` adds finished ones (kept MinJobAge, 300 s by default). None when squeue fails."""
    cmd = ["squeue", "--noheader", f"--user={getpass.getuser()}", "--format=%F %T %r"]
    try:
        proc = subprocess.run(cmd + (["--states=all"] if all_states else []), capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.warning(f"squeue failed: {err}")
        return None
    if proc.returncode != 0:
        logger.warning(f"squeue failed ({proc.returncode}): {proc.stderr.strip()}")
        return None
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in job_ids:
            state, reason = (parts[1:] + ["UNKNOWN", ""])[:2]
            rows.setdefault(parts[0], []).append((state, reason))
    return rows


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
        queued = _squeue(earlier)
        if queued is None or queued:
            raise ConfigError(
                f"output_dir={cfg.output_dir!r}: jobs {sorted(queued or earlier)} of an earlier submission are "
                "still queued or running (or squeue failed); wait for them or scancel them, then re-run")
    executors[-1].run()  # launches the whole chain through `depends` (finalize's dependencies first)
    jobs = {stage.name: str(ex.job_id) for stage, ex in zip(stages, executors, strict=True)
            if ex.job_id not in (None, -1)}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / SLURM_RECORD).write_text(json.dumps({"jobs": jobs, "submitted": time.time()}, indent=1))
    if jobs:
        logger.info(f"submitted {len(jobs)} SLURM job(s), each after the previous one (afterok): {jobs}; "
                    f"report: {out / 'report.json'} once job {list(jobs.values())[-1]} ends")
    return jobs


def wait(stages: list[Stage], executors: list, jobs: dict[str, str], out: Path,
                grace_s: float = 60.0) -> None:
    """Poll squeue until the submitted jobs leave the queue, then require every stage's completion markers.
    A job squeue still lists as ended but not COMPLETED fails at once; otherwise missing markers are
    re-read for ``grace_s`` (a shared filesystem may show another node's new files late)."""
    ids, stage_of = set(jobs.values()), {job: stage for stage, job in jobs.items()}
    start, failures = time.monotonic(), 0
    while ids:
        queued = _squeue(ids)
        if queued is None:
            failures += 1
            if failures >= 10:
                raise RuntimeError("squeue failed 10 times in a row; the jobs may still run: see squeue")
        else:
            failures = 0
            if not queued:
                break
            running = any(state == "RUNNING" for rows in queued.values() for state, _ in rows)
            if not running and all(r == "DependencyNeverSatisfied" for rows in queued.values() for _, r in rows):
                raise RuntimeError(f"SLURM jobs {sorted(queued)} can never start (a stage before them failed); "
                                   f"scancel them; logs: {out / 'logs'}/<stage>/slurm_logs")
        time.sleep(min(60.0, max(1.0, (time.monotonic() - start) / 10)))
    ended = _squeue(ids, all_states=True) or {}
    bad = {job: state for job, rows in ended.items() for state, _ in rows if state != "COMPLETED"}
    first_bad = min(bad, key=lambda job: list(jobs.values()).index(job)) if bad else None
    deadline = time.monotonic() + (0.0 if bad else grace_s)
    for stage, ex in zip(stages, executors, strict=True):
        while missing := ex.get_incomplete_ranks(range(stage.tasks)):
            if time.monotonic() >= deadline:
                why = f"; SLURM job {first_bad} ({stage_of[first_bad]}) ended {bad[first_bad]}" if bad else ""
                raise RuntimeError(f"stage {stage.name}: tasks {missing} did not complete (SLURM job "
                                   f"{jobs.get(stage.name, '?')}){why}; see {out / 'logs'}/<stage>/slurm_logs")
            time.sleep(5.0)
