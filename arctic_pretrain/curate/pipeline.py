"""The curation run as a chain of datatrove stages, each with its own executor and completion markers.

    plan -> curate (read, filters, exact hashes) -> exact (find duplicates) -> signatures -> buckets
         -> clusters -> clean (dedup filters, decontaminate, PII, write documents/) -> tokenizer
         -> tokenize (group by language then repository, shards) -> finalize (manifests, report)

Output folder: ``documents/`` (curated files, JSONL by language), ``tokens/<language>`` (token sources
launch/train.py reads), ``tokenizer/``, ``report.json``, ``funnel.png``; ``work/`` and ``logs/`` hold
intermediate files and datatrove's logs, stats and completion markers (a re-run skips finished tasks).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets
from datatrove.pipeline.writers.jsonl import JsonlWriter
from loguru import logger  # inside datatrove steps only (Finalize): datatrove routes it to the task log
from omegaconf import OmegaConf

from arctic_pretrain.common import config as common_config
from arctic_pretrain.common.config import StageIncomplete
from arctic_pretrain.common.executor import datatrove_executor
from arctic_pretrain.curate import slurm
from arctic_pretrain.curate.config import ConfigError, CurateConfig, validate
from arctic_pretrain.curate.filters import starcoder2_filters
from arctic_pretrain.curate.pii import RedactPII
from arctic_pretrain.curate.readers import PLAN_COUNT, PLAN_SKIPS, PlanInputs, ReadInputs, input_exists
from arctic_pretrain.curate.report import write_report
from arctic_pretrain.data.grouping import AssignBucket, GroupAndTokenize, PrepareTokenizer
from arctic_pretrain.data.shards import finalize_source
from arctic_pretrain.text.decontamination import Decontaminate
from arctic_pretrain.text.dedup import (
    CodeMinhashSignature,
    ExactDedupFilter,
    ExactDedupFind,
    ExactHashes,
    KeepFirstCluster,
    NearDedupFilter,
    RankReader,
    minhash_config,
)

CONFIG_RECORD = "curate_config.json"
# keys that may change between runs on one output folder without changing any result (executor.tasks
# may not: it decides which input goes to which task, and completion markers are per task)
_RUNTIME_KEYS = ("progress",)
_RUNTIME_EXECUTOR_KEYS = ("kind", "workers", "start_method", "slurm", "ray", "wait")

log = logging.getLogger(__name__)  # the driver (run); datatrove steps use loguru


@dataclass
class Job:
    """One datatrove pipeline of a curation, run by one executor with ``tasks`` tasks (a SLURM job array under
    SLURM); the jobs run in order. ("Stage" names the five stages of the recipe only.)"""

    name: str
    pipeline: list[PipelineStep]
    tasks: int


class Finalize(PipelineStep):
    """One task: write every language's manifest, then report.json and the funnel plot."""

    type = "📊 - REPORT"
    name = "finalize"

    def __init__(self, output_dir: str, config_hash: str, max_matches: int) -> None:
        super().__init__()
        self.output_dir, self.config_hash, self.max_matches = output_dir, config_hash, max_matches

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        out = Path(self.output_dir)
        with self.track_time("run"):
            files: dict[str, int] = {}
            for lang_dir in sorted((out / "documents").glob("*/")):
                files[lang_dir.name] = sum(_count_lines(f) for f in lang_dir.glob("*.jsonl"))
            for folder in sorted((out / "tokens").glob("*/")):
                finalize_source(folder, metadata={"language": folder.name, "files": files.get(folder.name, 0),
                                                  "grouping": "language/repository", "curate_config": self.config_hash})
            report = write_report(out, out / "work", self.max_matches, extra={"config_hash": self.config_hash})
        logger.info(f"report: {out / 'report.json'}; tokens per language: "
                    f"{ {k: v['tokens'] for k, v in report['languages'].items()} }")
        yield from ()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def config_hash(cfg: CurateConfig) -> str:
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in _RUNTIME_KEYS:
        data.pop(key, None)
    for key in _RUNTIME_EXECUTOR_KEYS:
        data["executor"].pop(key, None)
    return common_config.config_hash(data, 16)


def check_inputs(cfg: CurateConfig) -> None:
    """Fail before any work when no input exists (a typo, an unmounted disk), naming every path; a missing
    input next to usable ones is only counted (``missing_input``) and named in the log."""
    usable, bad = False, []
    for spec in cfg.inputs:
        if spec.startswith("hf:") or input_exists(spec):
            usable = True
        else:
            bad.append(spec)
    if not usable:
        raise ConfigError(f"inputs={list(cfg.inputs)!r}: no usable input (not found: {', '.join(bad)})")


def _check_plan(cfg: CurateConfig, work: Path) -> None:
    """After planning: an input list that names only empty folders or unreadable files stops here."""
    count = work / PLAN_COUNT
    if count.is_file() and int(count.read_text()) == 0:
        raise ConfigError(f"inputs={list(cfg.inputs)!r}: no file to read (empty folders, or every input skipped: "
                          f"see {work / PLAN_SKIPS})")


def check_output_dir(cfg: CurateConfig) -> str:
    """Refuse to mix two configs' results in one output folder (the completion markers would lie)."""
    out = Path(cfg.output_dir)
    digest = config_hash(cfg)
    record = out / CONFIG_RECORD
    if record.is_file():
        old = json.loads(record.read_text())
        if old["hash"] != digest:
            raise ConfigError(
                f"output_dir={cfg.output_dir!r}: holds a run made with another config (hash {old['hash']}, "
                f"now {digest}); use a new output_dir or delete the old one")
    else:
        out.mkdir(parents=True, exist_ok=True)
        data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        record.write_text(json.dumps({"hash": digest, "config": data}, indent=2))
    return digest


