"""Exact (content hash) and near (MinHash LSH) deduplication across all workers.

Both keep the first copy in input order: the (rank, index) order of the curate stage, whose ranks read
contiguous blocks of the planned inputs.

Exact: every task writes (hash, index) pairs for its documents, split into ``shards`` by hash; find task
``t`` sorts shard ``t`` of every rank (a sharded merge: no task holds more than 1/shards of the hashes)
and writes, per rank, the indices to drop. Near: our own signature step feeds datatrove's bucket and
filter stages unchanged; its stock signature stage splits words with spaCy (97% of its time on code,
docs/architecture.md), while code needs no linguistics, so tokens here are runs of identifier characters or of
operator characters, found and hashed with numpy over the UTF-8 bytes. Its cluster stage unions by size,
so the kept root can be a later copy: ``KeepFirstCluster`` replaces it and keeps each cluster's smallest
(rank, index).

Exact duplicates are removed before signatures are computed, so a near-dup cluster never keeps a copy
the exact stage dropped (which could otherwise remove every copy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    SENTINEL,
    MinhashConfig,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from loguru import logger

from arctic_pretrain.text.steps import count_in, count_out, nbytes


@dataclass
class DedupConfig:
    """Exact (content hash) then near (MinHash LSH over code-token 5-grams) deduplication."""

    exact: bool = True
    near: bool = True
    ngram: int = 5  # recipe: 5-grams
    num_bands: int = 25  # recipe: 25 bands x 10 rows = 250 permutations
    rows_per_band: int = 10  # recipe
    # recipe: Jaccard 0.7. LSH has no explicit threshold: bands x rows set it, at about
    # (1/bands)^(1/rows) (0.72 for 25 x 10); validation requires the two to agree within 0.05
    threshold: float = 0.7
    seed: int = 1  # permutation parameters; identical on every worker
    workers_per_band: int = 1  # datatrove bucket stage parallelism (tasks = bands x this)
    exact_shards: int = 0  # ours: hash shards (= parallel tasks) of the exact-dedup find stage; 0: executor.tasks

_M64 = (1 << 64) - 1
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible mod 2^64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_Q = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant, combines token hashes into a shingle
_CLASS = np.zeros(256, dtype=np.int8)  # 0 space/control, 1 identifier or number, 2 operator/punctuation
for _b in range(33, 127):
    _CLASS[_b] = 1 if chr(_b).isalnum() or chr(_b) == "_" else 2
_CLASS[128:] = 1  # UTF-8 multi-byte characters belong to identifiers (non-ASCII names, strings)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    """datatrove's config for our bands: 32-bit hashes, ``num_bands`` buckets of ``rows_per_band``."""
    return MinhashConfig(n_grams=cfg.ngram, num_buckets=cfg.num_bands, hashes_per_bucket=cfg.rows_per_band,
                         seed=cfg.seed, hash_config=HashConfig(precision=32, hash_fc="sha1"))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)  # wraps mod 2^64, as intended


_POW: dict[str, np.ndarray] = {"p": np.ones(1, dtype=np.uint64), "inv": np.ones(1, dtype=np.uint64)}


