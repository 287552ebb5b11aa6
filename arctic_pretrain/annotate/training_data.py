"""Step 1: the classifier's training data. Positives from configured sources, negatives drawn at random
from the curated phase-1 ``documents/``; balanced, deduplicated against each other, split with a seed.

The positives go through the curation pipeline's decontamination first: a benchmark item among them
fails the run, naming it (a quality signal learned from HumanEval would leak it into phase 2).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from arctic_pretrain.annotate.config import AnnotateConfig, PositiveSource
from arctic_pretrain.common.config import DataError
from arctic_pretrain.common.io import atomic_write, read_jsonl
from arctic_pretrain.data.documents import DocumentRef, documents_files, read_document
from arctic_pretrain.text.decontamination import Decontaminate, normalize

logger = logging.getLogger(__name__)
EXACT_SAMPLE_BYTES = 1 << 30  # ours: below 1 GB of documents negatives are drawn exactly; above, by random seeks


class ContaminatedPositives(DataError):
    """A positive example contains a benchmark item."""


@dataclass
class Example:
    text: str
    label: int  # 1: positive (high quality), 0: negative (random phase-1 file)
    source: str  # the positive source's name, or "phase1:<language>"
    id: str

    def to_json(self) -> dict:
        return {"text": self.text, "label": self.label, "source": self.source, "id": self.id}


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if path.suffix == ".json":
            data = json.load(fh)
            return data if isinstance(data, list) else list(data.values())
        return [json.loads(line) for line in fh if line.strip()]


def _package_dir(source: str) -> Path:
    spec = importlib.util.find_spec(source[4:])
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {source[4:]!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def load_positives(src: PositiveSource, seed: int) -> list[Example]:
    """Every example of one positive source (a seeded sample of ``limit`` of them)."""
    out: list[Example] = []
    if src.source.startswith("hf:"):
        from datasets import load_dataset

        records = load_dataset(src.source[3:], src.hf_config, split=src.split)
    elif src.source.startswith("pkg:") or Path(src.source).expanduser().is_dir():
        root = _package_dir(src.source) if src.source.startswith("pkg:") else Path(src.source).expanduser()
        records = []
        for path in sorted(p for p in root.rglob("*") if p.suffix in tuple(src.suffixes) and p.is_file()
                           and "__pycache__" not in p.parts):
            try:
                records.append({"content": path.read_text(encoding="utf-8"), "id": path.relative_to(root).as_posix()})
            except (OSError, UnicodeDecodeError):
                continue
    else:
        records = _records(Path(src.source).expanduser())
    for i, rec in enumerate(records):
        missing = [f for f in src.fields if f not in rec]
        if missing:
            raise ValueError(f"positives[{src.name}].fields={list(src.fields)}: record {i} of {src.source} has no "
                             f"{missing} (its fields: {sorted(rec)})")
        text = "\n\n".join(str(rec[f]) for f in src.fields if rec[f])
        out.append(Example(text, 1, src.name, str(rec.get("id", i))))
    if src.limit is not None and len(out) > src.limit:
        out = random.Random(f"{seed}/{src.name}").sample(out, src.limit)
    return out


def check_decontaminated(examples: list[Example], cfg) -> None:
    """Raise ``ContaminatedPositives`` naming the benchmark item(s) found in any positive."""
    if not cfg.enabled:
        return
    finder = Decontaminate(cfg, matches_dir="")
    found = []
    for ex in examples:
        for bench, kind in finder.matches(ex.text):
            found.append(f"{bench.benchmark} {bench.task_id} in positives[{ex.source}] example {ex.id!r} ({kind})")
    if found:
        raise ContaminatedPositives(f"{len(found)} benchmark item(s) among the positives: " + "; ".join(found[:10]))


def sample_negatives(documents_dir: Path, count: int, seed: int, exclude: set[str] = frozenset()
                     ) -> list[tuple[DocumentRef, dict]]:
    """``count`` distinct random curated files. Below ``EXACT_SAMPLE_BYTES`` a uniform sample of every
    line; above, random byte offsets (the line after each offset), so 400B tokens are never scanned."""
    files = documents_files(documents_dir)
    sizes = [f.stat().st_size for f in files]
    rng = random.Random(seed)
    rels = [f.relative_to(documents_dir).as_posix() for f in files]
    if sum(sizes) <= EXACT_SAMPLE_BYTES:
        refs = []
        for rel, f in zip(rels, files, strict=True):
            with open(f, "rb") as fh:
                offset = 0
                for line in fh:
                    refs.append(DocumentRef(rel, offset))
                    offset += len(line)
        refs = [r for r in refs if r.key not in exclude]
        picked = rng.sample(refs, min(count, len(refs)))
        return [(r, read_document(documents_dir, r)) for r in picked]
    seen, out, tries = set(exclude), [], 0
    while len(out) < count and tries < 20 * count:
        tries += 1
        i = rng.choices(range(len(files)), weights=sizes)[0]
        with open(files[i], "rb") as fh:
            pos = rng.randrange(sizes[i])
            fh.seek(pos)
            if pos:
                fh.readline()  # the rest of the line the offset fell in
            offset = fh.tell()
            line = fh.readline() or (fh.seek(0) or fh.readline())
            offset = offset if line and offset < sizes[i] else 0
        ref = DocumentRef(rels[i], offset)
        if ref.key not in seen:
            seen.add(ref.key)
            out.append((ref, json.loads(line)))
    return out


def _digest(text: str) -> str:
    return hashlib.sha1(normalize(text).encode("utf-8", "replace")).hexdigest()


class BuildTrainingData:
    """Write ``training_data/{train,validation}.jsonl`` and its ``manifest.json``."""

    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path) -> None:
        self.cfg, self.documents, self.folder = cfg, curated / "documents", out / "training_data"

    def run(self) -> dict:
        d = self.cfg.data
        positives, counts = [], {"positives_read": {}, "dropped": {"short": 0, "duplicate": 0, "in_both": 0}}
        for src in self.cfg.positives:
            loaded = load_positives(src, d.seed)
            counts["positives_read"][src.name] = len(loaded)
            positives += loaded
        logger.info(f"positives: {counts['positives_read']}; checking them for benchmark items")
        check_decontaminated(positives, self.cfg.decontamination)
        positives = self._dedup(positives, counts)
        rng = random.Random(d.seed)
        if d.max_positives is not None and len(positives) > d.max_positives:
            positives = rng.sample(positives, d.max_positives)
        want = max(1, round(len(positives) * d.negatives_per_positive))
        pos_digests = {_digest(p.text) for p in positives}
        drawn = sample_negatives(self.documents, int(want * 1.2) + 8, d.seed)
        negatives = [Example(rec.get("text", ""), 0, f"phase1:{rec.get('metadata', {}).get('language', '?')}", ref.key)
                     for ref, rec in drawn]
        negatives = self._dedup(negatives, counts)
        both = {_digest(n.text) for n in negatives} & pos_digests
        counts["dropped"]["in_both"] = len(both)
        positives = [p for p in positives if _digest(p.text) not in both]
        negatives = [n for n in negatives if _digest(n.text) not in both][:want]
        if len(negatives) < want:  # a small corpus: keep the classes balanced by cutting positives
            positives = rng.sample(positives, max(1, round(len(negatives) / d.negatives_per_positive)))
        if len(positives) < 2 or len(negatives) < 2:
            raise ValueError(f"training data: {len(positives)} positives and {len(negatives)} negatives after dedup; "
                             f"need at least 2 of each (positives: {[s.name for s in self.cfg.positives]}, "
                             f"documents: {self.documents})")
        splits = {"train": [], "validation": []}
        for group in (positives, negatives):
            group = sorted(group, key=lambda e: (e.source, e.id))
            rng.shuffle(group)
            n_val = max(1, round(len(group) * d.validation_fraction))
            splits["validation"] += group[:n_val]
            splits["train"] += group[n_val:]
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, rows in splits.items():
            rng.shuffle(rows)
            atomic_write(self.folder / f"{name}.jsonl", "".join(json.dumps(r.to_json()) + "\n" for r in rows))
        manifest = {**counts, "positives": len(positives), "negatives": len(negatives),
                    **{f"{k}_examples": len(v) for k, v in splits.items()},
                    "positive_sources": {s.name: s.source for s in self.cfg.positives}}
        atomic_write(self.folder / "manifest.json", json.dumps(manifest, indent=2))
        logger.info(f"training data: {len(positives)} positives, {len(negatives)} negatives -> {self.folder}")
        return manifest

    def _dedup(self, examples: list[Example], counts: dict) -> list[Example]:
        seen, out = set(), []
        for ex in examples:
            if len(ex.text.strip()) < self.cfg.data.min_chars:
                counts["dropped"]["short"] += 1
                continue
            h = _digest(ex.text)
            if h in seen:
                counts["dropped"]["duplicate"] += 1
                continue
            seen.add(h)
            out.append(ex)
        return out


def read_split(folder: Path, name: str) -> list[dict]:
    return read_jsonl(folder / f"{name}.jsonl")
