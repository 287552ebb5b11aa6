"""The schema of a synthesis run (``launch/synthesize.py``). Field comments are the configuration reference.

The paper (Arctic-SnowCoder, phase 3) says: Llama-3.1-70B-Instruct, a Magicoder OSS-Instruct prompt
adapted for pretraining, seeds from the top phase-2 files, about 2B synthetic tokens, Python about half
of the phase-3 mix. Prompt wording and sampling settings are not published: the defaults are ours and
the comments say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from arctic_pretrain.common.config import ConfigError, conf_dir, require, to_object
from arctic_pretrain.common.config import register as register_schema
from arctic_pretrain.text.decontamination import DecontamConfig
from arctic_pretrain.text.dedup import DedupConfig

BACKENDS = ("openai", "vllm", "transformers")


@dataclass
class SeedingConfig:
    """Which phase-2 files seed a request, and which lines of them the prompt shows."""

    # not published: ~2B tokens at about 1k tokens per kept file; a seed is one file of the selection
    num_seeds: int = 2_000_000
    # fixed shares of num_seeds (paper: Python ~50% of phase 3); the other languages share the rest in
    # their phase-2 token ratios (selection.json), as "other languages keep their ratios"
    shares: dict[str, float] = field(default_factory=lambda: {"python": 0.5})
    languages: list[str] | None = None  # only these languages (default: every language of the selection)
    min_lines: int = 1  # OSS-Instruct: 1 to 15 consecutive lines from a random start line
    max_lines: int = 15
    seed: int = 0  # the window RNG, keyed by (seed, file): the same file gets the same window after a restart


@dataclass
class PromptConfig:
    """The prompt: a Jinja2 template and the chat system message."""

    # a template name under conf/synthesize/templates/ (pretrain, oss_instruct) or a path to a .jinja file
    template: str = "pretrain"
    # Magicoder's OSS-Instruct system prompt
    system: str = ("You are exceptionally skilled at crafting high-quality programming problems and "
                   "offering precise solutions.")
    # in-process backends: apply the tokenizer's chat template when it has one (instruct models);
    # without one (base models) the prompt is the system and user text as plain text
    chat_template: bool = True
    # text the reply continues, for plain-text prompts only (the completions endpoint, in-process models
    # without a chat template), e.g. "```{{ fence }}\n" so that a base model writes the file's code;
    # rendered like the template, and put back in front of the reply before parsing
    prefill: str = ""


@dataclass
class SamplingConfig:
    """Sampling parameters (not published for phase 3; ours)."""

    max_tokens: int = 2048  # a complete file; replies cut at this length are rejected as truncated
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0  # sent to servers that honour it (vLLM); per-request seeds are seed + request index


@dataclass
class BackendConfig:
    """Where generations come from: ``backend=openai|vllm|transformers`` picks a preset."""

    kind: str = "openai"
    model: str = "meta-llama/Llama-3.1-70B-Instruct"  # the paper's generator; a hub name or a local path
    # openai: any OpenAI-compatible server (vLLM `vllm serve`, SGLang, TGI)
    base_url: str = "http://localhost:8000/v1"
    endpoint: str = "chat"  # chat (the server applies the chat template) | completions (raw prompt text)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable with the key (vLLM: --api-key); unset = none
    concurrency: int = 256  # requests in flight; a vLLM node batches them
    timeout_s: float = 600.0  # per request attempt
    max_retries: int = 8
    backoff_s: float = 1.0  # first retry waits up to this (full jitter), doubling per attempt
    backoff_max_s: float = 60.0
    # fail fast: GET <base_url>/models before the first seed (the URL answers, backend.model is served);
    # wait up to wait_for_server_s for a server that is still starting (0: fail at once)
    check_server: bool = True
    wait_for_server_s: float = 0.0
    # circuit breaker: stop the run (finished seeds kept) once this many attempts in a row, over at least
    # breaker_window_s seconds, could not reach the server (refused, reset, connect timeout)
    breaker_failures: int = 32
    breaker_window_s: float = 60.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # passed through to the server
    # vllm / transformers: in-process generation
    batch_size: int = 8  # transformers: prompts per generate() call; vllm takes every pending prompt
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1  # vllm: GPUs per engine (70B in bf16 needs 4-8)


@dataclass
class OutputFilterConfig:
    """What a reply must pass to become a training document."""

    truncated: str = "reject"  # reject | keep: replies that stopped at max_tokens (finish_reason length)
    syntax: str = "reject"  # reject | keep (count only) | off: Python's ast, tree-sitter for other languages
    seed_copy: bool = True  # reject code that is a whitespace-insensitive copy of (part of) the seed file
    min_chars: int = 20  # not published: shorter documents are "empty"
    dedup: DedupConfig = field(default_factory=lambda: DedupConfig(exact=True, near=True))
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)


@dataclass
class WorkersConfig:
    """Sharding for scale: seed i belongs to worker (stable hash of its id) % num_workers."""

    num_workers: int = 1
    # run only this worker's seeds (a SLURM array task: worker=$SLURM_ARRAY_TASK_ID), then stop;
    # null: run every shard in this process, then finalize
    worker: int | None = None
    finalize: bool = True  # after generating: filter, dedup, decontaminate, tokenize (needs every shard done)


@dataclass
class SynthesizeConfig:
    seeds: str = MISSING  # the annotate stage's output_dir: selection.json + selected/<language>.jsonl
    output_dir: str | None = None  # default: the seeds folder's sibling `synthetic` (<data.root>/synthetic)
    tokenizer: str | None = None  # an HF tokenizer folder or hub name; default: <curated>/tokenizer
    seeding: SeedingConfig = field(default_factory=SeedingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    filter: OutputFilterConfig = field(default_factory=OutputFilterConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    shard_tokens: int = 256 * 2**20  # tokens per shard of the synthetic source
    progress: bool = True  # a tqdm bar


def template_path(name: str) -> Path:
    """A template name under conf/synthesize/templates/, or a path to a template file."""
    path = Path(name).expanduser()
    if path.suffix or path.is_file():
        return path
    return Path(conf_dir("synthesize")) / "templates" / f"{name}.jinja"


def validate(cfg: SynthesizeConfig) -> None:
    """Cross-field checks before any work starts; errors name the key and the value."""
    require(bool(cfg.seeds), "seeds", cfg.seeds, "must be the annotate stage's output folder")
    require((Path(cfg.seeds) / "selection.json").is_file(), "seeds", cfg.seeds,
            "no selection.json there: point seeds= at the annotate stage's output_dir")
    s = cfg.seeding
    require(s.num_seeds >= 1, "seeding.num_seeds", s.num_seeds, "must be >= 1")
    require(1 <= s.min_lines <= s.max_lines, "seeding.min_lines", s.min_lines,
            f"must be in [1, seeding.max_lines={s.max_lines}]")
    for lang, share in s.shares.items():
        require(0.0 <= share <= 1.0, f"seeding.shares.{lang}", share, "must be in [0, 1]")
    require(sum(s.shares.values()) <= 1.0 + 1e-9, "seeding.shares", dict(s.shares), "shares add up to more than 1")
    require(template_path(cfg.prompt.template).is_file(), "prompt.template", cfg.prompt.template,
            f"no template file at {template_path(cfg.prompt.template)}")
    p = cfg.sampling
    require(p.max_tokens >= 1, "sampling.max_tokens", p.max_tokens, "must be >= 1")
    require(p.temperature >= 0.0, "sampling.temperature", p.temperature, "must be >= 0")
    require(0.0 < p.top_p <= 1.0, "sampling.top_p", p.top_p, "must be in (0, 1]")
    b = cfg.backend
    require(b.kind in BACKENDS, "backend.kind", b.kind, f"must be one of {BACKENDS}")
    require(bool(b.model), "backend.model", b.model, "needs a model name or path")
    require(b.endpoint in ("chat", "completions"), "backend.endpoint", b.endpoint, "must be chat or completions")
    if b.kind == "openai":
        require(b.base_url.startswith(("http://", "https://")), "backend.base_url", b.base_url,
                "must be an http(s) URL such as http://host:8000/v1")
    require(b.concurrency >= 1, "backend.concurrency", b.concurrency, "must be >= 1")
    require(b.timeout_s > 0, "backend.timeout_s", b.timeout_s, "must be positive")
    require(b.max_retries >= 0, "backend.max_retries", b.max_retries, "must be >= 0")
    require(b.backoff_s >= 0 and b.backoff_max_s >= 0, "backend.backoff_s", b.backoff_s, "must be >= 0")
    require(b.wait_for_server_s >= 0, "backend.wait_for_server_s", b.wait_for_server_s, "must be >= 0")
    require(b.breaker_failures >= 1, "backend.breaker_failures", b.breaker_failures, "must be >= 1")
    require(b.breaker_window_s >= 0, "backend.breaker_window_s", b.breaker_window_s, "must be >= 0")
    require(b.batch_size >= 1, "backend.batch_size", b.batch_size, "must be >= 1")
    f = cfg.filter
    require(f.truncated in ("reject", "keep"), "filter.truncated", f.truncated, "must be reject or keep")
    require(f.syntax in ("reject", "keep", "off"), "filter.syntax", f.syntax, "must be reject, keep or off")
    d = f.dedup
    require(d.num_bands >= 1 and d.rows_per_band >= 1, "filter.dedup.num_bands", d.num_bands, "bands and rows >= 1")
    w = cfg.workers
    require(w.num_workers >= 1, "workers.num_workers", w.num_workers, "must be >= 1")
    require(w.worker is None or 0 <= w.worker < w.num_workers, "workers.worker", w.worker,
            f"must be in [0, workers.num_workers={w.num_workers})")
    require(cfg.shard_tokens > 0, "shard_tokens", cfg.shard_tokens, "must be positive")


def to_config(cfg: Any) -> SynthesizeConfig:
    """A composed DictConfig -> SynthesizeConfig, every key checked against the schema (``run`` validates)."""
    return to_object(cfg, SynthesizeConfig)


def register() -> None:
    """The schema and the ``backend`` group (``backend=openai|vllm|transformers``) in Hydra's ConfigStore,
    and the resolver that puts Hydra's log folder inside the (default) output_dir."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("synthesize_output_dir", lambda out, seeds: out or f"{seeds}/../synthetic",
                                    replace=True)
    register_schema("synthesize", SynthesizeConfig, {"backend": {
        "openai": BackendConfig(kind="openai"),
        "vllm": BackendConfig(kind="vllm"),
        "transformers": BackendConfig(kind="transformers", model=MISSING, batch_size=8),
    }})


__all__ = ["ConfigError", "SynthesizeConfig", "register", "to_config", "validate"]
