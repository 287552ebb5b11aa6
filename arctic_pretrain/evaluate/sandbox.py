"""Run model-written code: a separate process per sample, each in its own temporary directory.

The evaluator never executes model code in its own process. Each worker owns a small fork server
(`_sandbox_child.py`, a clean interpreter that imported only the benchmarks' executors); for every
sample it forks a child, which isolates itself (see that module's docstring for the layers) and runs
the code. The server kills the child's whole process group at the time limit; a hang, crash or
missing verdict is a failure and the run goes on. A server that stops answering is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arctic_pretrain.evaluate import _sandbox_child as child

_CHILD = Path(child.__file__)


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


class _Server:
    """One fork server; used by one thread at a time."""

    def __init__(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", str(_CHILD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)

    def run(self, payload: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """The server's answer, or None if it died or went silent for ``wait_s`` (then it is closed)."""
        try:
            child.write_msg(self.proc.stdin, pickle.dumps(payload))
            if select.select([self.proc.stdout], [], [], wait_s)[0]:
                msg = child.read_msg(self.proc.stdout)
                if msg is not None:
                    return json.loads(msg)
        except (OSError, ValueError):
            pass
        self.close()
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


def _payload(job: Job, memory_mb: int) -> dict[str, Any]:
    return {"kind": job.kind, "program": job.program, "timeout": job.timeout_s,
            "memory_bytes": memory_mb * 2**20 if memory_mb > 0 else None, **(job.extra or {})}


def execute_many(jobs: Sequence[Job], workers: int = 0, memory_mb: int = 4096,
                 on_done: Callable[[], None] | None = None) -> list[Outcome]:
    """Outcomes in job order; ``workers`` 0 means one per CPU core."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    servers: queue.Queue[_Server] = queue.Queue()
    for _ in range(workers):
        servers.put(_Server())

    def one(job: Job) -> Outcome:
        server = servers.get()
        try:
            reply = server.run(_payload(job, memory_mb), job.timeout_s + child.GRACE_S + 30)
            if reply is None:
                server = _Server()
                outcome = Outcome(False, "crashed: sandbox server stopped answering")
            else:
                status = reply.pop("status")
                outcome = Outcome(status == "passed", status, reply or None)
        finally:
            servers.put(server)
        if on_done:
            on_done()
        return outcome

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, jobs))
    finally:
        while not servers.empty():
            servers.get().close()


def execute(job: Job, memory_mb: int = 4096) -> Outcome:
    """One job (tests, light checks); batches should use execute_many."""
    return execute_many([job], 1, memory_mb)[0]