def _cached_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i for i < n, grown by doubling and kept per process (computed once, not per file)."""
    if _POW["p"].size < n:
        size = max(n, 2 * _POW["p"].size, 1 << 16)
        _POW["p"], _POW["inv"] = _powers(_P, size), _powers(_P_INV, size)
    return _POW["p"][:n], _POW["inv"][:n]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial hashes' bits before multiply-shift hashing."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def code_token_hashes(text: str) -> np.ndarray:
    """64-bit hash of every code token (identifier/number run or operator run), whitespace skipped."""
    raw = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    cls = _CLASS[raw]
    edge = np.empty(raw.size + 1, dtype=bool)
    edge[0] = edge[-1] = True
    np.not_equal(cls[1:], cls[:-1], out=edge[1:-1])
    bounds = np.flatnonzero(edge)
    starts, ends = bounds[:-1], bounds[1:]
    keep = cls[starts] != 0
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    pw, inv = _cached_powers(raw.size)
    with np.errstate(over="ignore"):
        prefix = np.zeros(raw.size + 1, dtype=np.uint64)
        np.cumsum(raw * pw, dtype=np.uint64, out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * inv[starts]


def code_shingles(text: str, n: int) -> np.ndarray:
    """Unique hashed n-grams of code tokens (a file shorter than n tokens is one shingle)."""
    toks = code_token_hashes(text)
    if toks.size == 0:
        return toks
    k = max(1, toks.size - n + 1)
    span = min(n, toks.size)
    with np.errstate(over="ignore"):
        sh = np.zeros(k, dtype=np.uint64)
        for j in range(span):
            sh = sh * _Q + toks[j:j + k]
        return np.unique(_mix(sh))


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's stage-1 signature step with code shingles and multiply-shift hashing (no spaCy).

    Writes datatrove's own signature files, so MinhashDedupBuckets/Cluster/Filter run unchanged.
    """

    name = "near dedup: signatures"

    def __init__(self, output_folder: str, cfg: DedupConfig) -> None:
        PipelineStep.__init__(self)  # skip the parent's spaCy word-tokenizer set-up
        from datatrove.io import get_datafolder

        self.output_folder = get_datafolder(output_folder)
        self.config = minhash_config(cfg)
        self.num_hashes = self.config.num_buckets * self.config.hashes_per_bucket
        self.skip_existing_sigs = False
        self.language = "code"
        rng = np.random.default_rng(cfg.seed)
        self._a = (rng.integers(0, 1 << 63, self.num_hashes, dtype=np.uint64) * np.uint64(2) + np.uint64(1))[:, None]
        self._b = rng.integers(0, 1 << 63, self.num_hashes, dtype=np.uint64)[:, None]

    def get_shingles(self, text: str) -> np.ndarray:
        return code_shingles(text, self.config.n_grams)

    def signature(self, shingles: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Min over shingles of the top 32 bits of (a*x + b) mod 2^64, for every permutation.

        The shift is monotonic, so the minimum is taken on the 64-bit values and shifted once; the
        products go to one reused buffer (three passes over memory per chunk)."""
        best = np.full(self.num_hashes, np.iinfo(np.uint64).max, dtype=np.uint64)
        buf = np.empty((self.num_hashes, min(chunk, max(1, shingles.size))), dtype=np.uint64)
        for lo in range(0, shingles.size, chunk):
            x = shingles[None, lo:lo + chunk]
            h = buf[:, : x.shape[1]]
            np.multiply(self._a, x, out=h)
            np.add(h, self._b, out=h)
            np.minimum(best, h.min(axis=1), out=best)
        return (best >> np.uint64(32)).astype(np.uint32)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        sig = self.signature(shingles.reshape(-1))
        return [part.tolist() for part in np.split(sig, self.config.num_buckets)]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from super().run(count_in(self, data), rank, world_size) or ()


_INDEX = (SENTINEL, SENTINEL)


class KeepFirstCluster(MinhashDedupCluster):
    """datatrove's stage-3 clustering, with each cluster's root its first document in (rank, index) order.

    datatrove unions by size, so a cluster that grew around a later copy keeps that copy (e.g. three
    Python versions' wave.py: the middle one survived). Here the smaller node always becomes the root;
    the output files (``<rank>.remove``, ascending) are datatrove's, read by ``NearDedupFilter``."""

    name = "near dedup: clusters"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import struct

        assert world_size == 1, "clustering runs as one task"
        dup_files = self.input_folder.list_files(glob_pattern="*.dups")
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(x: tuple[int, int]) -> tuple[int, int]:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        with self.track_time():
            for dup_file in dup_files:
                with self.input_folder.open(dup_file, "rb") as fh:
                    for f1, d1, f2, d2 in read_tuples_from_file(fh, "4I", lines_to_buffer=self.lines_to_buffer):
                        a, b = find((f1, d1)), find((f2, d2))
                        if a != b:  # an index match (the sentinel) removes the whole cluster
                            keep, drop = (a, b) if a == _INDEX or (b != _INDEX and a < b) else (b, a)
                            parent.setdefault(keep, keep)
                            parent[drop] = keep
            with self.output_folder.get_output_file_manager(mode="wb") as out:
                for node in sorted(parent):
                    self.stat_update("duplicates")
                    if node != find(node) and node != _INDEX:
                        out.write(f"{node[0]:06d}.remove", struct.pack("<I", node[1]))
                        self.stat_update("to_remove")
        yield from ()


class NearDedupFilter(MinhashDedupFilter):
    """datatrove's stage-4 filter plus the funnel's byte counters."""

    name = "near dedup: filter"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from count_out(self, super().run(count_in(self, data), rank, world_size))


def content_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")


class ExactHashes(PipelineStep):
    """Record each document's content hash and stream position, split into hash shards for ExactDedupFind."""

    type = "🫂 - DEDUP"
    name = "exact dedup: hashes"

    def __init__(self, folder: str, shards: int = 1) -> None:
        super().__init__()
        self.folder, self.shards = folder, shards

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from array import array

        hashes = array("Q")
        for doc in data:
            with self.track_time():
                hashes.append(content_hash(doc.text))
            yield doc
        h = np.frombuffer(hashes, dtype=np.uint64) if hashes else np.zeros(0, dtype=np.uint64)
        idx = np.arange(h.size, dtype=np.uint64)
        shard = h % np.uint64(self.shards)
        out = Path(self.folder)
        for t in range(self.shards):
            folder = out / f"shard-{t:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            sel = shard == t
            tmp = folder / f"{rank:05d}.tmp.npy"
            np.save(tmp, np.stack([h[sel], idx[sel]]))
            tmp.replace(folder / f"{rank:05d}.hashes.npy")


class ExactDedupFind(PipelineStep):
    """Task ``t``: sort hash shard ``t`` of every rank by (hash, rank, index); all but the first of each hash
    go to ``shard-<t>/<rank>.remove.npy``. Run with ``shards`` tasks."""

    type = "🫂 - DEDUP"
    name = "exact dedup: find"

    def __init__(self, folder: str, world_size: int, shards: int = 1) -> None:
        super().__init__()
        self.folder, self.ranks, self.shards = folder, world_size, shards

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = Path(self.folder) / f"shard-{rank:04d}"
        with self.track_time("run"):
            parts, ranks = [], []
            for r in range(self.ranks):
                path = folder / f"{r:05d}.hashes.npy"
                hi = np.load(path) if path.is_file() else np.zeros((2, 0), dtype=np.uint64)
                parts.append(hi)
                ranks.append(np.full(hi.shape[1], r, dtype=np.uint32))
            (h, ix), rk = np.concatenate(parts, axis=1), np.concatenate(ranks)
            order = np.lexsort((ix, rk, h))
            h, rk, ix = h[order], rk[order], ix[order]
            dup = np.zeros(h.size, dtype=bool)
            dup[1:] = h[1:] == h[:-1]
            self.stat_update("documents", value=int(h.size))
            self.stat_update("duplicates", value=int(dup.sum()))
            folder.mkdir(parents=True, exist_ok=True)
            for r in range(self.ranks):
                remove = np.sort(ix[dup & (rk == r)]).astype(np.uint64)
                tmp = folder / f"{r:05d}.remove.tmp.npy"
                np.save(tmp, remove)
                tmp.replace(folder / f"{r:05d}.remove.npy")
            logger.info(f"exact dedup shard {rank}: {int(dup.sum())} duplicates among {h.size} documents")
        yield from ()


class ExactDedupFilter(PipelineStep):
    """Drop this rank's exact duplicates by stream position (the stream must be the hashed one)."""

    type = "🫂 - DEDUP"
    name = "exact dedup: filter"

    def __init__(self, folder: str, enabled: bool = True) -> None:
        super().__init__()
        self.folder, self.enabled = folder, enabled

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        remove: set[int] = set()
        if self.enabled:
            for path in sorted(Path(self.folder).glob(f"shard-*/{rank:05d}.remove.npy")):
                remove.update(np.load(path).tolist())
        for i, doc in enumerate(data):
            self.stat_update("in_docs")
            self.stat_update("in_bytes", value=nbytes(doc))
            if i in remove:
                self.stat_update("dropped_exact_duplicate")
                continue
            self.stat_update("out_docs")
            self.stat_update("out_bytes", value=nbytes(doc))
            yield doc


class RankReader(PipelineStep):
    """Read back the JSONL this rank wrote in an earlier stage, in the same order (indices must align)."""

    type = "📖 - READER"
    name = "read curated stream"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield Document(text=rec["text"], id=rec["id"], metadata=rec.get("metadata", {}))
