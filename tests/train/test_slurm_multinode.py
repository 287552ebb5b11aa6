"""launch/slurm_train.sbatch under the fake SLURM (tests/support/fake_slurm): two "nodes" on this machine,
one CPU rank each, srun starting one torchrun per node, a real c10d + gloo rendezvous over loopback.
USR1 to the batch shell (what `--signal=B:USR1@300` sends before the time limit) reaches both ranks,
which save once and exit 0; the script requeues the job and the second start resumes and finishes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_pretrain.train.distributed import first_host, slurm_ranks
from arctic_pretrain.train.metrics import read_metrics
from tests.conftest import ROOT

FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"


def test_slurm_variables_map_to_ranks_only_inside_a_step():
    step = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "16",
            "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[007-008]"}
    assert slurm_ranks(step) == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007",
                                 "MASTER_PORT": "24242"}
    assert slurm_ranks({**step, "RANK": "0", "WORLD_SIZE": "2"}) == {}  # torchrun/deepspeed's variables win
    batch_script = {k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert slurm_ranks(batch_script) == {}  # the batch shell is one process, not rank 5 of 16
    assert first_host("node[3-4,9],login1") == "node3" and first_host("a1,a2") == "a1"


def _squeue_state(env: dict, job: str) -> str:
    proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env)
    return proc.stdout.strip()


def _wait(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log.is_file() else "(no job output)"
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.5)


@pytest.mark.slow
def test_two_nodes_signal_saves_on_both_ranks_and_requeued_job_resumes(tmp_path, demo_cache):
    state, run_dir, out = tmp_path / "slurm-state", tmp_path / "run", tmp_path / "job.out"
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{FAKE_SLURM}{os.pathsep}{bindir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_STATE": str(state), "FAKE_SLURM_NODES": "127.0.0.1,127.0.0.2", "FAKE_SLURM_IDLE_S": "2",
           "GPUS_PER_NODE": "1", "PYTHON": sys.executable, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = ["sbatch", "--parsable", "--nodes=2", "--cpus-per-task=1", f"--output={out}", "launch/slurm_train.sbatch",
           "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}", "checkpoint.interval=1000",
           "curriculum.phases.general.tokens=96K", "checkpoint.export_phases=false"]
    job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    try:
        metrics = run_dir / "metrics.jsonl"
        _wait(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2 or _squeue_state(env, job)
              in ("COMPLETED", "FAILED"), 600, "the first training steps", out)
        assert _squeue_state(env, job) == "RUNNING", out.read_text()[-4000:]
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
        _wait(lambda: _squeue_state(env, job) in ("COMPLETED", "FAILED", "CANCELLED"), 900, "the requeued job", out)
        log = out.read_text()
        assert _squeue_state(env, job) == "COMPLETED", log[-4000:]
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True)
        pidfile = state / "runner.pid"
        if pidfile.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)

    record = json.loads((state / "jobs" / f"{job}.json").read_text())
    assert record["tasks"]["-1"]["restarts"] == 1  # requeued once, by the script, after the save
    assert "rendezvous 127.0.0.1:" in log and "(start 2)" in log
    # (the two ranks share the job's output and interleave; rank 0's line is whole)
    saved = int(re.search(r"\[rank0\] WARNING \S+ stop signal received: saved step (\d+)", log).group(1))
    total = sum(p["steps"] for p in json.loads((run_dir / "curriculum.json").read_text()))
    assert 0 < saved < total
    assert f"requeueing job {job}" in log
    stop_ckpt = run_dir / "checkpoints" / f"step_{saved:08d}"
    state_json = json.loads((stop_ckpt / "trainer_state.json").read_text())
    assert state_json["world_size"] == 2 and state_json["phase_end"] is None
    for rank in (0, 1):  # both ranks wrote their part of the one save: RNG state and ZeRO optimizer shard
        assert (stop_ckpt / f"rng_rank{rank}.pt").is_file()
        assert len(list(stop_ckpt.glob(f"*zero_pp_rank_{rank}_*optim_states.pt"))) == 1, list(stop_ckpt.rglob("*"))
    assert len(list(run_dir.joinpath("checkpoints").glob("step_*"))) == 4  # the stop save + 3 phase ends: saved once
    assert f"resumed from step_{saved:08d}" in log
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, total + 1))  # every step once
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{total:08d}"