def _encode_threads(cfg: CurateConfig) -> int:
    """Encoding threads per local worker so that workers x threads = cores; 0 (all) elsewhere."""
    e = cfg.executor
    if e.kind != "local":
        return 0
    workers = cfg.group.buckets if e.workers == -1 else min(e.workers, cfg.group.buckets)
    return max(1, (os.cpu_count() or 1) // workers)


def build_stages(cfg: CurateConfig, digest: str = "") -> list[Job]:
    out = Path(cfg.output_dir).resolve()
    work = out / "work"
    tasks = cfg.executor.tasks
    filtered, exact_dir = str(work / "filtered"), str(work / "exact")
    sigs, buckets, remove = str(work / "minhash" / "signatures"), str(work / "minhash" / "buckets"), \
        str(work / "minhash" / "remove")
    documents, tokens, tokenizer = str(out / "documents"), str(out / "tokens"), str(out / "tokenizer")
    mh = minhash_config(cfg.dedup)
    shards = cfg.dedup.exact_shards or tasks
    stages = [
        Job("plan", [PlanInputs(list(cfg.inputs), cfg.read, str(work), tasks, exclude=[str(out)])], 1),
        Job("curate", [ReadInputs(cfg.read, str(work)), *starcoder2_filters(cfg.filter),
                         ExactHashes(exact_dir, shards),
                         JsonlWriter(filtered, output_filename="${rank}.jsonl", compression=None)], tasks),
    ]
    if cfg.dedup.exact:
        stages.append(Job("exact", [ExactDedupFind(exact_dir, tasks, shards)], shards))
    clean = [RankReader(filtered), ExactDedupFilter(exact_dir, enabled=cfg.dedup.exact)]
    if cfg.dedup.near:
        stages += [
            Job("signatures", [RankReader(filtered), ExactDedupFilter(exact_dir, enabled=cfg.dedup.exact),
                                 CodeMinhashSignature(sigs, cfg.dedup)], tasks),
            Job("buckets", [MinhashDedupBuckets(sigs, buckets, config=mh)],
                  cfg.dedup.num_bands * cfg.dedup.workers_per_band),
            Job("clusters", [KeepFirstCluster(buckets, remove, config=mh)], 1),
        ]
        clean.append(NearDedupFilter(remove))
    clean += [Decontaminate(cfg.decontamination, str(work / "decontamination")), RedactPII(cfg.pii),
              AssignBucket(cfg.group.buckets),
              JsonlWriter(documents, output_filename="${language}/g${bucket}-r${rank}.jsonl", compression=None)]
    stages += [
        Job("clean", clean, tasks),
        Job("tokenizer", [PrepareTokenizer(cfg.tokenize, documents, tokenizer)], 1),
        Job("tokenize", [GroupAndTokenize(documents, tokens, tokenizer, cfg.group, cfg.tokenize,
                                            threads=_encode_threads(cfg))], cfg.group.buckets),
        Job("finalize", [Finalize(str(out), digest, cfg.decontamination.max_report_matches)], 1),
    ]
    return stages


def _executor(cfg: CurateConfig, stage: Job, logs: Path, previous):
    return datatrove_executor(cfg.executor, stage.pipeline, stage.tasks, str(logs / stage.name),
                              f"curate-{stage.name}", depends=previous)


def run(cfg: CurateConfig, stage_wall_s: dict[str, float] | None = None) -> Path:
    """Validate, then run (or resume) every stage; returns the output folder. ``stage_wall_s`` (local
    executor) receives each stage's wall-clock seconds, for the throughput benchmark. With the SLURM
    executor the stages are submitted as a chain of jobs (recorded in ``logs/slurm_jobs.json``, ``common.slurm.submitted_jobs``); unless
    ``executor.wait`` is set this returns once they are queued."""
    validate(cfg)
    check_inputs(cfg)
    digest = check_output_dir(cfg)
    out = Path(cfg.output_dir).resolve()
    stages = build_stages(cfg, digest)
    if cfg.executor.kind == "ray":
        _init_ray()
    executors: list = []
    for i, stage in enumerate(stages, 1):
        executor = _executor(cfg, stage, out / "logs", executors[-1] if executors else None)
        executors.append(executor)
        if cfg.executor.kind in ("local", "ray"):
            if cfg.progress:
                log.info(f"[{i}/{len(stages)}] stage {stage.name}: {stage.tasks} task(s)")
            start = time.perf_counter()
            executor.run()
            if stage_wall_s is not None:
                stage_wall_s[stage.name] = time.perf_counter() - start
            missing = executor.get_incomplete_ranks(range(stage.tasks))
            if missing:
                raise StageIncomplete(f"stage {stage.name}: tasks {missing} did not complete; see {out / 'logs' / stage.name}")
            if stage.name == "plan":
                _check_plan(cfg, out / "work")
    if cfg.executor.kind == "slurm":
        jobs = slurm.submit(cfg, stages, executors, out)
        if cfg.executor.wait:
            slurm.wait(stages, executors, jobs, out)
    return out


def _init_ray() -> None:
    """ray.init(): joins the cluster RAY_ADDRESS names (``ray start`` / a Ray job), else starts a local Ray on
    this machine's cores; a caller that already initialised Ray keeps its own."""
    import ray

    if not ray.is_initialized():
        ray.init()
