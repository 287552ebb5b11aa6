"""The fake SLURM's srun outside a job (what the snowcoder_1b3 evaluate step's launcher does on a login node):
it gets an allocation first, as the real one does, runs the command as that job's step, relays its output
and exits with its status."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT

FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"


def test_srun_outside_a_job_allocates_then_runs_the_step(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state),
           "FAKE_SLURM_PARTITIONS": "cpu,gpu", "FAKE_SLURM_IDLE_S": "1"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(["srun", "--gpus", "1", "-p", "gpu", "-l", "bash", "-c",
                           'echo "step of job $SLURM_JOB_ID, task $SLURM_PROCID"; exit 3'],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    [job] = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    assert proc.returncode == 3, proc.stderr
    assert f"0: step of job {job['job_id']}, task 0" in proc.stdout  # the step ran inside the allocation
    assert job["options"]["gpus"] == "1" and job["partition"] == "gpu" and job["name"] == "bash"
    record = json.loads((state / "jobs" / f"{job['job_id']}.json").read_text())
    assert record["tasks"]["-1"]["state"] == "FAILED" and record["tasks"]["-1"]["exit_code"] == 3
