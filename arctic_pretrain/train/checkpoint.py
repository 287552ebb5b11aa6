"""Checkpoints that are either complete or invisible.

A checkpoint is a DeepSpeed tag folder under ``run_dir/checkpoints`` plus our own files:
``trainer_state.json`` (step, tokens, curriculum phase, sampler and callback state: small and
human-readable), ``rng_rank<r>.pt`` per rank, and ``hf_config/`` (enough to export it later).
It becomes "latest" only after every rank has written and synced it, by an atomic rewrite of the
``latest`` file (the same file DeepSpeed's loader reads). A kill at any moment therefore leaves
the previous checkpoint as latest. Interval checkpoints are pruned keep-last-K; phase-end
checkpoints are kept for good.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.train import distributed as dist

log = logging.getLogger(__name__)

LATEST = "latest"
STATE = "trainer_state.json"
COMPLETE = "COMPLETE"




def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointManager:
    """Writes ``root/<tag>/`` on every rank and publishes it as ``latest`` only when all of it is on disk.

    ``hf_config`` (the model's transformers config) is saved into each checkpoint, so any checkpoint
    exports to an HF folder later without the run's YAML."""

    def __init__(self, root: str | Path, keep_last: int, hf_config=None) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.hf_config = hf_config

    # ---- reading -------------------------------------------------------------------------------
    def latest_tag(self) -> str | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        if not (self.root / tag / COMPLETE).is_file():
            raise RuntimeError(f"{pointer} names {tag!r}, which is not a complete checkpoint")
        return tag

    def read_state(self, tag: str) -> dict[str, Any]:
        return json.loads((self.root / tag / STATE).read_text())

    def complete_tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{COMPLETE}"))

    # ---- writing -------------------------------------------------------------------------------
    def save(self, engine, step: int, state: dict[str, Any], before_publish=None) -> str:
        """Write a checkpoint on every rank, then publish it from rank 0. Collective."""
        tag = tag_for(step)
        folder = self.root / tag
        if dist.rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if folder.exists():  # a half-written leftover from a killed save: never published
                shutil.rmtree(folder)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"trainer_state": state}, save_latest=False)
        torch.save(rng_state(), folder / f"rng_rank{dist.rank()}.pt")
        dist.barrier()
        if dist.rank() == 0:
            if self.hf_config is not None:
                self.hf_config.save_pretrained(folder / "hf_config")
            for path in folder.rglob("*"):
                if path.is_file():
                    with open(path, "rb+") as fh:
                        os.fsync(fh.fileno())
            atomic_write(folder / STATE, json.dumps(state, indent=2))
            if before_publish is not None:
                before_publish()  # rank 0's checkpoint_written callbacks: everything written, nothing published
            atomic_write(folder / COMPLETE, "")
            atomic_write(self.root / LATEST, tag)
            self.prune()
        dist.barrier()
        return tag

    def prune(self) -> None:
        """Keep the newest ``keep_last`` interval checkpoints and every phase-end checkpoint."""
        latest = (self.root / LATEST).read_text().strip() if (self.root / LATEST).is_file() else None
        interval = [t for t in self.complete_tags() if not self.read_state(t).get("phase_end")]
        for tag in interval[: max(len(interval) - self.keep_last, 0)]:
            if tag != latest:
                shutil.rmtree(self.root / tag, ignore_errors=True)

    # ---- loading -------------------------------------------------------------------------------
def load_engine(engine, root: Path, tag: str, load_optimizer: bool = True, rng_root: Path | None = None) -> None:
    """Restore model (and optimizer) from ``root/tag``, and this rank's RNG when it was saved."""
    path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=load_optimizer,
                                     load_lr_scheduler_states=False, load_module_only=not load_optimizer)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
    rng_file = (rng_root or root) / tag / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))


@dataclass
class RestorePlan:
    """Where a starting run takes its state from, decided before DeepSpeed is initialised."""

    root: Path  # folder holding the tag (a checkpoints/ dir)
    tag: str
    state: dict[str, Any]
    universal: bool  # saved with another world size: load through DeepSpeed's universal format
    branch: bool  # init_from another run (not a resume of this one)


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """A tag folder, a run's ``checkpoints`` folder or a run folder -> (checkpoints root, complete tag)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if (path / "checkpoints").is_dir() and not (path / LATEST).is_file():
        path = path / "checkpoints"
    if (path / LATEST).is_file():  # a checkpoints folder: follow its latest pointer
        tag = (path / LATEST).read_text().strip()
        if not (path / tag / COMPLETE).is_file():
            raise FileNotFoundError(f"{path}: {path / LATEST} names {tag!r}, but {path / tag} is not a "
                                    f"complete checkpoint (no {COMPLETE} file)")
        return path, tag
    if (path / COMPLETE).is_file():
        return path.parent, path.name
    if any(path.glob("*model_states.pt")) or (path / STATE).exists():
        raise FileNotFoundError(f"{path}: incomplete checkpoint (no {COMPLETE} file: the save was "
                                "interrupted); use an earlier tag or the run's latest")
    raise FileNotFoundError(f"{path}: not a checkpoint (expected a tag folder with {COMPLETE}, or a run or "
                            f"checkpoints folder with a {LATEST} file)")


def plan_restore(own: CheckpointManager, init_from: str | None, world_size: int) -> RestorePlan | None:
    tag = own.latest_tag()
    if tag is not None:
        root, branch = own.root, False
    elif init_from:
        try:
            root, tag = resolve_checkpoint(init_from)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"init_from={init_from!r}: {err}") from None
        branch = True
    else:
        return None
    state = json.loads((root / tag / STATE).read_text())
    return RestorePlan(root, tag, state, state["world_size"] != world_size, branch)


def to_universal(plan: RestorePlan, own_root: Path) -> Path:
    """Convert the planned checkpoint with DeepSpeed's ds_to_universal (rank 0, once); returns its root."""
    out_root = own_root / ("universal-init" if plan.branch else "universal")
    target = out_root / plan.tag
    if dist.rank() == 0 and not (target / COMPLETE).is_file():
        tmp = out_root / f".{plan.tag}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        log.info("world size changed (%d -> %d): converting %s to a universal checkpoint",
                 plan.state["world_size"], dist.world_size(), plan.root / plan.tag)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
               str(plan.root / plan.tag), "--output_folder", str(tmp), "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"ds_to_universal failed on {plan.root / plan.tag}:\n{proc.stderr[-3000:]}")
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    dist.barrier()
    return out_root
