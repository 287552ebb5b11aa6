"""Several synthesis workers at once (a SLURM array under tests/support/fake_slurm), some SIGKILLed and
restarted: every seed written exactly once, every line parses; a worker never touches another's file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_pretrain.synthesize import run
from arctic_pretrain.synthesize.generations import GenerationFileError
from arctic_pretrain.synthesize.seeds import Selection
from tests.synthesize.conftest import ROOT
from tests.synthesize.helpers import make_config
from tests.synthesize.openai_server import OpenAIServer

FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"
PY = ["seeding.languages=[python]", "seeding.num_seeds=100", "progress=false", "backend.concurrency=1"]
TORN = b'{"id": "0123456789abcdef", "seed": {"te'  # what a kill in the middle of a write leaves


def lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path}: a torn last line"
    return [json.loads(line) for line in data.splitlines()]  # every line parses


@pytest.fixture
def slurm_env(tmp_path):
    state = tmp_path / "slurm-state"
    yield {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_STATE": str(state), "FAKE_SLURM_CPUS": "4", "FAKE_SLURM_IDLE_S": "1"}
    pidfile = state / "runner.pid"  # the fake's runner exits when idle; stop it if the test failed midway
    if pidfile.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_array_workers_killed_and_restarted_write_every_seed_once(seeds, tmp_path, slurm_env):
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    gens = out / "generations"
    with OpenAIServer(delay_s=0.4) as srv:
        args = [f"seeds={seeds}", f"output_dir={out}", f"backend.base_url={srv.url}", "workers.num_workers=4", *PY]
        script = tmp_path / "synth.sbatch"
        script.write_text("#!/bin/bash\n#SBATCH --job-name=synth\n"
                          f"exec {sys.executable} launch/synthesize.py {' '.join(args)} "
                          "workers.worker=$SLURM_ARRAY_TASK_ID\n")

        def sbatch(array: str) -> str:
            return subprocess.run(["sbatch", "--parsable", f"--array={array}", f"--output={logs}/%A_%a.out",
                                   str(script)], cwd=ROOT, env=slurm_env, capture_output=True, text=True,
                                  check=True).stdout.strip()

        def count(worker: int) -> int:
            path = gens / f"{worker:05d}.jsonl"
            return path.read_bytes().count(b"\n") if path.is_file() else 0

        job = sbatch("0-3")
        deadline = time.time() + 240
        while time.time() < deadline and min(count(0), count(2)) < 2:
            time.sleep(0.05)
        subprocess.run(["scancel", "--signal=KILL", "--full", f"{job}_0", f"{job}_2"], env=slurm_env, check=True)
        time.sleep(1.0)
        killed = {w: count(w) for w in (0, 2)}
        total = {w: sum(1 for s in Selection.read(seeds).seeds(make_config(*args).seeding, (), w, 4)) for w in (0, 2)}
        assert all(2 <= killed[w] < total[w] for w in (0, 2)), (killed, total)  # the kills landed mid-run
        with open(gens / "00000.jsonl", "ab") as fh:  # as if the kill had landed in the middle of a write
            fh.write(TORN)
        restart = sbatch("0,2")  # while workers 1 and 3 may still be appending to their own files

        def states() -> list[str]:
            return sorted(subprocess.run(["squeue", "-h", "-r", "-j", f"{job},{restart}", "-o", "%i %T"],
                                         env=slurm_env, capture_output=True, text=True, check=True).stdout.splitlines())

        while time.time() < deadline and any(s.endswith(("PENDING", "RUNNING", "COMPLETING")) for s in states()):
            time.sleep(0.5)
        sent_before_finish = srv.requests
        done = subprocess.run([sys.executable, "launch/synthesize.py", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert srv.requests == sent_before_finish  # every seed was in: the finish sent nothing
    assert [s.split() for s in states()] == sorted([[f"{job}_0", "FAILED"], [f"{job}_1", "COMPLETED"],  # KILL: FAILED
                                                   [f"{job}_2", "FAILED"], [f"{job}_3", "COMPLETED"],
                                                   [f"{restart}_0", "COMPLETED"], [f"{restart}_2", "COMPLETED"]])
    assert "cutting a torn last line" in (logs / f"{restart}_0.out").read_text()
    recs = {w: lines(gens / f"{w:05d}.jsonl") for w in range(4)}
    ids = [r["id"] for rs in recs.values() for r in rs]
    cfg = make_config(*args)
    expected = {s.id for s in Selection.read(seeds).seeds(cfg.seeding)}
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected  # every seed exactly once
    assert all(int(r["id"], 16) % 4 == w for w, rs in recs.items() for r in rs)  # each in its worker's file
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["generated"] == summary["requested"] == len(expected) > 30 and summary["duplicate_records"] == 0


def test_a_worker_repairs_only_its_own_file_and_refuses_a_second_writer(seeds, tmp_path):
    out = tmp_path / "out"
    gens = out / "generations"
    gens.mkdir(parents=True)
    other = gens / "00001.jsonl"
    other.write_bytes(TORN)  # worker 1 is in the middle of writing its first record
    with OpenAIServer() as srv:
        args = [f"seeds={seeds}", f"output_dir={out}", f"backend.base_url={srv.url}", "workers.num_workers=2", *PY]
        run(make_config(*args, "workers.worker=0"))
        assert other.read_bytes() == TORN  # untouched: only worker 1 may cut its own torn line
        assert len(lines(gens / "00000.jsonl")) > 10
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); "
                                   "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                                   str(other)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"  # worker 1 is running elsewhere
            with pytest.raises(GenerationFileError, match=r"00001.jsonl is being appended to by another process"):
                run(make_config(*args, "workers.worker=1"))
        finally:
            holder.kill()
            holder.wait()
        assert other.read_bytes() == TORN
        run(make_config(*args, "workers.worker=1"))  # now worker 1 itself repairs its file
    assert len(lines(other)) > 10
