"""Run model-written code: one fresh interpreter per sample, in its own temporary directory.

The evaluator never executes model code in its own process. Each sample goes to `_sandbox_child.py`
(see its docstring for the isolation layers) in a new session; a sample that outlives its time
limit has its whole process group killed, a crash or a missing verdict counts as a failure, and the
run goes on. Many samples run at once on a thread pool (the threads only wait on child processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arctic_pretrain.eval import _sandbox_child

_CHILD = Path(_sandbox_child.__file__)
_GRACE_S = 3.0  # interpreter start and imports, on top of the sample's own time limit


@dataclass(frozen=True)
class Job:
    """One sample to execute. kind: program (HumanEval-style exec), unittest (BigCodeBench), evalplus."""

    kind: str
    program: str
    timeout_s: float
    extra: dict[str, Any] | None = None  # evalplus: dataset, entry_point, inputs, expected, time_limits, atol


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # "passed", "failed: ...", "timed out", "crashed: ..."
    isolation: dict[str, Any] | None = None  # what the kernel granted: netns, landlock_abi


def execute(job: Job, memory_mb: int = 4096, root: str | Path | None = None) -> Outcome:
    """Run one job in a fresh sandboxed interpreter; never raises for anything the code does."""
    workdir = Path(tempfile.mkdtemp(prefix="arctic-sandbox-", dir=root))
    payload = {"kind": job.kind, "program": job.program, "timeout": job.timeout_s,
               "memory_bytes": memory_mb * 2**20 if memory_mb > 0 else None, **(job.extra or {})}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.Popen([sys.executable, "-I", str(_CHILD), str(workdir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(pickle.dumps(payload), timeout=job.timeout_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timed out")
        finally:
            _kill_group(proc)  # descendants that outlived the child
        for line in reversed(out.decode("utf-8", "replace").splitlines()):
            if line.startswith(_sandbox_child.MARK):
                verdict = json.loads(line[len(_sandbox_child.MARK):])
                status = verdict.pop("status")
                return Outcome(status == "passed", status, verdict)
        return Outcome(False, f"crashed: exit code {proc.returncode}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def execute_many(jobs: Sequence[Job], workers: int = 0, memory_mb: int = 4096,
                 on_done: Callable[[], None] | None = None) -> list[Outcome]:
    """Outcomes in job order; ``workers`` 0 means one per CPU core."""
    workers = workers or os.cpu_count() or 1

    def one(job: Job) -> Outcome:
        outcome = execute(job, memory_mb)
        if on_done:
            on_done()
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))
