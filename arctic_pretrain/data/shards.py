"""The token shard format every data stage writes and training reads.

A *source* is a folder:

    manifest.json        format, dtype, tokenizer identity, shards with token/document counts
    <name>.bin           raw token ids (dtype from the manifest), documents back to back
    <name>.idx.npy       int64 document start offsets into <name>.bin, plus the end (len = docs + 1)

Readers memory-map both files, so opening a source costs O(number of shards) and a window read is
O(log documents) with no shard ever loaded into memory. Writers write under temporary names and
publish with a rename, and the manifest is written last: a killed writer never leaves a source that
looks complete. Several writers (curation workers) may write one folder with distinct prefixes;
``finalize_source`` then joins their part lists into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from arctic_pretrain.common.io import atomic_write

FORMAT = "arctic-pretrain/shards"
VERSION = 1
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id of the vocabulary."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenizerInfo:
    """Identity of the tokenizer that made a source: sources from different tokenizers must not mix."""

    name: str
    vocab_size: int
    eos_id: int
    sha256: str = ""

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, name: str | None = None) -> TokenizerInfo:
        """Describe a `tokenizers` JSON file (the hash pins its exact merges and vocabulary)."""
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        tok = Tokenizer.from_file(str(path))
        eos = tok.token_to_id("<|endoftext|>")
        if eos is None:
            raise ValueError(f"{path}: tokenizer has no <|endoftext|> token")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(name=name or str(path), vocab_size=tok.get_vocab_size(), eos_id=eos, sha256=digest)


@dataclass
class ShardEntry:
    name: str
    tokens: int
    documents: int


@dataclass
class Manifest:
    tokenizer: TokenizerInfo
    dtype: str
    shards: list[ShardEntry]
    metadata: dict = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def to_json(self) -> dict:
        out = asdict(self)
        out["tokens"], out["documents"] = self.tokens, self.documents
        return out

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: not a token source (no {MANIFEST}); run a tokenize stage first")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')!r} is not supported (expected {VERSION})")
            return cls(
                tokenizer=TokenizerInfo(**raw["tokenizer"]),
                dtype=raw["dtype"],
                shards=[ShardEntry(**s) for s in raw["shards"]],
                metadata=raw.get("metadata", {}),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: invalid manifest: {err}") from err


class ShardWriter:
    """Append documents to shards of about ``shard_tokens`` tokens; ``close()`` publishes them.

    Each document gets the tokenizer's EOS appended, so a document's last token predicts its end and
    never the next document's first token.
    """

    def __init__(
        self,
        folder: str | Path,
        tokenizer: TokenizerInfo,
        *,
        prefix: str = "shard",
        shard_tokens: int = 256 * 2**20,
        append_eos: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.shard_tokens = shard_tokens
        self.append_eos = append_eos
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.entries: list[ShardEntry] = []
        self._fh = None
        self._starts: list[int] = []
        self._pos = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.entries):05d}"
        self._name = name
        self._fh = open(self.folder / f"{name}.bin.tmp", "wb")  # noqa: SIM115 (closed in _seal)
        self._starts, self._pos = [], 0

    def _seal(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        name = self._name
        idx = np.asarray([*self._starts, self._pos], dtype=np.int64)
        tmp_idx = self.folder / f"{name}.idx.tmp.npy"
        np.save(tmp_idx, idx)
        os.replace(tmp_idx, self.folder / f"{name}.idx.npy")
        os.replace(self.folder / f"{name}.bin.tmp", self.folder / f"{name}.bin")
        self.entries.append(ShardEntry(name=name, tokens=self._pos, documents=len(self._starts)))

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        self.begin_document()
        self.extend_document(ids)
        self.end_document()

    def begin_document(self) -> None:
        """Start a document written in parts (``extend_document``), so a huge one (a repository of
        hundreds of MB) never has to be held in memory whole."""
        if self._fh is None:
            self._open()
        self._starts.append(self._pos)

    def extend_document(self, ids: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        if int(arr.min()) < 0 or int(arr.max()) >= self.tokenizer.vocab_size:
            raise ValueError(f"token id out of range [0, {self.tokenizer.vocab_size}) in document")
        self._fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self._pos += arr.size

    def end_document(self) -> None:
        if self.append_eos:
            self._fh.write(np.asarray([self.tokenizer.eos_id], dtype=self.dtype).tobytes())
            self._pos += 1
        if self._pos == self._starts[-1]:  # nothing written: no empty document in the index
            self._starts.pop()
            return
        if self._pos >= self.shard_tokens:
            self._seal()

    def add_documents(self, docs: Iterable[Sequence[int]]) -> None:
        for doc in docs:
            self.add_document(doc)

    def close(self, *, finalize: bool = True, metadata: dict | None = None) -> list[ShardEntry]:
        """Seal the open shard; write this writer's part list, and the manifest when ``finalize``."""
        self._seal()
        part = {"tokenizer": asdict(self.tokenizer), "dtype": self.dtype.name,
                "shards": [asdict(e) for e in self.entries]}
        atomic_write(self.folder / f"{self.prefix}.part.json", json.dumps(part))
        if finalize:
            finalize_source(self.folder, metadata=metadata)
        return self.entries

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._fh is not None:  # leave no half shard behind; finished shards stay
            self._fh.close()
            (self.folder / f"{self._name}.bin.tmp").unlink(missing_ok=True)


