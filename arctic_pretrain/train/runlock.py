"""One job per run dir: an exclusive lock, ``run_dir/run.lock``, held by rank 0 for the whole job.

Two jobs writing one run dir interleave their metrics and overwrite each other's checkpoints, so the
second job must stop before it touches anything. The lock is a kernel ``flock`` on an open file (common/locks.py): the
kernel drops it when the holder exits in any way (SIGKILL and OOM included), so a dead job never
blocks the next one. The file holds the holder's identity (host, pid, start time, launcher job id);
a clean exit deletes it, so a file found under a free lock is a stale one from a job that died, and
is reported. Only rank 0 takes the lock; the other ranks of the job learn the outcome from its
broadcast (``acquire_for_job``), so all ranks of one job share it and all ranks of a second job fail.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.common.locks import try_lock

log = logging.getLogger(__name__)
LOCK = "run.lock"
JOB_ENV = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "PBS_JOBID", "LSB_JOBID")  # the launcher's job, when known


class RunLocked(ConfigError):
    """``run_dir`` is held by another live job."""


def holder_identity() -> dict[str, Any]:
    job = next((f"{key}={os.environ[key]}" for key in JOB_ENV if os.environ.get(key)), None)
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "job": job}


def describe(holder: dict[str, Any]) -> str:
    text = f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
    return text + (f", job {holder['job']}" if holder.get("job") else "")


class RunLock:
    """``acquire()`` or raise ``RunLocked`` naming the holder; ``release()`` on exit (idempotent)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self.created_dir = False  # the run dir was new (absent, or empty: Hydra creates it): a failed start removes it
        self.stale: dict[str, Any] | None = None  # the identity left by a holder that died

    def acquire(self) -> RunLock:
        self.created_dir = not self.run_dir.exists() or not any(self.run_dir.iterdir())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = try_lock(fd)
            except OSError as err:
                os.close(fd)
                log.warning("%s: this filesystem does not support locks (%s): nothing stops a second job "
                            "from writing this run dir", self.path, err)
                return self
            if not locked:
                os.close(fd)
                holder = self.read_holder()
                raise RunLocked(f"output_dir={str(self.run_dir)!r}: in use by another job ({describe(holder)}); "
                                "wait for it to end, stop it, or choose another output_dir") from None
            try:  # the holder may have deleted the file between our open and our lock: retry on the new one
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            break
        self._fd = fd
        left = os.read(fd, 65536).decode(errors="replace").strip()
        if left:
            try:
                self.stale = json.loads(left)
            except json.JSONDecodeError:
                self.stale = {"host": "?", "pid": "?", "started": left[:80]}
            log.warning("run_dir %s: stale lock from a job that did not exit cleanly (%s); that process is gone, "
                        "taking the run over", self.run_dir, describe(self.stale))
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder_identity()).encode())
        os.fsync(fd)
        return self

    def read_holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiter re-checks the inode
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_for_job(run_dir: str | Path, rank: int, broadcast) -> RunLock | None:
    """Rank 0 takes the lock, then every rank learns the outcome (``broadcast``: rank 0's value on every
    rank), so a second job fails on all its ranks at once and no rank of it touches the run dir."""
    lock, error = None, None
    if rank == 0:
        try:
            lock = RunLock(run_dir).acquire()
        except RunLocked as err:
            error = str(err)
    error = broadcast(error)
    if error is not None:
        raise RunLocked(error)
    return lock
