"""A run's identity across restarts: what a resume may change, and a history of every start.

A resume restores weights and the sample stream, so whatever shapes the weights or the token ids must
stay as the run began: the model's shape, the tokenizer, the sources' tokenizer hashes, the sequence
length. A change there is refused, naming every differing key, before any rank builds a model (and
before ``config.yaml`` is rewritten). Everything else (budgets, learning rates, intervals, guards) may
change and is logged. ``history.jsonl`` gets one line per start: its command-line overrides, its
config diff against the previous start, and the sources it accepted onto changed data.

The data itself may change under a run (a re-run selection, a re-tokenized source); the checkpoint's
sampler state records each source's window count and manifest hash, and a resume onto a source read
before and changed since is refused by name unless ``checkpoint.accept_changed_sources`` names it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from arctic_pretrain.common.config import ConfigError

log = logging.getLogger(__name__)
HISTORY = "history.jsonl"
CONFIG = "config.yaml"
# model keys that may change on a resume (kernels and memory, not weights); every other model key is fixed
MODEL_RUNTIME = ("name", "attention", "activation_checkpointing", "initializer_range")
FIXED = ("training.seq_len", "tokenizer")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list]:
    """``{dotted.key: [old, new]}`` for every key whose value differs (a key missing on one side is None)."""
    a, b = flatten(old), flatten(new)
    return {key: [a.get(key), b.get(key)] for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def is_fixed(key: str) -> bool:
    if key.startswith("model."):
        return key.removeprefix("model.") not in MODEL_RUNTIME
    return key in FIXED or key.startswith("source_tokenizers.")


def source_added_or_dropped(key: str, change: list, run_tokenizers: set[str]) -> bool:
    """A source that joins the mixture later (the demo adds its synthetic source after phase 2) or leaves it
    changes no token id, provided a new one was made by the run's tokenizer."""
    if not key.startswith("source_tokenizers."):
        return False
    before, after = change
    return after is None or (before is None and (not run_tokenizers or after in run_tokenizers))


def read_previous(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The last start's resolved config and source tokenizer hashes (None, {} for a new run)."""
    config = run_dir / CONFIG
    old = yaml.safe_load(config.read_text()) if config.is_file() else None
    hashes: dict[str, str] = {}
    history = run_dir / HISTORY
    if history.is_file():
        lines = [line for line in history.read_text().splitlines() if line.strip()]
        if lines:
            hashes = json.loads(lines[-1]).get("source_tokenizers", {})
    return old, hashes


def check_resume(run_dir: Path, new: dict[str, Any], hashes: dict[str, str], resuming: bool) -> dict[str, list]:
    """Compare this start with the run's previous one; refuse a resume that changes a fixed key.
    Returns the accepted changes (logged)."""
    old, old_hashes = read_previous(run_dir)
    if old is None:
        return {}
    diff = config_diff({**old, "source_tokenizers": old_hashes or hashes}, {**new, "source_tokenizers": hashes})
    diff.pop("output_dir", None)
    diff.pop("run_dir", None)  # its name in a run started before output_dir
    run_tokenizers = set((old_hashes or hashes).values())
    refused = {k: v for k, v in diff.items() if is_fixed(k) and not source_added_or_dropped(k, v, run_tokenizers)}
    if refused and resuming:
        listed = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in refused.items())
        raise ConfigError(f"output_dir={str(run_dir)!r}: cannot resume with a different {', '.join(refused)} "
                          f"({listed}); these fix the weights' shape or the token ids. Use a new output_dir, or "
                          f"branch from this run with output_dir=<new> init_from={run_dir}")
    if diff:
        verb = "resuming with" if resuming else "no checkpoint to resume; starting over with"
        log.info("%s changed settings: %s", verb, "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in diff.items()))
    return diff


def check_source_data(changed: dict[str, dict] | None, accept: Collection[str], checkpoint: Path
                      ) -> dict[str, dict]:
    """Refuse a start onto sources whose data changed since ``checkpoint`` (``changed``, from the sampler:
    a changed window count or manifest would re-cut the current epoch's permutation, so windows are read
    twice and others never), unless ``accept`` names each. ``None``: the checkpoint predates the record
    (warned, unknown). Returns the accepted changes, for history.jsonl."""
    from arctic_pretrain.data.sampler import describe_changes

    if changed is None:
        log.warning("%s was saved before checkpoints recorded each source's window count and manifest hash: "
                    "a source changed since cannot be detected on this start (recorded from now on)", checkpoint)
        return {}
    refused = {name: change for name, change in changed.items() if name not in accept}
    if refused:
        raise ConfigError(
            f"data changed since checkpoint {checkpoint}: {describe_changes(refused)}. Resuming would re-cut the "
            "current epoch's sample order of these sources (windows read twice, others never). Point "
            "data.sources.<name>.path back to the data the run read, or accept the change deliberately with "
            f"checkpoint.accept_changed_sources=[{','.join(refused)}]: each then starts a fresh permutation over "
            "its new data at the recorded point, and history.jsonl records it")
    return changed


def command_overrides() -> list[str]:
    """This start's overrides as typed (Hydra's record when Hydra started us, else argv)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return sys.argv[1:]


def code_version() -> str | None:
    """The git commit of the code that runs (with ``+dirty`` for uncommitted changes), for provenance."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{head}+dirty" if head and dirty else (head or None)


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
            "git_commit": code_version(), **record}
    with open(run_dir / HISTORY, "a") as fh:
        fh.write(json.dumps(line, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
