"""Real multi-rank DeepSpeed runs on CPU (gloo): the tiny model through all three phases."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from arctic_pretrain.train.metrics import read_metrics
from tests.conftest import free_port, run_cli
from tests.train.conftest import assert_generates_with_the_runs_tokenizer, leftover_shm, safetensors_dtypes

pytestmark = pytest.mark.slow
PHASES = ["general", "high_quality", "synthetic"]


def deepspeed_train(run_dir, demo_cache, *overrides, ranks=2):
    launcher = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())]
    args = ["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}", *overrides]
    proc = run_cli(args, launcher=launcher if ranks > 1 else None)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


# two_rank_run: tests/train/conftest.py (one 28-step 2-rank run, shared with the resume tests)


def test_a_finished_run_leaves_no_shared_memory(two_rank_run):
    """DeepSpeed's CPU all-reduce workspace (65 MB per rank in /dev/shm, i.e. RAM) goes with the job."""
    assert leftover_shm(two_rank_run) == []


def test_metrics_walk_the_three_phases_in_order(two_rank_run):
    rows = read_metrics(two_rank_run)
    assert [r["step"] for r in rows] == list(range(1, 29))
    seen = [r["phase"] for r in rows]
    assert [p for i, p in enumerate(seen) if i == 0 or seen[i - 1] != p] == PHASES
    assert {r["phase"] for r in rows if r["consumed_tokens"] <= 16 * 1024} == {"general"}
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "consumed_tokens", "mfu"):
        assert key in rows[0]
    assert "loss/python" in rows[0] and "loss/c" in rows[0]
    assert "loss/synthetic" in rows[-1]
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5, (first, last)


def test_phase_end_checkpoints_and_exports(two_rank_run):
    ckpts = two_rank_run / "checkpoints"
    states = {p.parent.name: json.loads(p.read_text()) for p in ckpts.glob("*/trainer_state.json")}
    ends = {s["phase_end"]: s["step"] for s in states.values() if s["phase_end"]}
    assert ends == {"general": 16, "high_quality": 24, "synthetic": 28}
    assert (ckpts / "latest").read_text().strip() == "step_00000028"
    for phase in PHASES:
        meta = json.loads((two_rank_run / "export" / phase / "arctic_export.json").read_text())
        assert meta["phase"] == phase and meta["step"] == ends[phase]
        assert safetensors_dtypes(two_rank_run / "export" / phase) == {"BF16"}  # trained in fp32, saved as bf16


def test_export_loads_and_generates(two_rank_run):
    model = AutoModelForCausalLM.from_pretrained(two_rank_run / "export" / "synthetic", dtype=torch.float32)
    assert_generates_with_the_runs_tokenizer(two_rank_run / "export" / "synthetic", model,
                                             two_rank_run / "checkpoints" / "step_00000028")


def test_rerun_resumes_from_latest(tmp_path, demo_cache, two_rank_run):
    run_dir = tmp_path / "run"
    deepspeed_train(run_dir, demo_cache, "max_steps=10")
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 11))
    proc = deepspeed_train(run_dir, demo_cache)
    assert "resumed from step_00000010" in proc.stdout + proc.stderr
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 29))
    straight = read_metrics(two_rank_run)
    assert [r["consumed_tokens"] for r in rows] == [r["consumed_tokens"] for r in straight]
    assert rows[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-4)


def test_single_process_python_launch(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    deepspeed_train(run_dir, demo_cache, "max_steps=3", "deepspeed=zero2", ranks=1)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]


def test_torchrun_launch(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    proc = run_cli(["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}",
                    "max_steps=2", "deepspeed=zero3"],
                   launcher=[torchrun, "--standalone", "--nproc_per_node", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_phase_end_light_evaluation(tmp_path, demo_cache, kernel_sandbox):
    run_dir = tmp_path / "run"
    deepspeed_train(run_dir, demo_cache, "evaluation.enabled=true", "evaluation.humaneval_limit=2",
                    "evaluation.max_new_tokens=16", "evaluation.heldout_windows=2", ranks=1)
    evals = [r for r in read_metrics(run_dir) if r.get("event") == "phase_eval"]
    assert [r["phase"] for r in evals] == PHASES
    for r in evals:
        # a 0.36M model after 28 steps solves nothing (tests/evaluate/test_tiny_model.py: canonical answers score 1)
        assert r["eval/humaneval_problems"] == 2 and r["eval/humaneval_pass@1"] == 0.0
        assert {"heldout_loss/python", "heldout_loss/c", "heldout_loss/high_quality"} <= set(r)
    assert evals[-1]["heldout_loss/synthetic"] < evals[0]["heldout_loss/synthetic"], evals  # phase 3 trained on it
