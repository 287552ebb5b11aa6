"""Waiting for a stage's datatrove SLURM jobs (``executor.wait=true``): poll squeue until they leave the
queue, fail naming the step whose job ended badly, then require every step's datatrove completion markers.

Verified against tests/curate/fake_slurm, a one-node scheduler speaking the sbatch/squeue/srun protocol.
"""

from __future__ import annotations

import getpass
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

from loguru import logger


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
                raise RuntimeError("squeue failed 10 times in a row; the jobs may still run: see squeue")
        else:
            failures = 0
            if not queued:
                break
            running = any(state == "RUNNING" for rows in queued.values() for state, _ in rows)
            if not running and all(r == "DependencyNeverSatisfied" for rows in queued.values() for _, r in rows):
                raise RuntimeError(f"SLURM jobs {sorted(queued)} ({', '.join(step_of[j] for j in sorted(queued))}) "
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
                raise RuntimeError(f"stage {step.name}: tasks {missing} did not complete (SLURM job "
                                   f"{step.job_id or '?'}){why}; see {logs}/<stage>/slurm_logs")
            time.sleep(5.0)
