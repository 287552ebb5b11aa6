"""The synthesis run: seeds -> requests -> replies appended per seed -> corpus checks -> token source.

    <output_dir>/
      config.json              what the generations depend on; a rerun with other values is refused
      generations/<w>.jsonl    one record per seed id, appended as replies arrive (worker w's seeds)
      verdicts.jsonl           the final verdict of every seed (after dedup and decontamination)
      decontamination.jsonl    benchmark matches found in replies
      runs.jsonl               one line per invocation: wall time, requests, requests/s, retries
      synthesis.json           counts requested / generated / kept, rejected by reason, tokens, rates
      synthetic-*.bin/.idx.npy, manifest.json    the token source training reads (manifest written last)

Resume: finished seed ids are read back from generations/ and skipped, so a kill loses at most the
requests in flight and never writes a seed twice (a line torn by the kill is cut off first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

from arctic_pretrain.common.config import ConfigError, StageIncomplete
from arctic_pretrain.common.io import atomic_write, read_jsonl
from arctic_pretrain.data.shards import MANIFEST, finalize_source
from arctic_pretrain.synthesize.config import SynthesizeConfig, validate
from arctic_pretrain.synthesize.engines import Reply, build_engine
from arctic_pretrain.synthesize.filters import corpus_verdicts, tokenize
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


def read_records(gens: Path, repair: bool = False) -> list[dict]:
    """Every complete record in generations/ (file order); with ``repair``, a torn last line (a kill
    mid-write) is cut off so that appending continues on a line boundary."""
    records = []
    for path in sorted(gens.glob("*.jsonl")):
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and repair:
            log.warning("%s: cutting a torn last line (%d bytes) left by a kill", path, len(data) - end)
            with open(path, "r+b") as fh:
                fh.truncate(end)
        records += [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records


class Recorder:
    """Appends one JSON line per finished seed to its worker's file (flushed at once)."""

    def __init__(self, cfg: SynthesizeConfig, template: PromptTemplate, gens: Path, model: str) -> None:
        self.cfg, self.template, self.gens, self.model = cfg, template, gens, model
        self.files: dict[int, object] = {}
        self.counts: Counter = Counter()
        self.tokens = 0
        self.bar = None

    def _file(self, worker: int):
        if worker not in self.files:
            self.files[worker] = open(self.gens / f"{worker:05d}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        return self.files[worker]

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
        fh = self._file(worker_of(seed.id, self.cfg.workers.num_workers))
        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def generate(cfg: SynthesizeConfig, out: Path, selection: Selection, template: PromptTemplate) -> dict:
    """Send every unfinished seed of this worker (or all workers) and record the replies."""
    gens = out / "generations"
    gens.mkdir(parents=True, exist_ok=True)
    done_ids = {r["id"] for r in read_records(gens, repair=True)}
    w = cfg.workers
    workers = [w.worker] if w.worker is not None else list(range(w.num_workers))
    quotas = selection.quotas(cfg.seeding)
    seed_counts: dict = {}

    def seeds():
        for worker in workers:
            yield from selection.seeds(cfg.seeding, done_ids, worker, w.num_workers, counts=seed_counts)

    engine = build_engine(cfg, template)
    rec = Recorder(cfg, template, gens, cfg.backend.model)
    t0 = time.perf_counter()
    try:
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
    """Corpus checks on every reply, tokenize the kept ones, write synthesis.json, manifest last."""
    records, seen, duplicates = [], set(), 0
    for r in read_records(out / "generations"):
        if r["id"] in seen:
            duplicates += 1  # never expected; counted so that a test can assert it
            continue
        seen.add(r["id"])
        records.append(r)
    records.sort(key=lambda r: (-(r["seed"].get("score") or 0.0), r["id"]))
    candidates = [r for r in records if r["verdict"] == "kept"]
    final = corpus_verdicts(candidates, cfg.filter, out / "decontamination.jsonl")
    verdicts = {r["id"]: final.get(r["id"], r["verdict"]) for r in records}
    atomic_write(out / "verdicts.jsonl", "".join(json.dumps({"id": k, "verdict": v}) + "\n"
                                                 for k, v in verdicts.items()))
    (out / MANIFEST).unlink(missing_ok=True)  # the source is incomplete until the new manifest is written
    for old in [*out.glob("synthetic-*"), *out.glob("*.part.json")]:
        old.unlink()
    kept = [r for r in records if verdicts[r["id"]] == "kept"]
    tokenizer = cfg.tokenizer or str(selection.curated / "tokenizer")
    info, counts, language_tokens = tokenize(((r["language"], r["document"]) for r in kept), tokenizer, out,
                                             cfg.shard_tokens)
    rejected = Counter(v for v in verdicts.values() if v != "kept")
    by_lang: dict[str, Counter] = {}
    for r in records:
        by_lang.setdefault(r["language"], Counter())[verdicts[r["id"]]] += 1
    wall = sum(r["wall_s"] for r in runs)
    requests = sum(sum(r["verdicts"].values()) for r in runs)
    summary = {
        "seeds": str(Path(cfg.seeds).resolve()), "model": cfg.backend.model, "template": cfg.prompt.template,
        "requested": sum(selection.available(cfg.seeding).values()), "generated": len(records),
        "kept": len(kept), "rejected": dict(sorted(rejected.items())), "duplicate_records": duplicates,
        "tokens_kept": counts["tokens"], "documents_kept": counts["documents"],
        "tokens_by_language": dict(sorted(language_tokens.items())),
        "by_language": {k: dict(v) for k, v in sorted(by_lang.items())},
        "generated_tokens": sum(r.get("completion_tokens") or 0 for r in records),
        "wall_s": round(wall, 2), "requests": requests,
        "requests_per_s": round(requests / wall, 2) if wall else None,
        "runs": len(runs), "tokenizer": dataclasses.asdict(info),
    }
    atomic_write(out / "synthesis.json", json.dumps(summary, indent=2))
    finalize_source(out, metadata={"stage": "synthesize", "model": cfg.backend.model,
                                   "template": cfg.prompt.template, "kept": len(kept),
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
    runs = read_jsonl(out / "runs.jsonl")
    return finalize(cfg, out, selection, runs)


__all__ = ["output_dir", "run"]
