"""Step 3: score every curated file, sharded over datatrove tasks, resumable inside a task.

Task ``rank`` of ``world_size`` owns the curated lines whose start byte falls in its slice of the
concatenated ``documents/`` files (balanced by bytes, every line in exactly one task). It writes

    scores/<rank>.partial.jsonl   one line per file, appended and fsynced buffer by buffer
    scores/<rank>.jsonl           the same file renamed once the task is done

A killed task restarts from its partial file: finished lines are kept, a torn last line is cut, and
only the files not yet there are scored. Records are keyed by ``DocumentRef`` (file, offset) into
``documents/``; texts are never copied. Empty and unreadable lines get a record with ``score: null``
and a status; undecodable bytes (lone surrogates) are replaced and counted; files longer than three
windows are scored from their three chunks and counted as ``long``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from arctic_pretrain.annotate.config import ScoreConfig
from arctic_pretrain.data.documents import DocumentRef, documents_files


def task_lines(documents_dir: Path, rank: int, world_size: int) -> Iterator[tuple[DocumentRef, bytes]]:
    """(ref, raw line) of every curated line whose first byte lies in this task's byte slice."""
    files = documents_files(documents_dir)
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    lo, hi = total * rank // world_size, total * (rank + 1) // world_size
    base = 0
    for path, size in zip(files, sizes, strict=True):
        start, end = max(lo - base, 0), min(hi - base, size)
        if start < end:
            rel = path.relative_to(documents_dir).as_posix()
            with open(path, "rb") as fh:
                if start:
                    fh.seek(start - 1)
                    fh.readline()  # a line starting exactly at `start` is ours; one already begun is not
                pos = fh.tell()
                while pos < end:
                    line = fh.readline()
                    if not line:
                        break
                    yield DocumentRef(rel, pos), line
                    pos += len(line)
        base += size


