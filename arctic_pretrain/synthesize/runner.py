"""The synthesis run: seeds -> requests -> replies appended per seed -> corpus checks -> token source.

    <output_dir>/
      config.json              what the generations depend on; a rerun with other values is refused
      generations/<w>.jsonl    one record per seed id, appended as replies arrive (worker w's seeds)
      verdicts.jsonl           the final verdict of every seed (after dedup and decontamination)
      decontamination.jsonl    benchmark matches found in replies
      runs.jsonl               one line per invocation: wall time, requests, requests/s, retries
      synthesis.json           counts requested / generated / kept, rejected by reason, tokens, rates
      synthetic-*.bin/.idx.npy, manifest.json    the token source training reads (manifest written last)

Resume: each worker reads back the finished seed ids of its own file(s) only (generations.py: locked,
a line torn by a kill cut off first) and skips them, so a kill loses at most the requests in flight and
never writes a seed twice. Start and finish stream the records: memory does not grow with them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from arctic_pretrain.common.config import ConfigError, StageIncomplete
from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.data.shards import MANIFEST, finalize_source
from arctic_pretrain.synthesize.config import SynthesizeConfig, validate
from arctic_pretrain.synthesize.engines import Reply, build_engine
from arctic_pretrain.synthesize.filters import CorpusChecks, tokenize
from arctic_pretrain.synthesize.generations import DoneIds, Index, open_own
from arctic_pretrain.synthesize.parse import judge
from arctic_pretrain.synthesize.prompts import PromptTemplate
from arctic_pretrain.synthesize.seeds import Seed, Selection, worker_of

log = logging.getLogger(__name__)


def output_dir(cfg: SynthesizeConfig) -> Path:
    """``output_dir`` or the seeds folder's sibling ``synthetic``: with seeds at ``<data.root>/high_quality``
    that is ``<data.root>/synthetic``, where conf/train/data/snowcoder.yaml reads the synthetic source."""
    return Path(cfg.output_dir) if cfg.output_dir else Path(cfg.seeds).resolve().parent / "synthetic"


def identity(cfg: SynthesizeConfig) -> dict:
    """What the stored generations depend on (a server's URL, concurrency or retries may change)."""
    return {"seeds": str(Path(cfg.seeds).resolve()), "seeding": dataclasses.asdict(cfg.seeding),
            "prompt": dataclasses.asdict(cfg.prompt), "sampling": dataclasses.asdict(cfg.sampling),
            "model": cfg.backend.model, "endpoint": cfg.backend.endpoint if cfg.backend.kind != "transformers" else None,
            "num_workers": cfg.workers.num_workers}


def check_identity(out: Path, cfg: SynthesizeConfig) -> None:
    path, ident = out / "config.json", identity(cfg)
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in ident if old.get(k) != ident[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"output_dir={str(out)!r} holds generations made with another {k} "
                              f"({old.get(k)!r}, now {ident[k]!r}); use a new output_dir")
    else:
        atomic_write(path, json.dumps(ident, indent=2))


def read_runs(out: Path) -> list[dict]:
    """The lines of runs.jsonl (one per invocation); a line torn by a kill is skipped."""
    runs = []
    for line in (out / "runs.jsonl").read_text().splitlines() if (out / "runs.jsonl").is_file() else []:
        try:
            runs.append(json.loads(line))
        except ValueError:
            log.warning("%s: skipping a torn line", out / "runs.jsonl")
    return runs


class Recorder:
    """Appends one JSON line per finished seed to its worker's file (flushed at once)."""

    def __init__(self, cfg: SynthesizeConfig, template: PromptTemplate, files: dict[int, BinaryIO],
                 model: str) -> None:
        self.cfg, self.template, self.files, self.model = cfg, template, files, model
        self.counts: Counter = Counter()
        self.tokens = 0
        self.bar = None

    def __call__(self, seed: Seed, reply: Reply) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if reply.gave_up:
            self.counts[f"gave_up:{reply.gave_up}"] += 1
            return
        f = self.cfg.filter
        if reply.error is not None:
            verdict, document, syntax = "request_error", None, None
        else:
            text = reply.prefill + reply.text if reply.text.strip() else ""  # a prefill alone is an empty reply
            v = judge(text, reply.finish_reason, self.template.format, seed.language,
                      seed.file_text, reject_truncated=f.truncated == "reject", syntax=f.syntax,
                      seed_copy=f.seed_copy, min_chars=f.min_chars)
            verdict, document, syntax = v.verdict, v.document, v.syntax
        self.counts[verdict] += 1
        self.tokens += reply.completion_tokens or 0
        s = self.cfg.sampling
        rec = {"id": seed.id, "seed": seed.record(), "language": seed.language,
               "template": {"name": self.template.name, "sha256": self.template.sha256, "format": self.template.format},
               "model": self.model, "sampling": {"max_tokens": s.max_tokens, "temperature": s.temperature,
                                                 "top_p": s.top_p, "seed": s.seed},
               "output": reply.text, "prefill": reply.prefill, "finish_reason": reply.finish_reason,
               "completion_tokens": reply.completion_tokens, "attempts": reply.attempts, "error": reply.error,
               "document": document, "syntax_ok": syntax, "verdict": verdict}
        fh = self.files[worker_of(seed.id, self.cfg.workers.num_workers)]
        fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def generate(cfg: SynthesizeConfig, out: Path, selection: Selection, template: PromptTemplate) -> dict:
    """Send every unfinished seed of this worker (or all workers) and record the replies."""
    gens = out / "generations"
    gens.mkdir(parents=True, exist_ok=True)
    w = cfg.workers
    workers = [w.worker] if w.worker is not None else list(range(w.num_workers))
    files: dict[int, BinaryIO] = {}
    ids = []
    try:
        for worker in workers:  # this process's own files only: other workers may be appending to theirs
            files[worker], done = open_own(gens, worker)
            ids.append(np.frombuffer(done, dtype=np.uint64))
    except BaseException:
        for fh in files.values():
            fh.close()
        raise
    done_ids = DoneIds(np.concatenate(ids) if ids else np.empty(0, np.uint64))
    quotas = selection.quotas(cfg.seeding)
    seed_counts: dict = {}

    def seeds():
        for worker in workers:
            yield from selection.seeds(cfg.seeding, done_ids, worker, w.num_workers, counts=seed_counts)

    rec = Recorder(cfg, template, files, cfg.backend.model)
    t0 = time.perf_counter()
    try:
        engine = build_engine(cfg, template)
        if cfg.progress:
            from tqdm import tqdm

            rec.bar = tqdm(desc="synthesize", unit="seed", total=None, mininterval=2.0)
        engine.run(seeds(), rec)
    finally:
        rec.close()
        if rec.bar is not None:
            rec.bar.close()
    wall = time.perf_counter() - t0
    requests = sum(rec.counts.values())
    run = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "backend": engine.name, "workers": workers,
           "skipped_done": len(done_ids), "finished": requests - sum(v for k, v in rec.counts.items()
                                                                     if k.startswith("gave_up")),
           "verdicts": dict(rec.counts), "wall_s": round(wall, 3),
           "requests_per_s": round(requests / wall, 2) if wall else None,
           "generated_tokens": rec.tokens, "generated_tokens_per_s": round(rec.tokens / wall, 1) if wall else None,
           "client": getattr(engine, "stats", {}), "quotas": quotas, "seed_counts": seed_counts}
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(run) + "\n")
    return run


