"""Step 1: the classifier's training data. Positives from configured sources, negatives drawn at random
from the curated phase-1 ``documents/``; balanced, deduplicated against each other, split with a seed, and
written as Arrow datasets (``training_data/{train,validation}/``, ``datasets.load_from_disk``) for the
training job to read from disk.

The positives go through the curation pipeline's decontamination first: a positive holding a benchmark
item (a quality signal learned from HumanEval would leak it into phase 2) is dropped, counted and named in
``manifest.json``; the run goes on.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from arctic_pretrain.annotate.config import AnnotateConfig, PositiveSource
from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.data.documents import DocumentRef, documents_files, read_document
from arctic_pretrain.text.decontamination import Decontaminate, normalize

logger = logging.getLogger(__name__)
EXACT_SAMPLE_BYTES = 1 << 30  # ours: below 1 GB of documents negatives are drawn exactly; above, by random seeks
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")  # files read as records (fields by name)
SPLITS = ("train", "validation")


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
        for path in sorted(p for p in root.rglob("*") if p.name.endswith(tuple(src.suffixes)) and p.is_file()
                           and "__pycache__" not in p.parts):
            rel = path.relative_to(root).as_posix()
            if path.name.endswith(RECORD_SUFFIXES):  # e.g. a hub dataset's snapshot: its parquet/JSONL files
                records += [{"id": f"{rel}:{i}", **rec} for i, rec in enumerate(_records(path))]
                continue
            try:
                records.append({"content": path.read_text(encoding="utf-8"), "id": rel})
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


def drop_contaminated(examples: list[Example], cfg) -> tuple[list[Example], dict]:
    """The positives without those holding a benchmark item, and the record of what was checked and dropped:
    {benchmarks, unavailable (optional benchmarks that could not load), dropped (per source), matches}."""
    if not cfg.enabled:
        return examples, {"enabled": False}
    finder = Decontaminate(cfg, matches_dir="")
    finder._setup()
    kept, dropped, matches = [], {}, []
    for ex in tqdm(examples, desc="decontaminate positives", unit="example", mininterval=5):
        hits = finder.matches(ex.text)
        if not hits:
            kept.append(ex)
            continue
        dropped[ex.source] = dropped.get(ex.source, 0) + 1
        matches += [{"source": ex.source, "id": ex.id, "benchmark": b.benchmark, "task_id": b.task_id, "kind": kind}
                    for b, kind in hits]
    if dropped:
        logger.warning(f"decontamination: dropped {sum(dropped.values())} contaminated positive(s) {dropped}, e.g. "
                       + "; ".join(f"{m['benchmark']} {m['task_id']} in positives[{m['source']}] example {m['id']!r}"
                                   for m in matches[:3]))
    unavailable = finder.loaded()["unavailable"]
    checked = [b.name for b in cfg.benchmarks if b.name not in unavailable]
    return kept, {"benchmarks": checked, "unavailable": unavailable, "dropped": dropped,
                  "matches": matches[:cfg.max_report_matches]}


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
    """Write ``training_data/{train,validation}/`` (Arrow) and its ``manifest.json`` (last). A folder whose
    manifest records ``config_hash`` is complete and kept, so a resumed training reads the same examples."""

    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path, config_hash: str | None = None) -> None:
        self.cfg, self.documents, self.folder = cfg, curated / "documents", out / "training_data"
        self.config_hash = config_hash

    def run(self) -> dict:
        try:
            done = json.loads((self.folder / "manifest.json").read_text())
        except (OSError, ValueError):
            done = {}
        if self.config_hash and done.get("config_hash") == self.config_hash and \
                all((self.folder / name / "dataset_info.json").is_file() for name in SPLITS):
            logger.info(f"training data: {self.folder} is complete (same config), kept")
            return done
        (self.folder / "manifest.json").unlink(missing_ok=True)
        d = self.cfg.data
        positives, counts = [], {"positives_read": {}, "dropped": {"short": 0, "duplicate": 0, "in_both": 0}}
        for src in self.cfg.positives:
            loaded = load_positives(src, d.seed)
            counts["positives_read"][src.name] = len(loaded)
            positives += loaded
        logger.info(f"positives: {counts['positives_read']}; checking them for benchmark items")
        positives, decontamination = drop_contaminated(positives, self.cfg.decontamination)
        counts["dropped"]["contaminated"] = sum(decontamination.get("dropped", {}).values())
        counts["decontamination"] = decontamination
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
            save_split(self.folder / name, [r.to_json() for r in rows])
        manifest = {**counts, "positives": len(positives), "negatives": len(negatives),
                    **{f"{k}_examples": len(v) for k, v in splits.items()},
                    "positive_sources": {s.name: s.source for s in self.cfg.positives},
                    "config_hash": self.config_hash}
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


def save_split(path: Path, rows: list[dict]) -> None:
    """One split as an Arrow dataset folder, published by rename (a kill leaves no half-written split)."""
    from datasets import Dataset, Features, Value

    features = Features({"text": Value("string"), "label": Value("int8"), "source": Value("string"),
                         "id": Value("string")})
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows, features=features).save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_split(folder: Path, name: str):
    """``training_data/<name>/`` as a ``datasets.Dataset`` (memory-mapped Arrow, not read into memory)."""
    from datasets import load_from_disk

    return load_from_disk(str(folder / name))
