"""The curated-documents folder that curation writes and the annotator and synthesizer read.

    <curated>/documents/<language>/*.jsonl    one JSON line per curated file:
                                              {"text", "id", "metadata": {"language", "repo", "path", ...}}

A file's identity is where its line lies: ``DocumentRef(file, offset)``, ``file`` relative to
``documents/`` and ``offset`` the byte offset of its JSON line. Later stages key scores and selections
by it and read texts back with one seek, so they never copy the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class DocumentRef:
    file: str  # relative to documents/, e.g. "python/g3-r0.jsonl"
    offset: int  # byte offset of the document's JSON line

    @property
    def key(self) -> str:
        """One string per curated file, stable while documents/ is unchanged."""
        return f"{self.file}:{self.offset}"

    @classmethod
    def parse(cls, key: str) -> DocumentRef:
        file, _, offset = key.rpartition(":")
        return cls(file, int(offset))


def documents_files(documents_dir: str | Path, language: str | None = None) -> list[Path]:
    """Every documents file (one language's, or all), in a stable order."""
    root = Path(documents_dir)
    return sorted(root.glob(f"{language}/*.jsonl" if language else "*/*.jsonl"))


def iter_documents(documents_dir: str | Path, files: list[Path] | None = None) -> Iterator[tuple[DocumentRef, dict]]:
    """(ref, record) for every curated file, streamed one line at a time."""
    root = Path(documents_dir)
    for path in files if files is not None else documents_files(root):
        rel = path.relative_to(root).as_posix()
        with open(path, "rb") as fh:
            offset = 0
            for line in fh:
                yield DocumentRef(rel, offset), json.loads(line)
                offset += len(line)


def read_document(documents_dir: str | Path, ref: DocumentRef) -> dict:
    """The record at ``ref`` (one seek, one line)."""
    path = Path(documents_dir) / ref.file
    try:
        with open(path, "rb") as fh:
            fh.seek(ref.offset)
            return json.loads(fh.readline())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} at byte {ref.offset}: no curated document there ({err})") from None