def finalize(cfg: SynthesizeConfig, out: Path, selection: Selection, runs: list[dict]) -> Path:
    """Corpus checks on every reply in seed order, tokenize the kept ones, write synthesis.json, manifest
    last. One streaming pass over an on-disk index of generations/: memory does not grow with the records."""
    (out / MANIFEST).unlink(missing_ok=True)  # the source is incomplete until the new manifest is written
    for old in [*out.glob("synthetic-*"), *out.glob("*.part.json")]:
        old.unlink()
    index = Index(out / "generations", out / ".finish-index.sqlite")
    verdicts_tmp = out / f".verdicts.jsonl.tmp{os.getpid()}"
    rejected, by_lang, kept, generated_tokens = Counter(), {}, 0, 0

    def documents(checks: CorpusChecks, vout) -> Iterator[tuple[str, str]]:
        nonlocal kept, generated_tokens
        for sid, file, offset, verdict, language, tokens in index:
            document = None
            if verdict == "kept":
                document = index.record(file, offset)["document"]
                verdict = checks.verdict(sid, document)
            vout.write(json.dumps({"id": sid, "verdict": verdict}) + "\n")
            by_lang.setdefault(language, Counter())[verdict] += 1
            generated_tokens += tokens
            if verdict != "kept":
                rejected[verdict] += 1
                continue
            kept += 1
            yield language, document

    tokenizer = cfg.tokenizer or str(selection.curated / "tokenizer")
    try:
        with CorpusChecks(cfg.filter, out / "decontamination.jsonl") as checks, open(verdicts_tmp, "w") as vout:
            info, counts, language_tokens = tokenize(documents(checks, vout), tokenizer, out, cfg.shard_tokens)
        os.replace(verdicts_tmp, out / "verdicts.jsonl")
    finally:
        verdicts_tmp.unlink(missing_ok=True)
        index.close()
    wall = sum(r["wall_s"] for r in runs)
    requests = sum(sum(r["verdicts"].values()) for r in runs)
    summary = {
        "seeds": str(Path(cfg.seeds).resolve()), "model": cfg.backend.model, "template": cfg.prompt.template,
        "requested": sum(selection.available(cfg.seeding).values()), "generated": index.records,
        "kept": kept, "rejected": dict(sorted(rejected.items())), "duplicate_records": index.duplicates,
        "tokens_kept": counts["tokens"], "documents_kept": counts["documents"],
        "tokens_by_language": dict(sorted(language_tokens.items())),
        "by_language": {k: dict(v) for k, v in sorted(by_lang.items())},
        "generated_tokens": generated_tokens, "decontamination": checks.benchmarks(),
        "wall_s": round(wall, 2), "requests": requests,
        "requests_per_s": round(requests / wall, 2) if wall else None,
        "runs": len(runs), "tokenizer": dataclasses.asdict(info),
    }
    atomic_write(out / "synthesis.json", json.dumps(summary, indent=2))
    finalize_source(out, metadata={"stage": "synthesize", "model": cfg.backend.model,
                                   "template": cfg.prompt.template, "kept": kept,
                                   "language_tokens": dict(sorted(language_tokens.items()))})
    return out


def run(cfg: SynthesizeConfig) -> Path:
    """Generate (resuming), then finalize unless this is one worker of several; returns output_dir."""
    validate(cfg)
    selection = Selection.read(cfg.seeds)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    check_identity(out, cfg)
    template = PromptTemplate.load(cfg.prompt)
    this = generate(cfg, out, selection, template)
    gave_up = {k: v for k, v in this["verdicts"].items() if k.startswith("gave_up")}
    if gave_up:
        raise StageIncomplete(f"{sum(gave_up.values())} requests gave up after backend.max_retries="
                              f"{cfg.backend.max_retries} ({gave_up}); finished seeds are kept in {out}/generations: "
                              "rerun the same command to retry the rest")
    if cfg.workers.worker is not None or not cfg.workers.finalize:
        return out
    return finalize(cfg, out, selection, read_runs(out))


__all__ = ["output_dir", "run"]
