"""Group curated files by language, then repository, and write token shards (one source per language).

Files of a repository may come from any input shard, so the curated-documents writer puts each file in
``documents/<language>/g<bucket>-r<rank>.jsonl`` with bucket = hash(repository) mod ``group.buckets``:
one grouping task per bucket then sees every file of its repositories. A repository becomes one
document per language, its files in a seeded random order, in StarCoder2's layout

    <repo_name>NAME<file_sep>PATH\\nCODE<file_sep>PATH\\nCODE...<|endoftext|>    (metadata kept, p=0.5)
    <file_sep>CODE<file_sep>CODE...<|endoftext|>                                 (metadata dropped)

(the EOS is appended by the shard writer). Repositories are written in name order within a bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from arctic_pretrain.curation.config import GroupConfig, TokenizeConfig
from arctic_pretrain.curation.tokenize import INFO
from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo

REPO_NAME, FILE_SEP = "<repo_name>", "<file_sep>"


def bucket_of(repo: str, buckets: int) -> int:
    return zlib.crc32(repo.encode("utf-8", "replace")) % buckets


class AssignBucket(PipelineStep):
    """Tag each curated file with its repository's bucket (used in the writer's file name)."""

    type = "🗂️ - GROUP"
    name = "assign bucket"

    def __init__(self, buckets: int) -> None:
        super().__init__()
        self.buckets = buckets

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            doc.metadata["bucket"] = f"{bucket_of(doc.metadata.get('repo', ''), self.buckets):04d}"
            yield doc


def repo_pieces(repo: str, files: list[tuple[str, str]], cfg: GroupConfig, language: str) -> list[tuple[str, str]]:
    """One repository's document as (separator, text) pieces: files in a seeded random order, the
    repository name and file paths kept with probability ``cfg.metadata_probability``."""
    seed = int.from_bytes(hashlib.blake2b(f"{cfg.seed}\0{language}\0{repo}".encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    files = sorted(files)
    rng.shuffle(files)
    if rng.random() < cfg.metadata_probability:
        return [(REPO_NAME, repo)] + [(FILE_SEP, f"{path}\n{code}") for path, code in files]
    return [(FILE_SEP, code) for _, code in files]


def repo_document(repo: str, files: list[tuple[str, str]], cfg: GroupConfig, language: str) -> str:
    """One training document for one repository's files of one language, as text."""
    return "".join(sep + text for sep, text in repo_pieces(repo, files, cfg, language))


def group_repositories(records: Iterable[dict]) -> dict[str, list[tuple[str, str]]]:
    repos: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rec in records:
        meta = rec.get("metadata", {})
        repos[meta.get("repo", "")].append((meta.get("path", rec.get("id", "")), rec["text"]))
    return repos


class GroupAndTokenize(PipelineStep):
    """One task per bucket: for each language, build repository documents, encode, write shards."""

    type = "🔢 - TOKENIZER"
    name = "group + tokenize"

    def __init__(self, documents_dir: str, tokens_dir: str, tokenizer_dir: str, group: GroupConfig,
                 tokenize: TokenizeConfig, threads: int = 0) -> None:
        """``threads``: encoding threads per task (0: the tokenizers default, every core). Several local
        workers each using every core oversubscribe the CPU: measured 0.54x of raw encode_batch with 2
        workers x 2 threads on 2 cores, 0.98x with 2 x 1."""
        super().__init__()
        self.documents_dir, self.tokens_dir, self.tokenizer_dir = documents_dir, tokens_dir, tokenizer_dir
        self.group, self.tok_cfg, self.threads = group, tokenize, threads

    def _encode(self, writer: ShardWriter, docs: list[list[tuple[str, str]]], tokenizer, language: str) -> None:
        """Encode the pieces of a batch of repository documents, ``tokenize.batch_size`` pieces per
        encode_batch call, and write one document per repository.

        The separators are added tokens, which the tokenizer splits the input on before anything
        else, so encoding the pieces apart gives the ids of the joined text, with per-file
        parallelism instead of one thread per (possibly huge) repository. Ids are kept as uint32
        arrays: a tokenizers Encoding costs ~100 bytes per token, which a large repository (a
        framework's whole source tree) would turn into gigabytes."""
        special = {sep: tokenizer.token_to_id(sep) for sep in (REPO_NAME, FILE_SEP)}
        if None in special.values():  # a tokenizer without StarCoder2 separators: plain text
            docs = [[("", "".join(sep + text for sep, text in doc))] for doc in docs]
        flat = [(i, sep, text) for i, doc in enumerate(docs) for sep, text in doc]
        parts: list[list[np.ndarray]] = [[] for _ in docs]
        step = self.tok_cfg.batch_size
        for lo in range(0, len(flat), step):
            chunk = flat[lo:lo + step]
            for (i, sep, _), enc in zip(chunk, tokenizer.encode_batch([t for _, _, t in chunk],
                                                                      add_special_tokens=False), strict=True):
                if sep:
                    parts[i].append(np.asarray([special[sep]], dtype=np.uint32))
                parts[i].append(np.asarray(enc.ids, dtype=np.uint32))
        for pieces in parts:
            ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)
            writer.add_document(ids)
            self.stat_update(f"tokens_{language}", value=int(ids.size) + 1)  # + the EOS the writer appends

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.threads:  # read when the process's thread pool starts: the first encode_batch
            os.environ.setdefault("RAYON_NUM_THREADS", str(self.threads))
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(self.tokenizer_dir) / "tokenizer.json"))
        info = TokenizerInfo(**json.loads((Path(self.tokenizer_dir) / INFO).read_text()))
        for lang_dir in sorted(p for p in Path(self.documents_dir).iterdir() if p.is_dir()):
            language = lang_dir.name
            with self.track_time("bucket"):
                records = []
                for f in sorted(lang_dir.glob(f"g{rank:04d}-r*.jsonl")):
                    with open(f, encoding="utf-8") as fh:
                        records += [json.loads(line) for line in fh]
                if not records:
                    continue
                repos = group_repositories(records)
                self.stat_update("in_docs", value=len(records))
                self.stat_update("in_bytes", value=sum(len(r["text"].encode("utf-8", "replace")) for r in records))
                del records
                writer = ShardWriter(Path(self.tokens_dir) / language, info, prefix=f"g{rank:04d}",
                                     shard_tokens=self.tok_cfg.shard_tokens)
                batch: list[list[tuple[str, str]]] = []
                pieces = 0
                for repo in sorted(repos):
                    batch.append(repo_pieces(repo, repos[repo], self.group, language))
                    pieces += len(batch[-1])
                    self.stat_update("out_docs")
                    self.stat_update("out_bytes", value=sum(len((s + t).encode("utf-8", "replace")) for s, t in batch[-1]))
                    self.stat_update(f"repos_{language}")
                    if pieces >= self.tok_cfg.batch_size:
                        self._encode(writer, batch, tokenizer, language)
                        batch, pieces = [], 0
                if batch:
                    self._encode(writer, batch, tokenizer, language)
                writer.close(finalize=False)
        yield from ()

