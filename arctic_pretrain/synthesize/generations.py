"""The generation files: one per worker, appended by that worker alone, read back without loading them.

    generations/<w>.jsonl   worker w's records (seed id hash mod num_workers == w), one JSON line each

A worker holds a POSIX lock on each file it appends to (a second process with the same worker id, e.g.
an array task started twice, stops at once), repairs only its own files (a kill mid-write leaves at
most one torn last line, which is cut off before appending resumes) and never touches another worker's
file, which that worker may be appending to at that very moment. The finished seed ids are kept as a
sorted array of 64-bit integers (8 bytes a seed), and the finish reads the records through an on-disk
index (stdlib sqlite3) in seed order, so memory does not grow with the number of records.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)


def worker_file(gens: Path, worker: int) -> Path:
    return gens / f"{worker:05d}.jsonl"


class GenerationFileError(RuntimeError):
    """A generation file that cannot be appended to safely (held by another process, or corrupt). Exit code 1."""

    exit_code = 1


class DoneIds:
    """Finished seed ids (16 hex digits each) as a sorted uint64 array: ``sid in done``."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(ids.astype(np.uint64))

    def __contains__(self, sid: object) -> bool:
        if not isinstance(sid, str) or not self.ids.size:
            return False
        v = np.uint64(int(sid, 16))
        i = int(np.searchsorted(self.ids, v))
        return i < self.ids.size and self.ids[i] == v

    def __len__(self) -> int:
        return int(self.ids.size)


def _lock(fh: BinaryIO, path: Path) -> None:
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            raise GenerationFileError(
                f"{path} is being appended to by another process (the same workers.worker started twice?); "
                "stop it first, or give each process its own workers.worker") from None
        log.warning("%s: cannot lock (%s); make sure no other process runs the same worker", path, err)


def iter_lines(path: Path, fh: BinaryIO | None = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for every complete line of ``path``; a last line without its newline is
    not yielded (a torn write, or a record still being written by its worker)."""
    own = fh is None
    fh = fh or open(path, "rb")  # noqa: SIM115 - closed below
    try:
        fh.seek(0)
        offset = 0
        for line in fh:
            if not line.endswith(b"\n"):
                return
            yield offset, line
            offset += len(line)
    finally:
        if own:
            fh.close()


def parse_line(path: Path, offset: int, line: bytes) -> dict:
    try:
        return json.loads(line)
    except ValueError as err:
        raise GenerationFileError(f"{path}: the line at byte {offset} is not a JSON record ({err}); "
                                  "was the file appended to by two processes?") from None


def open_own(gens: Path, worker: int) -> tuple[BinaryIO, array]:
    """Open (lock, repair) worker ``worker``'s file for appending; returns the handle and the seed ids
    already in it (as integers)."""
    path = worker_file(gens, worker)
    fh = open(path, "a+b")  # noqa: SIM115 - the Recorder closes it
    try:
        _lock(fh, path)
        ids, end = array("Q"), 0
        for offset, line in iter_lines(path, fh):
            end = offset + len(line)
            if line.strip():
                ids.append(int(parse_line(path, offset, line)["id"], 16))
        size = os.fstat(fh.fileno()).st_size
        if size > end:
            log.warning("%s: cutting a torn last line (%d bytes) left by a kill", path, size - end)
            fh.truncate(end)
        fh.seek(0, os.SEEK_END)
    except BaseException:
        fh.close()
        raise
    return fh, ids


class Index:
    """Every record of generations/ by seed id (first copy wins), sorted by (-score, id): the finish
    walks it in seed order and reads a record's document from its file only when it needs it."""

    def __init__(self, gens: Path, db_path: Path) -> None:
        db_path.unlink(missing_ok=True)
        self.db_path = db_path
        self.files = sorted(gens.glob("*.jsonl"))
        self.db = sqlite3.connect(db_path)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; CREATE TABLE g (id TEXT PRIMARY KEY,"
                              " neg_score REAL, file INTEGER, offset INTEGER, verdict TEXT, language TEXT,"
                              " tokens INTEGER)")
        self.lines = 0
        self.db.executemany("INSERT OR IGNORE INTO g VALUES (?, ?, ?, ?, ?, ?, ?)", self._rows())
        self.records = self.db.execute("SELECT count(*) FROM g").fetchone()[0]
        self.duplicates = self.lines - self.records  # never expected; counted so that a test can assert it
        self.db.execute("CREATE INDEX g_order ON g (neg_score, id)")
        self._handles: dict[int, BinaryIO] = {}

    def _rows(self) -> Iterator[tuple]:
        for n, path in enumerate(self.files):
            for offset, line in iter_lines(path):
                if not line.strip():
                    continue
                r = parse_line(path, offset, line)
                self.lines += 1
                yield (r["id"], -float(r["seed"].get("score") or 0.0), n, offset, r["verdict"], r["language"],
                       r.get("completion_tokens") or 0)

    def __iter__(self) -> Iterator[tuple[str, int, int, str, str, int]]:
        """(id, file, offset, verdict, language, completion tokens) in seed order."""
        yield from self.db.execute("SELECT id, file, offset, verdict, language, tokens FROM g ORDER BY neg_score, id")

    def record(self, file: int, offset: int) -> dict:
        fh = self._handles.get(file)
        if fh is None:
            fh = self._handles[file] = open(self.files[file], "rb")  # noqa: SIM115 - closed in close()
        fh.seek(offset)
        return json.loads(fh.readline())

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self.db.close()
        self.db_path.unlink(missing_ok=True)
