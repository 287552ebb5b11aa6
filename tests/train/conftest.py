"""Runs shared by the training tests: each costs a 2-rank DeepSpeed launch (~30-60 s on 2 cores), so a run
several modules read is made once per session."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli

CKPT = ["checkpoint.interval=4", "training.deterministic=true"]


def launch(run_dir, demo_cache, *overrides, ranks=2, expect_ok=True, faults=None, env=None):
    launcher = [shutil.which("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port())] \
        if ranks > 1 else None
    args = ["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}", *CKPT,
            *overrides]
    env = {**(env or {}), **({"ARCTIC_PRETRAIN_FAULTS": faults} if faults else {})}
    proc = run_cli(args, launcher=launcher, env=env or None)
    keep_output(run_dir, proc)
    if expect_ok:
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        # a rank torn down with a live gloo group aborts at exit now and then (train/distributed.shutdown)
        assert "terminate called" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return proc


def keep_output(run_dir, proc) -> None:
    """Every launch's output (both ranks and the launcher) next to the run, for a failure to be read later."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    n = len(list(run_dir.parent.glob(f"{run_dir.name}.launch*.log")))
    (run_dir.parent / f"{run_dir.name}.launch{n}.log").write_text(
        f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


def safetensors_dtypes(folder) -> set[str]:
    """The dtypes written in an export's safetensors header (what a reader of the export gets)."""
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def assert_generates_with_the_runs_tokenizer(export_dir, model, tag_dir) -> None:
    """The export generates, and carries the tokenizer the run trained with (``tag_dir``'s trainer state names
    it): the same ids for a prompt, and they decode back to it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    prompt = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)"
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    trained = AutoTokenizer.from_pretrained(json.loads((tag_dir / "trainer_state.json").read_text())["tokenizer"])
    assert inputs["input_ids"][0].tolist() == trained(prompt)["input_ids"]
    assert tokenizer.decode(out[0][:inputs["input_ids"].shape[1]]) == prompt


def leftover_shm(run_dir) -> list[str]:
    """/dev/shm entries named after the rendezvous port of any launch of ``run_dir`` (DeepSpeed's CPU all-reduce
    workspace is named by it; train/distributed.py::release_shm_workspace unlinks it)."""
    ports = set()
    for log in run_dir.parent.glob(f"{run_dir.name}.launch*.log"):
        ports.update(re.findall(r"--master_port[= ](\d+)", log.read_text()))
    assert ports, f"no --master_port in the launch logs of {run_dir}"
    shm = Path("/dev/shm")
    return sorted(p.name for port in ports for p in shm.glob(f"*_{port}_*")) if shm.is_dir() else []


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory, demo_cache):
    """experiment=tiny through its three phases (28 steps) on 2 ranks, ZeRO-1, deterministic, a checkpoint every
    4 steps: the phase walk, exports and the reference every resume test is compared with to the last bit."""
    run_dir = tmp_path_factory.mktemp("two-rank") / "run"
    launch(run_dir, demo_cache)
    return run_dir


@pytest.fixture(scope="session")
def zero3_two_rank_run(tmp_path_factory, demo_cache):
    """8 steps on 2 ranks with ZeRO-3 (latest: step_00000008): exported by the export tests, continued on one
    rank by the world-size tests (each reads it or copies it, none writes into it)."""
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    launch(run_dir, demo_cache, "deepspeed=zero3", "max_steps=8")
    return run_dir
