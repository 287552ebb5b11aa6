"""A stage's datatrove SLURM jobs: the record of a submission (a rerun refuses to submit again while the
earlier jobs are queued: both would write the same outputs), and the wait (``executor.wait=true``): poll
squeue until the jobs leave the queue, fail naming the step whose job ended badly, then require every step's
datatrove completion markers.

Verified against tests/support/fake_slurm, a one-node scheduler speaking the sbatch/squeue/srun protocol.
"""

from __future__ import annotations

import getpass
import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from arctic_pretrain.common.config import ConfigError, StageIncomplete
from arctic_pretrain.common.io import atomic_write

SLURM_RECORD = "slurm_jobs.json"
logger = logging.getLogger(__name__)


class SlurmStep(NamedTuple):
    """One submitted datatrove executor: its step name, the executor, its task count, its SLURM job id
    (None when it had nothing to do and submitted no job)."""

    name: str
    executor: Any
    tasks: int
    job_id: str | None


def job_id(executor) -> str | None:
    """The SLURM job id datatrove recorded for ``executor`` (None: nothing submitted, every task complete)."""
    return None if executor.job_id in (None, -1) else str(executor.job_id)


def submitted_jobs(logs: str | Path) -> dict[str, str]:
    """{step: SLURM job id} of the last submission recorded in ``logs`` (steps with nothing to do left out)."""
    record = Path(logs) / SLURM_RECORD
    return json.loads(record.read_text())["jobs"] if record.is_file() else {}


def queued_submission(logs: str | Path) -> dict[str, str]:
    """The submission recorded in ``logs`` while any of its jobs is queued or running (or squeue cannot
    tell); {} when there is none or all of it ended."""
    jobs = submitted_jobs(logs)
    if not jobs:
        return {}
    queued = squeue(set(jobs.values()))
    return jobs if queued is None or queued else {}


def submit_once(logs: str | Path, where: str, wait: bool, submit: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Submit (``submit`` returns {step: job id}) and record the jobs in ``logs``, unless an earlier
    submission there is still queued: a second one would write the same outputs. With ``wait`` the earlier
    jobs are returned, for the caller to wait for (a rerun after the waiting login session died); without
    it the rerun fails naming ``where`` (the output folder's config key and value)."""
    if earlier := queued_submission(logs):
        if not wait:
            raise ConfigError(f"{where}: jobs {sorted(earlier.values())} of an earlier submission are still queued "
                              "or running (or squeue failed); wait for them (executor.wait=true waits for them) "
                              "or scancel them, then re-run")
        logger.info(f"an earlier submission is still queued or running: waiting for its jobs {earlier}")
        return earlier
    jobs = submit()
    Path(logs).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(logs) / SLURM_RECORD, json.dumps({"jobs": jobs, "submitted": time.time()}, indent=1))
    return jobs


def squeue(job_ids: set[str], all_states: bool = False) -> dict[str, list[tuple[str, str]]] | None:
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


def wait_for_jobs(steps: list[SlurmStep], logs: str | Path, grace_s: float = 60.0) -> None:
    """Poll squeue until the steps' jobs leave the queue, then require every step's completion markers.
    A job squeue still lists as ended but not COMPLETED fails at once; otherwise missing markers are
    re-read for ``grace_s`` (a shared filesystem may show another node's new files late). Errors name the
    step and ``<logs>/<step>/slurm_logs``."""
    order = [s.job_id for s in steps if s.job_id is not None]
    ids, step_of = set(order), {s.job_id: s.name for s in steps if s.job_id is not None}
    start, failures = time.monotonic(), 0
    while ids:
        queued = squeue(ids)
        if queued is None:
            failures += 1
            if failures >= 10:
                raise StageIncomplete("squeue failed 10 times in a row; the jobs may still run: see squeue")
        else:
            failures = 0
            if not queued:
                break
            running = any(state == "RUNNING" for rows in queued.values() for state, _ in rows)
            if not running and all(r == "DependencyNeverSatisfied" for rows in queued.values() for _, r in rows):
                raise StageIncomplete(f"SLURM jobs {sorted(queued)} ({', '.join(step_of[j] for j in sorted(queued))}) "
                                   f"can never start (a step before them failed); scancel them; "
                                   f"logs: {logs}/<step>/slurm_logs")
        time.sleep(min(60.0, max(1.0, (time.monotonic() - start) / 10)))
    ended = squeue(ids, all_states=True) or {}
    bad = {job: state for job, rows in ended.items() for state, _ in rows if state != "COMPLETED"}
    first_bad = min(bad, key=order.index) if bad else None
    deadline = time.monotonic() + (0.0 if bad else grace_s)
    for step in steps:
        while missing := step.executor.get_incomplete_ranks(range(step.tasks)):
            if time.monotonic() >= deadline:
                why = f"; SLURM job {first_bad} ({step_of[first_bad]}) ended {bad[first_bad]}" if bad else ""
                raise StageIncomplete(f"stage {step.name}: tasks {missing} did not complete (SLURM job "
                                   f"{step.job_id or '?'}){why}; see {logs}/<stage>/slurm_logs")
            time.sleep(5.0)
