"""Checkpoints that are either complete or invisible.

A checkpoint is a DeepSpeed tag folder under ``run_dir/checkpoints`` plus our own files:
``trainer_state.json`` (step, tokens, curriculum phase, sampler and callback state: small and
human-readable), ``rng_rank<r>.pt`` per rank, and ``hf_config/`` (enough to export it later).
It becomes "latest" only after every rank has written and synced it, by an atomic rewrite of the
``latest`` file (the same file DeepSpeed's loader reads). A kill at any moment therefore leaves
the previous checkpoint as latest. Interval checkpoints are pruned keep-last-K; phase-end
checkpoints are kept for good.

Before ``latest`` moves, ``checksums.json`` records every file's size and SHA-256 (the ranks hash
disjoint shares of the files in parallel); a resume verifies them first, so a corrupted, emptied or
truncated file is reported by name instead of loading silently or failing deep inside torch.load.
"""

from __future__ import annotations

import hashlib
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
import torch.distributed as tdist

from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.train import distributed as dist

log = logging.getLogger(__name__)

LATEST = "latest"
STATE = "trainer_state.json"
COMPLETE = "COMPLETE"
CHECKSUMS = "checksums.json"
CHUNK = 16 * 2**20


class CorruptCheckpoint(RuntimeError):
    """A checkpoint's files do not match the checksums recorded when it was saved, or cannot be read. Exit 2."""

    exit_code = 2


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _shared(work: list[Path], fn, collective: bool = True) -> dict[str, Any]:
    """``{str(path): fn(path)}`` over ``work``, split across the ranks (each takes every world-th file)."""
    rank, world = (dist.rank(), dist.world_size()) if collective else (0, 1)
    mine = {str(p): fn(p) for p in work[rank::world]}
    if world == 1:
        return mine
    parts: list[dict[str, Any] | None] = [None] * world
    tdist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in (part or {}).items()}


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (CHECKSUMS, COMPLETE))


def record_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of ``folder`` (collective: the ranks share the hashing)."""
    files = checkpoint_files(folder)
    digests = _shared(files, file_digest)
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": digests[str(p)]} for p in files}


def verify_checksums(folder: Path, collective: bool = True) -> list[str] | None:
    """Problems found in ``folder`` against its ``checksums.json`` ([] if none; None: no checksums recorded,
    a checkpoint written before they were). Collective unless ``collective=False``."""
    table_path = folder / CHECKSUMS
    if not table_path.is_file():
        return None
    try:
        table = json.loads(table_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"{table_path}: unreadable ({err})"]
    problems, to_hash = [], []
    for name, want in sorted(table.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, {want['bytes']} when saved (truncated or emptied)")
        else:
            to_hash.append(path)
    got = _shared(to_hash, file_digest, collective)
    problems += [f"{p}: SHA-256 differs from the one recorded at save (corrupted)" for p in to_hash
                 if got[str(p)] != table[str(p.relative_to(folder))]["sha256"]]
    return problems


def read_state_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{path}: unreadable ({type(err).__name__}: {err}); the file is damaged") from None



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
        return read_state_file(self.root / tag / STATE)

    def complete_tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{COMPLETE}") if "." not in p.parent.name)

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
        dist.barrier()
        checksums = record_checksums(folder)  # every rank hashes its share
        if dist.rank() == 0:
            atomic_write(folder / CHECKSUMS, json.dumps(checksums, indent=1))
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
    try:
        path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=load_optimizer,
                                         load_lr_scheduler_states=False, load_module_only=not load_optimizer)
    except Exception as err:  # torch.load's EOFError, unpickling errors, size mismatches: name the checkpoint
        raise CorruptCheckpoint(f"{root / tag}: DeepSpeed could not load it ({type(err).__name__}: "
                                f"{str(err)[:500]})") from err
    if path is None:
        raise CorruptCheckpoint(f"DeepSpeed could not load checkpoint {root / tag}")
    if not load_optimizer:
        zero_optimizer_state(engine)
    rng_file = (rng_root or root) / tag / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        try:
            set_rng_state(torch.load(rng_file, weights_only=False))
        except Exception as err:
            raise CorruptCheckpoint(f"{rng_file}: unreadable ({type(err).__name__}: {err})") from err


def zero_optimizer_state(engine) -> None:
    """AdamW as if new: step counts and moments zeroed in place (the next step then computes what a fresh AdamW
    would). Needed because DeepSpeed's universal-checkpoint load (a world-size change) restores the optimizer
    state even when told not to (ZeRO 1/2's ``_load_universal_checkpoint`` ignores ``load_optimizer_states``)."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in base.state.values():
        for key, value in state.items():
            if key in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if torch.is_tensor(value):
                    value.zero_()
                else:
                    state[key] = 0


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


def plan_restore(own: CheckpointManager, init_from: str | None, world_size: int,
                 fallback_on_corrupt: bool = False) -> RestorePlan | None:
    """Where this start restores from: the run's latest checkpoint, else ``init_from``, verified against
    its checksums first (collective). A corrupt latest is reported by file; with ``fallback_on_corrupt``
    the run moves it aside (``<tag>.corrupt``) and resumes from the newest earlier checkpoint that verifies."""
    tag = own.latest_tag()
    if tag is not None:
        root, branch = own.root, False
        tag = verified_tag(own, tag, fallback_on_corrupt)
    elif init_from:
        try:
            root, tag = resolve_checkpoint(init_from)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"init_from={init_from!r}: {err}") from None
        branch = True
        problems = verify_checksums(root / tag)
        if problems:
            raise CorruptCheckpoint(f"init_from={init_from!r}: {root / tag} is corrupt: " + "; ".join(problems))
    else:
        return None
    state = read_state_file(root / tag / STATE)
    return RestorePlan(root, tag, state, state["world_size"] != world_size, branch)


def verified_tag(own: CheckpointManager, tag: str, fallback: bool) -> str:
    """``tag`` if its files verify; else (with ``fallback``) the newest earlier complete tag that does."""
    problems = verify_checksums(own.root / tag)
    if problems is None:
        log.info("%s has no checksums (saved before they were recorded): not verified", own.root / tag)
        return tag
    if not problems:
        return tag
    earlier = [t for t in reversed(own.complete_tags()) if t < tag]
    good = next((t for t in earlier if verify_checksums(own.root / t) == []), None)
    report = f"checkpoint {own.root / tag} is corrupt: " + "; ".join(problems)
    if not fallback or good is None:
        offer = (f". The previous complete checkpoint {good} verifies: rerun with "
                 "checkpoint.fallback_on_corrupt=true to resume from it (the corrupt one is moved to "
                 f"{tag}.corrupt)" if good else ". No earlier checkpoint verifies either")
        raise CorruptCheckpoint(report + offer)
    log.warning("%s; checkpoint.fallback_on_corrupt=true: resuming from %s", report, good)
    if dist.rank() == 0:
        os.replace(own.root / tag, own.root / f"{tag}.corrupt")
        atomic_write(own.root / LATEST, good)
    dist.barrier()
    return good


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
