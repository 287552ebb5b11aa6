"""The sandbox: real isolation, failures are verdicts (never exceptions), nothing escapes the temp dir."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.sandbox import (
    _CHILD,
    Job,
    execute,
    execute_many,
    kernel_isolation,
    kernel_refusal,
)

_CHILD_DIR = _CHILD.parent
_KERNEL = kernel_isolation()
# Without Landlock and user namespaces the sandbox refuses model code (SandboxUnavailable): say why, do not error.
pytestmark = pytest.mark.skipif(not _KERNEL["confined"], reason=kernel_refusal(_KERNEL))


@pytest.fixture
def listener():
    """A TCP server on loopback that accepts every connection: 'refused' then means the sandbox refused it."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def unsandboxed(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


def test_passing_and_failing_programs():
    assert execute(Job("program", "assert sum([1, 2]) == 3", 5)).passed
    bad = execute(Job("program", "assert 1 == 2", 5))
    assert not bad.passed and bad.status.startswith("failed: AssertionError")


def test_hang_is_a_timeout():
    out = execute(Job("program", "while True:\n    pass", 1.0))
    assert not out.passed and out.status == "timed out"


def test_hang_that_ignores_signals_is_killed():
    program = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    out = execute(Job("program", program, 3.0))
    assert not out.passed and out.status == "timed out"


def test_writes_outside_the_sandbox_are_refused(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    programs = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.system('touch {target}')",
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])",
        f"import os\nfd = os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\nos.write(fd, b'x')",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
    ]
    for program in programs:  # each runs to its end (a pass) unless the write is refused
        out = execute(Job("program", program, 5))
        assert not out.passed, program
    assert not target.exists()
    for program in programs:  # the same programs do write when run outside the sandbox
        unsandboxed(program)
        assert target.exists(), program
        target.unlink()
    assert execute(Job("program", "open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'",
                       5)).passed


def test_network_is_refused(listener):
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {listener}), timeout=5)\nprint('connected')"
    assert unsandboxed(program) == "connected"  # a server is there, reachable from outside the sandbox
    out = execute(Job("program", program, 5))
    assert not out.passed and out.status.startswith("failed:"), out.status


def test_memory_limit():
    out = execute(Job("program", "x = bytearray(2 * 2**30)", 5), memory_mb=512)
    assert not out.passed and "MemoryError" in out.status


def test_crash_counts_as_failure_and_run_continues():
    jobs = [Job("program", "import os\nos._exit(7)", 5), Job("program", "import sys\nsys.setrecursionlimit(10**6)\n"
            "def f(n): return f(n + 1)\nf(0)", 5), Job("program", "pass", 5)]
    outs = execute_many(jobs, workers=2)
    assert [o.passed for o in outs] == [False, False, True]
    assert outs[0].status.startswith("crashed")


def test_unittest_jobs_run_testcases():
    ok = "import unittest\nclass TestCases(unittest.TestCase):\n    def test_a(self):\n        self.assertEqual(1, 1)\n"
    assert execute(Job("unittest", ok, 5)).passed
    assert not execute(Job("unittest", ok.replace("(1, 1)", "(1, 2)"), 5)).passed
    assert not execute(Job("unittest", "x = 1\n", 5)).passed  # no TestCases: not a pass


def test_bigcodebench_jobs_may_spawn_processes_but_stay_confined(tmp_path: Path):
    """unittest jobs run subprocesses (BigCodeBench needs them); the kernel layers still confine them."""
    target = tmp_path / "escaped.txt"
    program = ("import subprocess, unittest\n"
               "class TestCases(unittest.TestCase):\n"
               "    def test_inside(self):\n"
               "        subprocess.run(['touch', 'made_here.txt'], check=True)\n"
               "        self.assertTrue(__import__('os').path.exists('made_here.txt'))\n"
               "    def test_outside(self):\n"
               f"        subprocess.run(['sh', '-c', 'echo x > {target}'])\n")
    out = execute(Job("unittest", program, 10))
    assert out.isolation and out.isolation["mode"] == "kernel", out.isolation
    assert out.passed, out.status
    assert not target.exists()


def test_kernel_layers_hold_without_python_hooks(tmp_path: Path, listener):
    """Each kernel layer alone (no audit hook, no guard) stops a shell's writes or a connect: the network
    namespace stops the connect, Landlock stops the write and (ABI >= 4) the connect; with neither, both happen."""
    def attempt(layers: str) -> list[str]:
        sandbox, target = tmp_path / layers / "box", tmp_path / layers / "escaped.txt"
        sandbox.mkdir(parents=True)
        code = (f"import os, socket, sys\nsys.path.insert(0, {str(_CHILD_DIR)!r})\nimport _sandbox_child as c\n"
                f"libc = c._Libc()\nnet = c._unshare(libc) if 'net' in {layers!r} else None\n"
                f"abi = c._landlock(libc, {str(sandbox)!r}) if 'landlock' in {layers!r} else None\n"
                f"os.system('echo x > {target}; echo y > {sandbox}/inside.txt')\n"
                f"try:\n    socket.create_connection(('127.0.0.1', {listener}), timeout=5)\n    conn = 'connected'\n"
                "except OSError:\n    conn = 'refused'\nprint(net, abi, conn)\n")
        out = unsandboxed(code).split()
        assert len(out) == 3 and (sandbox / "inside.txt").read_text() == "y\n", out
        return [*out, "written" if target.exists() else "kept out"]

    assert attempt("none") == ["None", "None", "connected", "written"]
    assert attempt("net") == ["True", "None", "refused", "written"]
    landlock_only = attempt("landlock")
    abi = int(landlock_only[1])
    assert abi > 0 and landlock_only[3] == "kept out"
    assert landlock_only[2] == ("refused" if abi >= 4 else "connected")  # TCP rules came with ABI 4
