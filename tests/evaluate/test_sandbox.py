"""The sandbox: real isolation, failures are verdicts (never exceptions), nothing escapes the temp dir."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.sandbox import _CHILD, Job, execute, execute_many

_CHILD_DIR = _CHILD.parent


def test_passing_and_failing_programs():
    assert execute(Job("program", "assert sum([1, 2]) == 3", 5)).passed
    bad = execute(Job("program", "assert 1 == 2", 5))
    assert not bad.passed and bad.status.startswith("failed: AssertionError")


def test_hang_is_a_timeout_within_the_limit():
    t0 = time.perf_counter()
    out = execute(Job("program", "while True:\n    pass", 1.0))
    assert not out.passed and out.status == "timed out"
    assert time.perf_counter() - t0 < 6


def test_hang_that_ignores_signals_is_killed():
    program = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    t0 = time.perf_counter()
    out = execute(Job("program", program, 1.0))
    assert not out.passed
    assert time.perf_counter() - t0 < 8


def test_writes_outside_the_sandbox_are_refused(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    programs = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.system('touch {target}')",
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])",
        f"import os\nfd = os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\nos.write(fd, b'x')",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
    ]
    for program in programs:
        out = execute(Job("program", program + "\nassert False", 5))
        assert not out.passed, program
    assert not target.exists()
    assert execute(Job("program", "open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'",
                       5)).passed


def test_network_is_refused():
    program = ("import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=1)\n")
    out = execute(Job("program", program, 5))
    assert not out.passed and "failed" in out.status


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
    if not (out.isolation and out.isolation.get("mode") == "kernel"):
        pytest.skip("kernel without Landlock or user namespaces: subprocesses stay blocked there")
    assert out.passed, out.status
    assert not target.exists()


def test_kernel_layers_hold_without_python_hooks(tmp_path: Path):
    """Landlock and the network namespace alone (no audit hook, no guard) stop a shell's writes and connects."""
    sandbox, target = tmp_path / "box", tmp_path / "escaped.txt"
    sandbox.mkdir()
    code = (f"import os, socket, sys\nsys.path.insert(0, {str(Path(_CHILD_DIR))!r})\nimport _sandbox_child as c\n"
            f"libc = c._Libc()\nnet, abi = c._unshare(libc), c._landlock(libc, {str(sandbox)!r})\n"
            f"os.system('echo x > {target}; echo y > {sandbox}/inside.txt')\n"
            "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=1)\n    conn = 'connected'\n"
            "except OSError:\n    conn = 'refused'\nprint(net, abi, conn)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    if len(out) < 3 or out[0] != "True" or out[1] == "0":
        pytest.skip(f"kernel without Landlock or user namespaces: {out}")
    assert not target.exists()
    assert (sandbox / "inside.txt").read_text() == "y\n"
    assert out[2] == "refused"
