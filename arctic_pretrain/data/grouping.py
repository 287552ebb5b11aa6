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
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo
from arctic_pretrain.data.tokenizer import INFO, TokenizeConfig, prepare_tokenizer


@dataclass
class GroupConfig:
    """Language, then repository; one document per repository per language."""

    buckets: int = 16  # ours: repository hash buckets; one bucket of one language must fit in a worker's memory
    metadata_probability: float = 0.5  # recipe: repository metadata kept 50% of the time
    seed: int = 1234  # file order within a repository and the metadata coin

REPO_NAME, FILE_SEP = "<repo_name>", "<file_sep>"
# An encode batch also ends at this much text: a tokenizers Encoding costs ~100 bytes a token, so 256
# files of 1 MB would need gigabytes; 8 MiB (~2.5M tokens) keeps a task's peak in the hundreds of MB.
BATCH_TEXT_BYTES = 8 * 2**20


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


def repo_order(repo: str, paths: list[str], cfg: GroupConfig, language: str) -> tuple[bool, list[int]]:
    """A repository's file order (indices into ``paths``, which must be sorted) and its metadata coin:
    a seeded shuffle, so the same repository gets the same document in every run."""
    seed = int.from_bytes(hashlib.blake2b(f"{cfg.seed}\0{language}\0{repo}".encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    order = list(range(len(paths)))
    rng.shuffle(order)
    return rng.random() < cfg.metadata_probability, order


def repo_pieces(repo: str, files: list[tuple[str, str]], cfg: GroupConfig, language: str) -> list[tuple[str, str]]:
    """One repository's document as (separator, text) pieces: files in a seeded random order, the
    repository name and file paths kept with probability ``cfg.metadata_probability``."""
    files = sorted(files)
    keep_meta, order = repo_order(repo, [path for path, _ in files], cfg, language)
    if keep_meta:
        return [(REPO_NAME, repo)] + [(FILE_SEP, f"{files[i][0]}\n{files[i][1]}") for i in order]
    return [(FILE_SEP, files[i][1]) for i in order]


def repo_document(repo: str, files: list[tuple[str, str]], cfg: GroupConfig, language: str) -> str:
    """One training document for one repository's files of one language, as text."""
    return "".join(sep + text for sep, text in repo_pieces(repo, files, cfg, language))


@dataclass(frozen=True, order=True)
class FileRef:
    """Where one curated file lies in the documents folder: its text is read back only when encoded."""

    path: str
    file: int  # index into the bucket's documents files
    offset: int  # byte offset of its JSON line


class BucketIndex:
    """Repository -> its files' locations for one bucket of one language, built in one streaming pass.

    Holding locations instead of texts keeps a grouping task's memory at the index (~100 bytes a file)
    plus one encode batch, whatever the corpus size; the texts are read back one batch at a time."""

    def __init__(self, files: list[Path], keep: dict[str, set[int]] | None = None) -> None:
        """``keep``: only these files, as {documents file name: byte offsets} (a selection); None: all."""
        self.files = files
        self.repos: dict[str, list[FileRef]] = defaultdict(list)
        self.docs = self.bytes = 0
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        for i, f in enumerate(files):
            wanted = None if keep is None else keep.get(f.name, set())
            with open(f, "rb") as fh:
                offset = 0
                for line in fh:
                    if wanted is not None and offset not in wanted:
                        offset += len(line)
                        continue
                    rec = json.loads(line)
                    meta = rec.get("metadata", {})
                    self.repos[meta.get("repo", "")].append(FileRef(meta.get("path", rec.get("id", "")), i, offset))
                    self.docs += 1
                    self.bytes += len(rec["text"].encode("utf-8", "replace"))
                    offset += len(line)

    def text(self, ref: FileRef) -> str:
        fh = self._handles.pop(ref.file, None)
        if fh is None:
            if len(self._handles) >= 64:  # bounded open files, whatever the number of input shards
                self._handles.popitem(last=False)[1].close()
            fh = open(self.files[ref.file], "rb")  # noqa: SIM115 (closed in close())
        self._handles[ref.file] = fh
        fh.seek(ref.offset)
        return json.loads(fh.readline())["text"]

    def pieces(self, repo: str, cfg: GroupConfig, language: str) -> Iterator[tuple[str, str]]:
        """``repo_pieces`` of one repository, reading each file's text only when it is reached."""
        refs = sorted(self.repos[repo])
        keep_meta, order = repo_order(repo, [r.path for r in refs], cfg, language)
        if keep_meta:
            yield REPO_NAME, repo
        for i in order:
            text = self.text(refs[i])
            yield FILE_SEP, f"{refs[i].path}\n{text}" if keep_meta else text

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


def read_selection(path: Path) -> dict[str, set[int]]:
    """A selection list (JSON lines with ``file``, relative to documents/, and ``offset``) as
    {documents file name: offsets}, the ``keep`` argument of ``BucketIndex``."""
    keep: dict[str, set[int]] = defaultdict(set)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            keep[Path(rec["file"]).name].add(int(rec["offset"]))
    return keep


class GroupAndTokenize(PipelineStep):
    """One task per bucket: for each language, build repository documents, encode, write shards.

    ``select_dir`` (the annotator's ``selected/``): only the files listed in ``<language>.jsonl`` go in,
    grouped exactly as phase 1 groups them; languages without a list are skipped. ``merge_languages``:
    every language writes into ``tokens_dir`` itself (one source, shards prefixed by language)."""

    type = "🔢 - TOKENIZER"
    name = "group + tokenize"

    def __init__(self, documents_dir: str, tokens_dir: str, tokenizer_dir: str, group: GroupConfig,
                 tokenize: TokenizeConfig, threads: int = 0, select_dir: str | None = None,
                 merge_languages: bool = False) -> None:
        """``threads``: encoding threads per task (0: the tokenizers default, every core). Several local
        workers each using every core oversubscribe the CPU: measured 0.54x of raw encode_batch with 2
        workers x 2 threads on 2 cores, 0.98x with 2 x 1."""
        super().__init__()
        self.documents_dir, self.tokens_dir, self.tokenizer_dir = documents_dir, tokens_dir, tokenizer_dir
        self.group, self.tok_cfg, self.threads = group, tokenize, threads
        self.select_dir, self.merge_languages = select_dir, merge_languages

    def _encode(self, writer: ShardWriter, docs: Iterable[Iterable[tuple[str, str]]], tokenizer,
                language: str) -> None:
        """Encode repository documents given as (separator, text) pieces, ``tokenize.batch_size``
        pieces (at most ``BATCH_TEXT_BYTES`` of text) per encode_batch call, streaming each document
        into the shard writer.

        The separators are added tokens, which the tokenizer splits the input on before anything
        else, so encoding the pieces apart gives the ids of the joined text, with per-file
        parallelism instead of one thread per (possibly huge) repository. Pieces are read, encoded and
        written one batch at a time: a repository of hundreds of MB (a framework's whole source tree)
        is never held whole, as text or as ids."""
        special = {sep: tokenizer.token_to_id(sep) for sep in (REPO_NAME, FILE_SEP)}
        plain = None in special.values()  # a tokenizer without StarCoder2 separators: separators as text
        chunk: list[tuple[str, str] | None] = []  # None: the end of a document
        doc_open, doc_tokens = False, 0  # the document being written may span several chunks

        def flush() -> None:
            nonlocal doc_open, doc_tokens
            texts = [sep + text if plain else text for sep, text in filter(None, chunk)]
            encodings = iter(tokenizer.encode_batch(texts, add_special_tokens=False) if texts else ())
            for piece in chunk:
                if not doc_open:
                    writer.begin_document()
                    doc_open = True
                if piece is None:
                    writer.end_document()
                    self.stat_update(f"tokens_{language}", value=doc_tokens + 1)  # + the EOS
                    doc_open, doc_tokens = False, 0
                    continue
                sep, text = piece
                self.stat_update("out_bytes", value=len((sep + text).encode("utf-8", "replace")))
                ids = np.asarray(next(encodings).ids, dtype=np.uint32)
                if sep and not plain:
                    ids = np.concatenate([np.asarray([special[sep]], dtype=np.uint32), ids])
                writer.extend_document(ids)
                doc_tokens += int(ids.size)
            chunk.clear()

        size = 0
        for doc in docs:
            for piece in doc:
                chunk.append(piece)
                size += len(piece[1])
                if len(chunk) >= self.tok_cfg.batch_size or size >= BATCH_TEXT_BYTES:
                    flush()
                    size = 0
            chunk.append(None)
        flush()

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.threads:  # read when the process's thread pool starts: the first encode_batch
            os.environ.setdefault("RAYON_NUM_THREADS", str(self.threads))
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(self.tokenizer_dir) / "tokenizer.json"))
        info = TokenizerInfo(**json.loads((Path(self.tokenizer_dir) / INFO).read_text()))
        for lang_dir in sorted(p for p in Path(self.documents_dir).iterdir() if p.is_dir()):
            language = lang_dir.name
            files = sorted(lang_dir.glob(f"g{rank:04d}-r*.jsonl"))
            keep = None
            if self.select_dir is not None:
                listed = Path(self.select_dir) / f"{language}.jsonl"
                if not listed.is_file():
                    continue
                keep = read_selection(listed)
            with self.track_time("bucket"):  # one timing per (bucket, language): index, read, encode, write
                index = BucketIndex(files, keep)
                if not index.docs:
                    continue
                self.stat_update("in_docs", value=index.docs)
                self.stat_update("in_bytes", value=index.bytes)
                repos = sorted(index.repos)
                self.stat_update("out_docs", value=len(repos))
                self.stat_update(f"repos_{language}", value=len(repos))
                folder, prefix = Path(self.tokens_dir) / language, f"g{rank:04d}"
                if self.merge_languages:
                    folder, prefix = Path(self.tokens_dir), f"{language}-g{rank:04d}"
                writer = ShardWriter(folder, info, prefix=prefix, shard_tokens=self.tok_cfg.shard_tokens)
                try:
                    self._encode(writer, (index.pieces(repo, self.group, language) for repo in repos), tokenizer,
                                 language)
                finally:
                    index.close()
                writer.close(finalize=False)
        yield from ()


class PrepareTokenizer(PipelineStep):
    """One task: make ``output_dir/tokenizer`` before the grouping tasks encode."""

    type = "🔢 - TOKENIZER"
    name = "tokenizer"

    def __init__(self, cfg: TokenizeConfig, documents_dir: str, out_dir: str) -> None:
        super().__init__()
        self.cfg, self.documents_dir, self.out_dir = cfg, documents_dir, out_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time("run"):
            info = prepare_tokenizer(self.cfg, Path(self.documents_dir), Path(self.out_dir))
        self.stat_update("vocab_size", value=info.vocab_size)
        yield from ()
