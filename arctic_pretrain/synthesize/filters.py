"""Corpus-level checks on the kept replies, then tokenization into the synthetic token source.

Near-dedup uses the curation pipeline's code-aware MinHash (text/dedup.py: the same shingles,
permutations and bands x rows from DedupConfig); decontamination the curation pipeline's matcher
(text/decontamination.py: benchmark strings, whitespace-free exact substrings, optional n-grams).
Documents are visited in seed order (best phase-2 score first, then id), never in arrival order, so
the kept set does not depend on which request finished first or on a restart.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo
from arctic_pretrain.data.tokenizer import INFO
from arctic_pretrain.synthesize.config import OutputFilterConfig
from arctic_pretrain.text.decontamination import Decontaminate
from arctic_pretrain.text.dedup import CodeMinhashSignature, code_shingles, content_hash


class NearDuplicates:
    """LSH over MinHash bands: a document sharing any band with an earlier one is a near duplicate."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        with tempfile.TemporaryDirectory() as tmp:  # the step wants an output folder; nothing is written
            self.sig = CodeMinhashSignature(tmp, cfg)
        self.seen: list[set[bytes]] = [set() for _ in range(cfg.num_bands)]

    def bands(self, text: str) -> list[bytes]:
        sig = self.sig.signature(code_shingles(text, self.cfg.ngram))
        return [part.tobytes() for part in np.split(sig, self.cfg.num_bands)]

    def is_duplicate(self, text: str) -> bool:
        """True if ``text`` shares a band with a document seen before; either way it is remembered."""
        bands = self.bands(text)
        dup = any(b in seen for b, seen in zip(bands, self.seen, strict=True))
        for b, seen in zip(bands, self.seen, strict=True):
            seen.add(b)
        return dup


class CorpusChecks:
    """Decontamination, then exact and near dedup, one reply at a time in seed order; contamination
    matches go to ``matches_path`` (one JSON line per benchmark task found). Use as a context manager."""

    def __init__(self, cfg: OutputFilterConfig, matches_path: Path) -> None:
        self.cfg = cfg
        self.exact: set[int] = set()
        self.near = NearDuplicates(cfg.dedup) if cfg.dedup.near else None
        d = cfg.decontamination
        self.decontam = Decontaminate(d, str(matches_path.parent)) if d.enabled else None
        self.matches_path = matches_path

    def __enter__(self) -> CorpusChecks:
        self._matches = open(self.matches_path, "w")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc) -> None:
        self._matches.close()

    def verdict(self, sid: str, doc: str) -> str:
        """``kept``, ``contaminated``, ``exact_duplicate`` or ``near_duplicate``."""
        if self.decontam is not None:
            hits = self.decontam.matches(doc)
            if hits:
                for s, kind in hits:
                    self._matches.write(json.dumps({"id": sid, "benchmark": s.benchmark, "task_id": s.task_id,
                                                    "kind": kind}) + "\n")
                return "contaminated"
        if self.cfg.dedup.exact:
            h = content_hash(doc)
            if h in self.exact:
                return "exact_duplicate"
            self.exact.add(h)
        if self.near is not None and self.near.is_duplicate(doc):
            return "near_duplicate"
        return "kept"

    def benchmarks(self) -> dict:
        """The benchmarks matched against (tasks each) and the optional ones that were not available."""
        if self.decontam is None:
            return {}
        return self.decontam.loaded()


def corpus_verdicts(records: Iterable[dict], cfg: OutputFilterConfig, matches_path: Path) -> dict[str, str]:
    """Seed id -> final verdict for every record whose reply passed the per-reply checks (in the given
    order): ``kept``, ``exact_duplicate``, ``near_duplicate`` or ``contaminated``."""
    with CorpusChecks(cfg, matches_path) as checks:
        return {rec["id"]: checks.verdict(rec["id"], rec["document"]) for rec in records}


def load_tokenizer(name: str):
    """(HF tokenizer, identity). A curated ``tokenizer/`` folder carries its identity file, so the
    synthetic source matches the phase-1 sources exactly (training refuses mixed tokenizers)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    info_path = Path(name) / INFO
    if info_path.is_file():
        return tok, TokenizerInfo(**json.loads(info_path.read_text()))
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer={name!r}: has no EOS token to end documents with")
    tj = Path(name) / "tokenizer.json"
    digest = hashlib.sha256(tj.read_bytes()).hexdigest() if tj.is_file() else ""
    return tok, TokenizerInfo(name=name, vocab_size=len(tok), eos_id=tok.eos_token_id, sha256=digest)


def tokenize(documents: Iterable[tuple[str, str]], tokenizer: str, folder: Path, shard_tokens: int,
             batch: int = 256) -> tuple[TokenizerInfo, Counter, Counter]:
    """Write ``documents`` ((language, text) pairs; EOS appended to each) as shards into ``folder``; the
    manifest is not yet written (the caller writes it last, with the run's metadata). Returns the tokenizer,
    the document and token counts, and the tokens per language (the training curriculum's language mix)."""
    tok, info = load_tokenizer(tokenizer)
    counts: Counter = Counter()
    languages: Counter = Counter()
    writer = ShardWriter(folder, info, prefix="synthetic", shard_tokens=shard_tokens)
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        for (language, _), ids in zip(pending, tok([d for _, d in pending], add_special_tokens=False)["input_ids"],
                                      strict=True):
            writer.add_document(ids)
            counts["documents"] += 1
            counts["tokens"] += len(ids) + 1
            languages[language] += len(ids) + 1
        pending.clear()

    for doc in documents:
        pending.append(doc)
        if len(pending) >= batch:
            flush()
    flush()
    writer.close(finalize=False)
    return info, counts, languages