def finalize_source(folder: str | Path, *, metadata: dict | None = None) -> Manifest:
    """Join every writer's part list in ``folder`` into ``manifest.json`` (written atomically, last)."""
    folder = Path(folder)
    parts = sorted(folder.glob("*.part.json"))
    if not parts:
        raise FileNotFoundError(f"{folder}: no *.part.json written by a ShardWriter")
    tokenizer, dtype, shards = None, None, []
    for part_path in parts:
        part = json.loads(part_path.read_text())
        info = TokenizerInfo(**part["tokenizer"])
        if tokenizer is not None and info != tokenizer:
            raise ValueError(f"{part_path}: tokenizer {info} differs from {tokenizer} in the same source")
        tokenizer, dtype = info, part["dtype"]
        shards += [ShardEntry(**s) for s in part["shards"]]
    manifest = Manifest(tokenizer=tokenizer, dtype=dtype, shards=shards, metadata=metadata or {})
    atomic_write(folder / MANIFEST, json.dumps(manifest.to_json(), indent=2))
    return manifest


class TokenSource:
    """Read-only view of a source as one token stream, cut into windows of ``seq_len`` tokens."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        # the source's identity in a checkpoint: a re-run that rewrote it (new selection, new tokenizer) differs
        self.manifest_sha256 = hashlib.sha256((self.folder / MANIFEST).read_bytes()).hexdigest()
        self.dtype = np.dtype(self.manifest.dtype)
        shards = [s for s in self.manifest.shards if s.tokens > 0]
        self._names = [s.name for s in shards]
        self._offsets = np.cumsum([0] + [s.tokens for s in shards], dtype=np.int64)
        self._tokens: list[np.ndarray | None] = [None] * len(shards)
        self._starts: list[np.ndarray | None] = [None] * len(shards)

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[-1])

    @property
    def tokenizer(self) -> TokenizerInfo:
        return self.manifest.tokenizer

    @property
    def language_tokens(self) -> dict[str, int] | None:
        """Tokens per language as the source's writer recorded them (None: not recorded)."""
        from arctic_pretrain.data.languages import language_tokens

        return language_tokens(self.manifest)

    def num_windows(self, seq_len: int) -> int:
        return self.num_tokens // seq_len

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens[i] is None:
            name = self._names[i]
            self.check_shard_files(i)
            tokens = np.memmap(self.folder / f"{name}.bin", dtype=self.dtype, mode="r")
            # starts first, tokens (the "opened" flag) last: a reader on another thread (the prefetcher's)
            # never sees a half-opened shard; two threads opening it at once map the same files
            self._starts[i] = np.load(self.folder / f"{name}.idx.npy", mmap_mode="r")
            self._tokens[i] = tokens
        return self._tokens[i], self._starts[i]

    def check_shard_files(self, i: int) -> None:
        """Shard ``i``'s files exist and their sizes match the manifest; the error names the file."""
        name, expected = self._names[i], int(self._offsets[i + 1] - self._offsets[i])
        path = self.folder / f"{name}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (listed in {self.folder / MANIFEST})")
        size, width = path.stat().st_size, self.dtype.itemsize
        if size % width:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {self.dtype.name} tokens "
                             f"({width} bytes each): the file is truncated or was not written by ShardWriter")
        if size // width != expected:
            raise ValueError(f"{path}: holds {size // width} tokens, {MANIFEST} says {expected} "
                             "(truncated or replaced after the manifest was written)")
        idx = self.folder / f"{name}.idx.npy"
        try:
            starts = np.load(idx, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{idx}: unreadable document index ({err})") from None
        if starts.ndim != 1 or len(starts) < 1 or int(starts[-1]) != expected:
            raise ValueError(f"{idx}: document index does not end at the shard's {expected} tokens")

    def verify(self, sample_windows: int = 4, seed: int = 0) -> None:
        """Everything a run needs before its first step, with the file named in any error: every shard's
        files exist with the manifest's sizes, and token ids on a sample of windows (first, last and
        random ones per shard) lie inside the tokenizer's vocabulary."""
        rng = np.random.default_rng(seed)
        vocab = self.tokenizer.vocab_size
        for i, name in enumerate(self._names):
            self.check_shard_files(i)
            tokens = np.memmap(self.folder / f"{name}.bin", dtype=self.dtype, mode="r")
            span = min(4096, tokens.size)
            starts = {0, tokens.size - span, *rng.integers(0, tokens.size - span + 1, sample_windows).tolist()}
            for start in sorted(starts):
                top = int(tokens[start:start + span].max())
                if top >= vocab:
                    raise ValueError(f"{self.folder / (name + '.bin')}: token id {top} near token {start} is outside "
                                     f"the vocabulary of {vocab} in {self.folder / MANIFEST} (tokenizer "
                                     f"{self.tokenizer.name}): the manifest's tokenizer is not the one that "
                                     "wrote these ids")

    def read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``[start, start+length)`` of the stream and, for each, its position in its document
        counted from the window start (so positions restart at 0 at every document start)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"{self.folder}: range [{start}, {start + length}) outside {self.num_tokens} tokens")
        pieces, doc_starts = [], [0]
        pos, end = start, start + length
        shard = int(np.searchsorted(self._offsets, start, side="right") - 1)
        while pos < end:
            tokens, starts = self._shard(shard)
            base = int(self._offsets[shard])
            lo, hi = pos - base, min(end, int(self._offsets[shard + 1])) - base
            pieces.append(np.asarray(tokens[lo:hi], dtype=np.int64))
            first = int(np.searchsorted(starts, lo, side="left"))
            last = int(np.searchsorted(starts, hi, side="left"))
            doc_starts.extend((np.asarray(starts[first:last], dtype=np.int64) + base - start).tolist())
            pos = base + hi
            shard += 1
        ids = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        boundaries = np.unique(np.asarray(doc_starts, dtype=np.int64))
        seg = np.searchsorted(boundaries, np.arange(length), side="right") - 1
        positions = np.arange(length, dtype=np.int64) - boundaries[seg]
        return ids, positions

    def window(self, index: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``index``-th non-overlapping window of ``seq_len`` tokens."""
        return self.read(index * seq_len, seq_len)
