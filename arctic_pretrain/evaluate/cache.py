"""Results cache: one JSON file per (model, task, generation config), so reruns evaluate only what is new.

The model part of the key is its weights' identity (path, size and mtime of every weights file), so a
re-exported phase is evaluated again while an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from arctic_pretrain.common.config import config_hash

_WEIGHTS = (".safetensors", ".bin", ".pt")


def model_fingerprint(model: str) -> str:
    """Local folder: resolved path plus size/mtime of its weights and config; hub name: the name."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    parts = [str(path.resolve())]
    for f in sorted(path.iterdir()):
        if f.suffix in _WEIGHTS or f.name in ("config.json", "arctic_export.json"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_key(**parts: Any) -> str:
    """A stable hash of the keyword parts (JSON with sorted keys)."""
    return config_hash(parts, 20)


class ResultCache:
    """A folder of ``<task>-<key>.json`` files, written atomically (concurrent runs may share it)."""

    def __init__(self, root: str | Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def _path(self, task: str, key: str) -> Path:
        return self.root / f"{task}-{key}.json"

    def get(self, task: str, key: str) -> dict[str, Any] | None:
        path = self._path(task, key)
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a torn or foreign file: recompute

    def put(self, task: str, key: str, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(task, key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
