"""Files that are either whole or absent: every stage publishes its outputs this way."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync, rename over ``path``, fsync the folder: a reader (or a
    crash) sees the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """Every record of a JSONL file, blank lines skipped (``.gz``: through gzip); ``missing_ok``: [] for no file."""
    import gzip
    import json

    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
