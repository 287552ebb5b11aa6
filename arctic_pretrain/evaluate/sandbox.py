"""Run model-written code: a separate, kernel-confined process tree per sample; verdicts decided here.

The evaluator never executes model code in its own process. Each worker owns a small fork server
(`_sandbox_child.py`, a clean interpreter); for every sample it forks a process tree in new user, PID
and network namespaces under Landlock (see that module's docstring). The sandbox never reports a
verdict: it returns what the candidate's function returned, as plain data (or a unittest report), and
the judge in this process (judge.py) compares. At the end of a sample the server kills its whole tree;
a hang, crash or malformed reply is a failure and the run goes on. A server that stops answering is
replaced. Without the kernel layers the sandbox refuses to run model code unless the caller opts in
(``unsafe_no_kernel_isolation``); every outcome records the isolation that was in force.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.evaluate import _sandbox_child as child

_CHILD = Path(child.__file__)
UNSAFE_FLAG = "sandbox.unsafe_no_kernel_isolation"


class SandboxUnavailable(ConfigError):
    """The kernel grants no Landlock or namespaces here and the user did not accept running unconfined."""


@dataclass(frozen=True)
class Job:
    """One sample to execute.

    kind: "check" (HumanEval: the benchmark's check() runs in the judge and calls the candidate in the
    sandbox), "outputs" (EvalPlus/EvoEval: the candidate's outputs on the inputs, compared by the judge),
    "unittest" (BigCodeBench: solution and TestCases in one sandboxed process, which reports the result),
    "program" (a trusted program that judges itself: it passes when it runs to the end; tests and tools).
    """

    kind: str
    program: str  # what runs in the sandbox
    timeout_s: float
    extra: dict[str, Any] | None = None  # outputs: dataset, inputs, inputs_plain, expected, time_limits, atol
    entry_point: str = ""  # check, outputs: the candidate function
    test: str = ""  # check: the benchmark's test code (defines check), run by the judge
    context: str = ""  # check: the benchmark's prompt, run by the judge for its helpers (poly, encode_cyclic)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # "passed", "failed: ...", "timed out", "crashed: ..."
    isolation: dict[str, Any] | None = None  # mode (kernel | unconfined), user_ns, pid_ns, net_ns, landlock_abi


class Ended(BaseException):
    """The sample is over (timed out, crashed, malformed reply); ``status`` is its verdict.

    A BaseException, so a benchmark's test code cannot swallow it with ``except Exception``."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one (its name and message)."""


class _Server:
    """One fork server; used by one thread at a time."""

    def __init__(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", str(_CHILD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        hello = self._read(60)
        self.kernel = (hello or {}).get("hello") or {}

    def _read(self, wait_s: float) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            if select.select([self.proc.stdout], [], [], wait_s)[0]:
                msg = child.read_msg(self.proc.stdout)
                if msg is not None:
                    return json.loads(msg)
        self.close()
        return None

    def run(self, payload: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """The server's answer, or None if it died or went silent for ``wait_s`` (then it is closed)."""
        try:
            child.write_msg(self.proc.stdin, json.dumps(payload).encode())
        except (OSError, ValueError):
            self.close()
            return None
        return self._read(wait_s)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


class Session:
    """One sample running in the sandbox, as the judge sees it: the first reply, then calls."""

    def __init__(self, server: _Server, job: Job, memory_mb: int, unconfined_ok: bool) -> None:
        self.server, self.job = server, job
        self.deadline = time.monotonic() + job.timeout_s
        self.isolation: dict[str, Any] | None = None
        self.first: dict[str, Any] = {}
        self._start = {"op": "start", "kind": job.kind, "program": job.program, "entry_point": job.entry_point,
                       "timeout": job.timeout_s, "memory_bytes": memory_mb * 2**20 if memory_mb > 0 else None,
                       "inputs": (job.extra or {}).get("inputs_plain"), "unconfined_ok": unconfined_ok}

    def start(self) -> None:
        """Fork the sample; its first reply (ready, error or a unittest report) lands in ``first``."""
        reply = self._request(self._start, self.job.timeout_s)
        self.isolation = reply.get("isolation")
        self.first = self._payload(reply)

    def _request(self, msg: dict[str, Any], wait_s: float) -> dict[str, Any]:
        reply = self.server.run(msg, wait_s + child.GRACE_S + 30)
        if reply is None:
            raise Ended("crashed: sandbox server stopped answering")
        return reply

    @staticmethod
    def _payload(reply: dict[str, Any]) -> dict[str, Any]:
        """The runner's frame as a dict; anything else ends the sample as malformed."""
        if "end" in reply:
            raise Ended(reply["end"])
        try:
            payload = json.loads(reply["reply"])
        except (KeyError, TypeError, ValueError, RecursionError):
            raise Ended("failed: malformed reply from the sandbox") from None
        if type(payload) is not dict:
            raise Ended("failed: malformed reply from the sandbox")
        return payload

    def call(self, *args: Any, index: int | None = None, timeout: float | None = None, **kwargs: Any) -> Any:
        """The candidate's return value on these arguments (or on input ``index`` of the job), as plain data."""
        left = self.deadline - time.monotonic()
        limit = left if timeout is None else min(timeout, left)
        if limit <= 0:
            raise Ended("timed out")
        msg: dict[str, Any] = {"op": "call", "timeout": limit}
        if index is None:
            try:
                msg.update(args=child.to_plain(list(args)), kwargs=child.to_plain(kwargs))
            except (TypeError, ValueError) as err:
                raise Ended(f"crashed: the test passed an argument that is not plain data ({err})") from None
        else:
            msg["index"] = index
        p = self._payload(self._request(msg, limit))
        if "value" in p:
            try:
                return child.from_plain(p["value"])
            except (TypeError, ValueError, RecursionError):
                raise Ended("failed: malformed reply from the sandbox") from None
        if "raised" in p:
            name, message = str(p["raised"])[:100], str(p.get("message", ""))[:300]
            cls, exc = getattr(builtins, name, None), None
            if isinstance(cls, type) and issubclass(cls, Exception):  # a test may expect ValueError & co
                with contextlib.suppress(Exception):
                    exc = cls(message)
            raise exc if exc is not None else CandidateError(f"{name}: {message}")
        raise Ended("failed: malformed reply from the sandbox")

    def close(self) -> dict[str, Any] | None:
        reply = self.server.run({"op": "end"}, 30)
        return reply.get("isolation") if reply else None


def kernel_refusal(kernel: dict[str, Any]) -> str:
    missing = [name for name in ("user_ns", "pid_ns", "net_ns") if not kernel.get(name)]
    if not kernel.get("landlock_abi"):
        missing.append("Landlock")
    return (f"the sandbox needs Landlock and user/PID/network namespaces, and this kernel refuses {', '.join(missing)} "
            f"(an older kernel, or a container that forbids them). Without them model code could write any file "
            f"this user can, reach the network and forge its own verdict. Run where the kernel allows them, or "
            f"accept that risk with {UNSAFE_FLAG}=true")


@functools.lru_cache(maxsize=1)
def kernel_isolation() -> dict[str, Any]:
    """What this kernel grants the sandbox (asked once per process, from a fork server)."""
    server = _Server()
    try:
        return {**server.kernel, "confined": child.kernel_confined(server.kernel)}
    finally:
        server.close()


def execute_many(jobs: Sequence[Job], workers: int = 0, memory_mb: int = 4096,
                 on_done: Callable[[], None] | None = None,
                 unsafe_no_kernel_isolation: bool = False) -> list[Outcome]:
    """Outcomes in job order; ``workers`` 0 means one per CPU core.

    Raises SandboxUnavailable before running anything when the kernel cannot confine model code and
    ``unsafe_no_kernel_isolation`` is false."""
    from arctic_pretrain.evaluate.judge import judge

    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    servers: queue.Queue[_Server] = queue.Queue()
    first = _Server()
    servers.put(first)
    if not child.kernel_confined(first.kernel) and not unsafe_no_kernel_isolation:
        first.close()
        raise SandboxUnavailable(kernel_refusal(first.kernel))
    for _ in range(workers - 1):
        servers.put(_Server())

    def one(job: Job) -> Outcome:
        server = servers.get()
        session = Session(server, job, memory_mb, unsafe_no_kernel_isolation)
        try:
            try:
                session.start()
                status = judge(job, session)
            except Ended as end:
                status = end.status
            isolation = (session.close() if server.alive() else None) or session.isolation
            if not server.alive():
                server = _Server()
        finally:
            servers.put(server)
        if on_done:
            on_done()
        return Outcome(status == "passed", status, isolation)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, jobs))
    finally:
        while not servers.empty():
            servers.get().close()


def execute(job: Job, memory_mb: int = 4096, unsafe_no_kernel_isolation: bool = False) -> Outcome:
    """One job (tests, light checks); batches should use execute_many."""
    return execute_many([job], 1, memory_mb, unsafe_no_kernel_isolation=unsafe_no_kernel_isolation)[0]