def read_partial(path: Path) -> set[str]:
    """Keys already scored in a partial file; a torn last line (a kill mid-write) is cut off."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    keep = data[:data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(keep))
    return {json.loads(line)["key"] for line in keep.splitlines() if line.strip()}


class ScoreFiles(PipelineStep):
    """One task: score its slice of the curated files with the trained annotator."""

    type = "🏅 - ANNOTATE"
    name = "score"

    def __init__(self, documents_dir: str, scores_dir: str, model_dir: str, tokenizer_dir: str, cfg: ScoreConfig,
                 threads: int = 0) -> None:
        """``tokenizer_dir``: the curated corpus's tokenizer, which counts each file's training tokens (the
        unit of the selection budget). ``threads``: torch threads per task (0: torch's default)."""
        super().__init__()
        self.documents_dir, self.scores_dir, self.model_dir = Path(documents_dir), Path(scores_dir), model_dir
        self.tokenizer_dir, self.cfg, self.threads = tokenizer_dir, cfg, threads

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import torch
        from tokenizers import Tokenizer

        from arctic_pretrain.annotate.encoder import Scorer

        if self.threads:
            torch.set_num_threads(self.threads)
        final = self.scores_dir / f"{rank:05d}.jsonl"
        if final.is_file():
            return
        self.scores_dir.mkdir(parents=True, exist_ok=True)
        partial = self.scores_dir / f"{rank:05d}.partial.jsonl"
        done = read_partial(partial)
        self.stat_update("resumed", value=len(done))
        scorer = Scorer.load(self.model_dir, batch_size=self.cfg.batch_size, device=self.cfg.device,
                             precision=self.cfg.precision)
        counter = Tokenizer.from_file(str(Path(self.tokenizer_dir) / "tokenizer.json"))
        with open(partial, "ab") as out:
            buffer: list[tuple[DocumentRef, bytes]] = []
            chunks = 0
            for ref, line in task_lines(self.documents_dir, rank, world_size):
                if ref.key in done:
                    continue
                buffer.append((ref, line))
                chunks += 3
                if chunks >= self.cfg.buffer_chunks:
                    self._score(buffer, scorer, counter, out)
                    buffer, chunks = [], 0
            if buffer:
                self._score(buffer, scorer, counter, out)
        os.replace(partial, final)
        yield from ()

    def _score(self, buffer, scorer, counter, out) -> None:
        records, texts = [], []
        for ref, line in buffer:
            language = ref.file.split("/", 1)[0]
            try:
                rec = json.loads(line)
                text, meta = rec["text"], rec.get("metadata", {})
            except (ValueError, KeyError, TypeError):
                self.stat_update("unreadable")
                records.append(self._record(ref, language, {}, None, 0, "unreadable"))
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from undecodable input bytes
                self.stat_update("undecodable")
                text = text.encode("utf-8", "replace").decode("utf-8")
            language = meta.get("language", language)
            if not text.strip():
                self.stat_update("empty")
                records.append(self._record(ref, language, meta, None, 0, "empty"))
                continue
            records.append(self._record(ref, language, meta, None, 0, "ok"))
            texts.append((len(records) - 1, text))
        if texts:
            with self.track_time("tokenize"):
                enc_ids = scorer.chunker.ids([t for _, t in texts])
                tokens = [len(e.ids) for e in counter.encode_batch([t for _, t in texts], add_special_tokens=False)]
                per_file = [scorer.chunker.chunks(ids) for ids in enc_ids]
            flat = [c for cs in per_file for c in cs]
            with self.track_time("forward"):
                scores = scorer.score_chunks(flat)
            pos = 0
            for (i, _text), cs, n in zip(texts, per_file, tokens, strict=True):
                records[i]["score"] = round(float(np.mean(scores[pos:pos + len(cs)])), 6)
                records[i]["tokens"] = n
                pos += len(cs)
            long = sum(1 for ids in enc_ids if len(ids) > 3 * scorer.chunker.window)
            self.stat_update("long", value=long)
            self.stat_update("chunks", value=len(flat))
            self.stat_update("tokens", value=sum(tokens))
        self.stat_update("files", value=len(records))
        out.write("".join(json.dumps(r) + "\n" for r in records).encode())
        out.flush()
        os.fsync(out.fileno())

    @staticmethod
    def _record(ref: DocumentRef, language: str, meta: dict, score, tokens: int, status: str) -> dict:
        return {"key": ref.key, "file": ref.file, "offset": ref.offset, "language": language,
                "repo": meta.get("repo", ""), "path": meta.get("path", ""), "score": score, "tokens": tokens,
                "status": status}


# a score record's fields and their SQL types (ScoreFiles._record); the order is the records' own
SCORE_COLUMNS = {"key": "VARCHAR", "file": "VARCHAR", "offset": "BIGINT", "language": "VARCHAR", "repo": "VARCHAR",
                 "path": "VARCHAR", "score": "DOUBLE", "tokens": "BIGINT", "status": "VARCHAR"}


def score_shards(scores_dir: Path) -> list[Path]:
    """The finished score files (``<rank>.jsonl``), in rank order; partial files are not scores yet."""
    return [p for p in sorted(Path(scores_dir).glob("[0-9]*.jsonl")) if not p.name.endswith(".partial.jsonl")]


def iter_scores(scores_dir: Path) -> Iterator[dict]:
    for path in score_shards(scores_dir):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


@contextmanager
def open_scores(scores_dir: Path, memory_limit: str, spill_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with the view ``scores`` over the finished score files, read where they lie:
    select and report query the scores out of core (at the paper's 10^8-10^9 files, Python records would
    not fit in memory). DuckDB works within ``memory_limit`` and spills larger sorts to a temporary
    folder under ``spill_dir``, removed on exit."""
    shards = [str(p) for p in score_shards(scores_dir)]
    spill_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".duckdb-", dir=spill_dir) as tmp, duckdb.connect() as con:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            con.execute(f"SET memory_limit = {_sql(memory_limit)}")
        except duckdb.Error as err:
            raise ValueError(f"memory limit {memory_limit!r} is not a memory size such as 1GB or 500MB: {err}") from err
        con.execute(f"SET temp_directory = {_sql(tmp)}; SET threads = {threads}; "
                    "SET preserve_insertion_order = false; SET enable_progress_bar = false")
        columns = ", ".join(f'"{k}" {v}' for k, v in SCORE_COLUMNS.items())
        if shards:
            types = ", ".join(f"{_sql(k)}: {_sql(v)}" for k, v in SCORE_COLUMNS.items())
            con.execute(f"CREATE VIEW scores AS SELECT * FROM read_json([{', '.join(map(_sql, shards))}], "
                        f"format = 'newline_delimited', columns = {{{types}}})")
        else:
            con.execute(f"CREATE TABLE scores ({columns})")
        try:
            yield con
        except duckdb.Error as err:
            raise ValueError(f"{scores_dir}: reading the score files failed: {err}") from err


def _sql(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"
