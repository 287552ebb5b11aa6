"""Files that are either whole or absent: every stage publishes its outputs this way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[TextIO]:
    """A text file written to a temporary sibling, fsynced and renamed over ``path`` when the block ends
    (removed if it raises): for outputs streamed in pieces, published whole like ``atomic_write``'s."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync, rename over ``path``, fsync the folder: a reader (or a
    crash) sees the old file or the new one, never a torn one."""
    with atomic_writer(path) as fh:
        fh.write(text)


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """Every record of a JSONL file, blank lines skipped (``.gz``: through gzip); ``missing_ok``: [] for no file."""
    import gzip
    import json

    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
