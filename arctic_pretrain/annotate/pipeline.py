"""The annotation run: train -> score -> select (+ group and tokenize the selection) -> report.

    <output_dir>/training_data/   train/, validation/ (Arrow, datasets.load_from_disk), manifest.json
    <output_dir>/model_checkpoints/  Trainer checkpoints while the classifier trains (a killed job resumes)
    <output_dir>/model/           the classifier (AutoModelForSequenceClassification), metrics.json
    <output_dir>/scores/          one record per curated file, keyed by DocumentRef; manifest.json
    <output_dir>/selected/        <language>.jsonl: the selected files, highest score first
    <output_dir>/all/, python/    phase-2 token sources (training shard format)
    <output_dir>/selection.json   per language: threshold, files, tokens, share, repeats; encoder, positives, metrics
    <output_dir>/report/          scores.png, report.json, report.md
    <output_dir>/manifest.json    what went in, what came out, config hashes (written last)

Each step records the hash of the config it depends on. A complete step with the same hash is
skipped; ``select`` and ``report`` are redone when their config changes (they are cheap); a trained
classifier or finished scores made with another config are never overwritten (ConfigError).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from omegaconf import OmegaConf

from arctic_pretrain.annotate.config import AnnotateConfig, ConfigError, validate
from arctic_pretrain.common.config import StageIncomplete, config_hash
from arctic_pretrain.common.executor import datatrove_executor, local_executor, local_workers
from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.common.slurm import SlurmStep
from arctic_pretrain.data.documents import documents_files

logger = logging.getLogger(__name__)
ORDER = ("train", "score", "select", "report")  # the steps (step=all runs them in this order)


class Outcome(enum.Enum):
    """What ``train`` or ``score`` did: finished here, or handed to SLURM (the jobs after it select, report
    and write the manifest, so ``run`` stops there)."""

    DONE = "done"
    SUBMITTED = "submitted to SLURM"


def _hash(*parts) -> str:
    return config_hash(parts, 16)


def _plain(node) -> object:
    return OmegaConf.to_container(OmegaConf.structured(node), resolve=True)


class Paths:
    def __init__(self, cfg: AnnotateConfig) -> None:
        self.curated = Path(cfg.curated).expanduser().resolve()
        self.out = Path(cfg.output_dir).expanduser().resolve() if cfg.output_dir else self.curated / "high_quality"
        self.documents = self.curated / "documents"
        self.data, self.model, self.scores = self.out / "training_data", self.out / "model", self.out / "scores"
        self.checkpoints = self.out / "model_checkpoints"  # the training job's; removed once model/ is published
        self.logs = self.out / "logs"
        # selected/, all/, python/, selection.json: in out, or in an ablation arm's own folder (select.output_dir)
        self.selection = Path(cfg.select.output_dir).expanduser().resolve() if cfg.select.output_dir else self.out
        self.arm = self.selection != self.out


def stage_hashes(cfg: AnnotateConfig, paths: Paths) -> dict[str, str]:
    train = _hash(str(paths.curated), _plain(cfg.positives), _plain(cfg.data), _plain(cfg.model),
                  _plain(cfg.decontamination))
    score = _hash(train, cfg.executor.tasks)  # tasks decide which byte slice each partial file holds
    select = _hash(score, _plain(cfg.select))
    return {"train": train, "score": score, "select": select, "report": _hash(select, _plain(cfg.report))}


def _recorded(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("config_hash")
    except (OSError, ValueError):
        return None


def curated_settings(curated: Path) -> tuple[dict, dict, int]:
    """(group, tokenize, buckets) of the curation run, so the selection is grouped exactly as phase 1."""
    record = curated / "curate_config.json"
    config = json.loads(record.read_text())["config"] if record.is_file() else {}
    group, tokenize = config.get("group", {}), config.get("tokenize", {})
    buckets = group.get("buckets")
    if buckets is None:
        found = [int(m.group(1)) for f in documents_files(curated / "documents")
                 if (m := re.match(r"g(\d+)-", f.name))]
        buckets = max(found, default=0) + 1
    return group, tokenize, buckets


class Annotate:
    """Runs (or resumes) the steps named by ``cfg.step``; every step writes its own completion record."""

    def __init__(self, cfg: AnnotateConfig) -> None:
        validate(cfg)
        self.cfg, self.paths = cfg, Paths(cfg)
        if not documents_files(self.paths.documents):
            raise ConfigError(f"curated={cfg.curated!r}: no curated files under {self.paths.documents} "
                              "(expected a launch/curate.py output_dir)")
        self.hashes = stage_hashes(cfg, self.paths)
        self.wall: dict[str, float] = {}

    def run(self) -> Path:
        """``manifest.json`` is the whole stage's completion record (the pipeline's ``done:`` file): removed
        first, written last and only once every step is complete for this config, so neither an earlier
        run's manifest nor a partial ``step=`` run passes for a finished annotation."""
        p = self.paths
        p.out.mkdir(parents=True, exist_ok=True)
        if p.arm:  # an ablation arm: its own folder, from the annotation's scores; the annotation is untouched
            self.select()
            return p.selection
        (p.out / "manifest.json").unlink(missing_ok=True)
        steps = ORDER if self.cfg.step == "all" else (self.cfg.step,)
        for name in steps:
            start = time.perf_counter()
            if getattr(self, name)() is Outcome.SUBMITTED:  # the finish job selects, reports, writes the manifest
                return p.out
            self.wall[name] = round(time.perf_counter() - start, 2)
        if _recorded(p.out / "report" / "report.json") == self.hashes["report"]:
            self.write_manifest()
        else:
            logger.info(f"step={self.cfg.step} done; {p.out / 'manifest.json'} is written once every step is "
                        "complete (step=all)")
        return p.out

    # -- train ---------------------------------------------------------------------------------------
    def model_complete(self) -> bool:
        from arctic_pretrain.annotate.classifier import META

        p = self.paths
        recorded = _recorded(p.model / META)
        if recorded is not None and recorded != self.hashes["train"]:
            raise ConfigError(f"output_dir={str(p.out)!r}: model/ was trained with another config (positives, data, "
                              "model or decontamination changed); use a new output_dir or delete model/ and scores/")
        return recorded is not None

    def train(self) -> Outcome:
        """The classifier trains as its own datatrove job (TrainClassifierJob): in this process under
        executor=local, a SLURM job under executor=slurm (with step=all, scoring and select + report are
        submitted after it in one chain). Names it will load are checked here first."""
        from arctic_pretrain.annotate.preflight import preflight

        p = self.paths
        if self.model_complete():
            logger.info(f"train: {p.model} is complete (same config), skipped")
            return Outcome.DONE
        preflight(self.cfg)
        train = self._executor([TrainClassifierJob(self.cfg)], 1, "train")
        if self.cfg.executor.kind == "slurm":
            chain = [SlurmStep("train", train, 1, None)]
            if self.cfg.step == "all":
                self.prepare_scores()
                score = self.score_executor(depends=train)
                chain += [SlurmStep("score", score, self.cfg.executor.tasks, None),
                          SlurmStep("finish", self.finish_executor(score), 1, None)]
            self.submit_slurm(chain)
            return Outcome.SUBMITTED
        shutil.rmtree(p.logs / "train", ignore_errors=True)  # datatrove's completion marker of an older run
        logger.info(f"[train] training data, then fine-tuning {self.cfg.model.encoder} ({self.cfg.model.finetune})")
        train.run()
        if not self.model_complete():
            raise StageIncomplete(f"step train: no classifier was published in {p.model}; see {p.logs / 'train'}")
        return Outcome.DONE

    def fit(self) -> dict:
        """The training job's work: the training data (kept when complete), then the classifier (resumed from
        its newest checkpoint)."""
        from arctic_pretrain.annotate.classifier import TrainClassifier
        from arctic_pretrain.annotate.training_data import BuildTrainingData

        p, h = self.paths, self.hashes["train"]
        BuildTrainingData(self.cfg, p.curated, p.out, config_hash=h).run()
        return TrainClassifier(self.cfg, p.data, p.model, p.checkpoints, config_hash=h).run()

    # -- score ---------------------------------------------------------------------------------------
    def prepare_scores(self) -> None:
        """Refuse scores of another classifier or task count; a fresh start clears old completion markers."""
        p, h = self.paths, self.hashes["score"]
        plan = p.scores / "plan.json"
        if _recorded(p.scores / "manifest.json") not in (None, h) or (_recorded(plan) not in (None, h)):
            raise ConfigError(f"output_dir={str(p.out)!r}: scores/ was made with another classifier or "
                              f"executor.tasks; delete {p.scores} (and {p.logs / 'score'}) to score again")
        if not plan.is_file():  # a fresh start: no completion markers from an earlier, deleted run
            shutil.rmtree(p.logs / "score", ignore_errors=True)
            p.scores.mkdir(parents=True, exist_ok=True)
            atomic_write(plan, json.dumps({"config_hash": h, "tasks": self.cfg.executor.tasks}))

    def score(self) -> Outcome:
        p, h = self.paths, self.hashes["score"]
        if not self.model_complete():
            raise ConfigError(f"step=score: {p.model} holds no classifier of this config; run step=train first")
        if _recorded(p.scores / "manifest.json") == h:
            logger.info(f"score: {p.scores} is complete (same config), skipped")
            return Outcome.DONE
        self.prepare_scores()
        executor = self.score_executor()
        if self.cfg.executor.kind == "slurm":
            self.submit_slurm([SlurmStep("score", executor, self.cfg.executor.tasks, None),
                               SlurmStep("finish", self.finish_executor(executor), 1, None)])
            return Outcome.SUBMITTED
        executor.run()
        missing = executor.get_incomplete_ranks(range(self.cfg.executor.tasks))
        if missing:
            raise StageIncomplete(f"step score: tasks {missing} did not complete; see {p.logs / 'score'}")
        self.write_scores_manifest()
        return Outcome.DONE

    def submit_slurm(self, chain: list[SlurmStep]) -> None:
        """Submit a chain of datatrove SLURM jobs (each after the one before it) once; with executor.wait,
        wait for them and require what the last one writes."""
        from arctic_pretrain.common.slurm import job_id, submit_once

        p = self.paths

        def submit() -> dict[str, str]:
            if chain[0].name == "train":
                shutil.rmtree(p.logs / "train", ignore_errors=True)  # an older run's completion marker
            chain[-1].executor.run()  # submits the jobs it depends on first
            logger.info(f"submitted {' -> '.join(s.name for s in chain)} as SLURM jobs; outputs appear in "
                        f"{p.out}; logs in {p.logs}")
            return {s.name: job for s in chain if (job := job_id(s.executor))}

        jobs = submit_once(p.logs, f"output_dir={str(p.out)!r}", self.cfg.executor.wait, submit)
        if self.cfg.executor.wait:
            self.wait_for_slurm([s._replace(job_id=jobs.get(s.name)) for s in chain])

    def wait_for_slurm(self, chain: list[SlurmStep]) -> None:
        """executor.wait=true: block until the chain's jobs leave the queue, then require what its last job
        writes (the classifier, or FinishAfterScoring's outputs), so they exist when this returns."""
        from arctic_pretrain.annotate.classifier import META
        from arctic_pretrain.common.slurm import wait_for_jobs

        p = self.paths
        wait_for_jobs(chain, p.logs)
        if chain[-1].name == "train":
            expected = {p.model / META: self.hashes["train"]}
        else:
            expected = {p.scores / "manifest.json": self.hashes["score"],
                        p.out / "selection.json": self.hashes["select"], p.out / "all" / "manifest.json": None,
                        p.out / "report" / "report.json": self.hashes["report"], p.out / "manifest.json": None}
        missing = [str(path) for path, h in expected.items()
                   if not path.is_file() or (h is not None and _recorded(path) != h)]
        if missing:
            raise StageIncomplete(f"step {chain[-1].name}: its SLURM job ended without writing {missing}; "
                               f"see {p.logs / chain[-1].name / 'slurm_logs'}")
        logger.info(f"SLURM jobs done: {', '.join(s.name for s in chain)}")

    def score_executor(self, depends=None):
        from arctic_pretrain.annotate.scoring import ScoreFiles

        e, p = self.cfg.executor, self.paths
        threads = max(1, (os.cpu_count() or 1) // local_workers(e, e.tasks)) if e.kind == "local" else 0
        step = ScoreFiles(str(p.documents), str(p.scores), str(p.model), str(p.curated / "tokenizer"), self.cfg.score,
                          threads=threads)
        return self._executor([step], e.tasks, "score", depends=depends)

    def finish_executor(self, depends):
        """SLURM: one job after scoring that writes the scores manifest, selects and reports."""
        return self._executor([FinishAfterScoring(self.cfg)], 1, "finish", depends=depends)

    def _executor(self, pipeline: list, tasks: int, name: str, depends=None):
        return datatrove_executor(self.cfg.executor, pipeline, tasks, str(self.paths.logs / name),
                                  f"annotate-{name}", depends=depends)

    def write_scores_manifest(self) -> dict:
        from arctic_pretrain.annotate.scoring import iter_scores

        counts: dict = {"files": 0, "status": {}, "languages": {}, "tokens": 0}
        for rec in iter_scores(self.paths.scores):
            counts["files"] += 1
            counts["status"][rec["status"]] = counts["status"].get(rec["status"], 0) + 1
            counts["languages"][rec["language"]] = counts["languages"].get(rec["language"], 0) + 1
            counts["tokens"] += rec["tokens"]
        stats = self._datatrove_stats("score")
        manifest = {**counts, "undecodable": stats.get("undecodable", 0), "long": stats.get("long", 0),
                    "config_hash": self.hashes["score"], "tasks": self.cfg.executor.tasks}
        atomic_write(self.paths.scores / "manifest.json", json.dumps(manifest, indent=2))
        return manifest

    def _datatrove_stats(self, name: str) -> dict:
        path = self.paths.logs / name / "stats.json"
        out: dict = {}
        try:
            for step in json.loads(path.read_text()):
                for key, value in step.get("stats", {}).items():
                    out[key] = value.get("total", value) if isinstance(value, dict) else value
        except (OSError, ValueError, AttributeError):
            pass
        return out

    # -- select --------------------------------------------------------------------------------------
    def select(self) -> None:
        from arctic_pretrain.annotate.classifier import METRICS
        from arctic_pretrain.annotate.selection import SelectTop

        p, h = self.paths, self.hashes["select"]
        if _recorded(p.scores / "manifest.json") != self.hashes["score"]:
            raise ConfigError(f"step=select: {p.scores} is not complete for this config; run step=score first")
        out = p.selection
        done = json.loads((out / "selection.json").read_text()) if _recorded(out / "selection.json") == h else {}
        if done and all((out / source / "manifest.json").is_file() for source in done["sources"]):
            logger.info(f"select: selection.json and its sources {sorted(done['sources'])} are complete "
                        "(same config), skipped")
            return
        (out / "selection.json").unlink(missing_ok=True)  # published again last
        metrics = json.loads((p.model / METRICS).read_text())
        selection = SelectTop(self.cfg, p.curated, out, metrics, scores=p.scores).run()
        sources = self.tokenize_selection()
        selection.update({"sources": sources, "config_hash": h})
        atomic_write(out / "selection.json", json.dumps(selection, indent=2))
        logger.info("selected: " + ", ".join(f"{k}: {v['files']} files, {v['tokens']} tokens"
                                             for k, v in selection["languages"].items()))

    def tokenize_selection(self) -> dict:
        """Group the selected files by language then repository, exactly as phase 1, into ``all/``;
        ``python/`` holds the Python shards of ``all/`` (hard links)."""
        from arctic_pretrain.annotate.selection import link_python
        from arctic_pretrain.data.grouping import GroupAndTokenize, GroupConfig
        from arctic_pretrain.data.shards import finalize_source
        from arctic_pretrain.data.tokenizer import TokenizeConfig

        p = self.paths
        group, tokenize, buckets = curated_settings(p.curated)
        tok_cfg = TokenizeConfig(**tokenize)
        all_dir, python_dir = p.selection / "all", p.selection / "python"
        logs = (p.selection / "logs" if p.arm else p.logs) / "tokenize"
        for folder in (all_dir, python_dir, logs):
            shutil.rmtree(folder, ignore_errors=True)
        e = self.cfg.executor
        step = GroupAndTokenize(str(p.documents), str(all_dir), str(p.curated / "tokenizer"), GroupConfig(**group),
                                tok_cfg, threads=max(1, (os.cpu_count() or 1) // local_workers(e, buckets)),
                                select_dir=str(p.selection / "selected"), merge_languages=True)
        executor = local_executor(e, [step], buckets, str(logs))
        executor.run()
        missing = executor.get_incomplete_ranks(range(buckets))
        if missing:
            raise StageIncomplete(f"tokenize selection: tasks {missing} did not complete; see {logs}")
        meta = {"grouping": "language/repository", "selection": str(p.selection / "selection.json"),
                "mode": self.cfg.select.mode, "config_hash": self.hashes["select"]}
        out = {}
        if not list(all_dir.glob("*.part.json")):
            raise StageIncomplete(f"tokenize selection: no files selected; see {p.selection / 'selected'}")
        out["all"] = finalize_source(all_dir, metadata={**meta, "languages": "all"}).tokens
        link_python(all_dir, python_dir)
        if list(python_dir.glob("*.part.json")):
            out["python"] = finalize_source(python_dir, metadata={**meta, "languages": "python"}).tokens
        else:
            logger.warning(f"no Python files selected: {python_dir} stays empty")
        return out

    # -- report --------------------------------------------------------------------------------------
    def report(self) -> None:
        from arctic_pretrain.annotate.report import WriteReport

        p, h = self.paths, self.hashes["report"]
        if _recorded(p.out / "selection.json") != self.hashes["select"]:
            raise ConfigError(f"step=report: {p.out / 'selection.json'} is not complete for this config; "
                              "run step=select first")
        if _recorded(p.out / "report" / "report.json") == h:
            logger.info("report: complete (same config), skipped")
            return
        report = WriteReport(self.cfg, p.curated, p.out).run()
        atomic_write(p.out / "report" / "report.json", json.dumps({**report, "config_hash": h}, indent=2))
        he = report.get("humaneval", {})
        logger.info(f"report: {p.out / 'report' / 'report.md'}" + (f"; HumanEval ROC-AUC {he['roc_auc']:.3f}"
                                                                    if "roc_auc" in he else ""))

    # -- manifest ------------------------------------------------------------------------------------
    def write_manifest(self) -> None:
        p = self.paths
        files = documents_files(p.documents)

        def read(path: Path):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None

        selection = read(p.out / "selection.json") or {}
        manifest = {
            "stage": "annotate",
            "inputs": {"curated": str(p.curated), "documents_files": len(files),
                       "documents_bytes": sum(f.stat().st_size for f in files),
                       "positives": {s.name: s.source for s in self.cfg.positives},
                       "training_data": read(p.data / "manifest.json")},
            "outputs": {"model": read(p.model / "metrics.json"), "scores": read(p.scores / "manifest.json"),
                        "selection": selection.get("languages"), "sources": selection.get("sources"),
                        "report": str(p.out / "report" / "report.md")},
            "config_hash": _hash(self.hashes), "stage_hashes": self.hashes, "wall_s": self.wall,
            "config": _plain(self.cfg)}
        atomic_write(p.out / "manifest.json", json.dumps(manifest, indent=2))


class _AnnotateJob(PipelineStep):
    """A one-task datatrove step that runs part of ``Annotate`` (so SLURM can run it as a job)."""

    type = "🏅 - ANNOTATE"

    def __init__(self, cfg: AnnotateConfig) -> None:
        super().__init__()
        self.cfg = cfg


class TrainClassifierJob(_AnnotateJob):
    """The classifier's job (one task; a SLURM GPU job under executor=slurm): training data, then training,
    resumed from its newest checkpoint when an earlier job was killed."""

    name = "train classifier"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        Annotate(self.cfg).fit()
        yield from ()


class FinishAfterScoring(_AnnotateJob):
    """SLURM: the job after scoring: scores manifest, then select and report, in one task."""

    name = "select + report"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from arctic_pretrain.common.logs import log_to_loguru

        log_to_loguru()  # the Annotate steps' messages go to this task's log, beside datatrove's
        annotate = Annotate(self.cfg)
        annotate.write_scores_manifest()
        annotate.select()
        annotate.report()
        annotate.write_manifest()
        yield from ()


def run(cfg: AnnotateConfig) -> Path:
    """Validate, then run (or resume) the configured steps; returns the output folder."""
    return Annotate(cfg).run()
