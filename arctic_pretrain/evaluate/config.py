"""The schema of `launch/evaluate.py`; field comments are the configuration reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.common.config import register as register_schema
from arctic_pretrain.evaluate.tasks import ALL_TASKS, EVOEVAL_SUBSETS, TASKS


@dataclass
class GenerationConfig:
    """Decoding. The paper reports greedy pass@1; sampling (do_sample, n_samples) gives pass@k."""

    backend: str = "auto"  # auto (vLLM when it imports on a GPU, else transformers) | hf | vllm
    batch_size: int = 8  # prompts per transformers generate() call (left padded)
    max_new_tokens: int = 512
    do_sample: bool = False  # false: greedy
    temperature: float = 0.8  # used only when do_sample
    top_p: float = 0.95  # used only when do_sample
    n_samples: int = 1  # completions per problem; must be >= every k in pass_k
    pass_k: list[int] = field(default_factory=lambda: [1])  # unbiased estimator (Chen et al. 2021)
    strip_prompt_newlines: bool = True  # the paper's convention: trailing newlines removed from prompts
    dtype: str = "auto"  # auto (bf16 on GPUs that support it, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 1234


@dataclass
class SandboxConfig:
    """Execution of model-written code (see arctic_pretrain/evaluate/sandbox.py for the isolation layers)."""

    timeout_s: float = 10.0  # per HumanEval sample; evalplus derives per-input limits, BigCodeBench gets 6x
    memory_mb: int = 4096  # address-space rlimit of each sample's process (0: none)
    workers: int = 0  # samples executed at once; 0: one per CPU core
    # Without Landlock and user/PID/network namespaces (old kernels, containers that forbid them) the sandbox
    # refuses to run model code. true runs it anyway, confined only by rlimits and Python audit hooks: model
    # code can then write any file this user can, reach the network, and forge its own verdict.
    unsafe_no_kernel_isolation: bool = False


@dataclass
class BenchmarkDataConfig:
    """Where benchmark data lives. null: the benchmark's default location (env variables honoured)."""

    humaneval_plus: str | None = None  # evalplus HumanEvalPlus jsonl (else HUMANEVAL_OVERRIDE_PATH, evalplus cache)
    mbpp_plus: str | None = None  # evalplus MbppPlus jsonl (else MBPP_OVERRIDE_PATH, evalplus cache)
    evoeval: str | None = None  # folder of EvoEval release files EvoEval_<subset>.jsonl (else EVOEVAL_OVERRIDE_PATH)
    evoeval_subsets: list[str] = field(default_factory=lambda: list(EVOEVAL_SUBSETS))  # scored together
    bigcodebench: str | None = None  # BigCodeBench jsonl (else BIGCODEBENCH_OVERRIDE_PATH)
    download: bool = False  # let evalplus download its data when no local copy exists (needs network)


@dataclass
class AlignedConfig:
    """Benchmark-aligned loss: the mean per-token loss of each benchmark's reference solutions given their
    prompts (one forward pass per model, no sampling; see arctic_pretrain/evaluate/aligned.py)."""

    enabled: bool = True
    limit: int | None = None  # problems per benchmark; null: all of them (cheap: no generation, no sandbox)
    # context per document; null: the training seq_len the export records (arctic_export.json), else the
    # model's max_position_embeddings, at most 4096. Longer documents lose the prompt's beginning.
    max_tokens: int | None = None
    batch_tokens: int = 16384  # tokens per forward pass (rows x longest row)
    # model= a run directory: also the loss on the last N windows of each of its token sources (the run's
    # config.yaml names them; never trained on when the run set evaluation.enabled=true); 0: off
    heldout_windows: int = 8


@dataclass
class AblationConfig:
    """With ``arms``: each arm against ``baseline``, paired per problem, percentile bootstrap intervals
    (arctic_pretrain/evaluate/ablation.py)."""

    baseline: str = "random"  # the arm every other arm is compared with
    control: str = "shuffled"  # a second draw of the baseline: its distance from it is run-to-run noise
    resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class EvalConfig:
    """`python launch/evaluate.py model=<run_dir or HF path> tasks=[humaneval] output_dir=<path> limit=<n>`,
    or `samples=<file.jsonl>` in place of model."""

    model: str | None = None  # a run directory (every export/<phase>/ becomes a row) or one HF folder/hub name
    # instead of model: a jsonl of completions made elsewhere (evalplus's format): task_id plus completion
    # (appended to the benchmark's prompt) or solution (a whole program); every sample is scored
    samples: str | None = None
    baselines: list[str] = field(default_factory=list)  # more HF folders/hub names, one row each
    # instead of model: a selection ablation's arms, name -> HF folder (e.g. a variant's export/high_quality),
    # one row each named by its arm; then ablation.{json,md,png}: every arm against ablation.baseline
    arms: dict[str, str] = field(default_factory=dict)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    output_dir: str = "eval_results"  # results.json, results.md, pass_at_1.png, cache/
    limit: int | None = None  # evaluate only the first n problems of each task
    # humaneval_infill (single-line infilling, exact match; README "Fill-in-the-middle"): lines masked per
    # problem, spread over its solution; null: every non-blank line (1033 over HumanEval's 164 problems)
    infill_lines: int | None = 2
    cache: bool = True  # reuse results of (model, task, generation, limit) already computed
    cache_dir: str | None = None  # null: <output_dir>/cache
    progress: bool = True  # progress bars on stderr
    reference: bool = True  # add the paper's rows to the table and the plot
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    data: BenchmarkDataConfig = field(default_factory=BenchmarkDataConfig)
    aligned: AlignedConfig = field(default_factory=AlignedConfig)


def validate(cfg: EvalConfig) -> None:
    """Cross-field rules, checked before any model loads."""
    for task in cfg.tasks:
        if task not in ALL_TASKS:
            raise ConfigError(f"tasks: unknown task {task!r}; known: {', '.join(ALL_TASKS)}")
    if not cfg.tasks:
        raise ConfigError("tasks: empty; name at least one of " + ", ".join(ALL_TASKS))
    if cfg.infill_lines is not None and cfg.infill_lines < 1:
        raise ConfigError(f"infill_lines={cfg.infill_lines}: must be positive (or null for every line)")
    if (cfg.model is not None) + (cfg.samples is not None) + bool(cfg.arms) != 1:
        raise ConfigError("model / samples / arms: give exactly one: model=<run dir, HF folder or hub name> to "
                          "generate, samples=<file.jsonl> to score completions made elsewhere, or "
                          "arms={name: HF folder, ...} to compare a selection ablation's arms")
    if cfg.arms:
        for name, path in cfg.arms.items():
            if not Path(str(path)).is_dir():
                raise ConfigError(f"arms.{name}={path}: no such folder (an arm is a model folder, e.g. a sweep "
                                  "variant's export/high_quality)")
        if cfg.ablation.baseline not in cfg.arms:
            raise ConfigError(f"ablation.baseline={cfg.ablation.baseline!r}: not one of the arms {list(cfg.arms)}")
        if len(cfg.arms) < 2:
            raise ConfigError(f"arms={dict(cfg.arms)}: an ablation needs the baseline and at least one other arm")
        if cfg.ablation.resamples < 100 or not 0 < cfg.ablation.confidence < 1:
            raise ConfigError(f"ablation.resamples={cfg.ablation.resamples}, ablation.confidence="
                              f"{cfg.ablation.confidence}: need at least 100 resamples and a confidence in (0, 1)")
    if cfg.samples is not None and not Path(cfg.samples).is_file():
        raise ConfigError(f"samples={cfg.samples}: no such file")
    g = cfg.generation
    if not g.pass_k or min(g.pass_k) < 1:
        raise ConfigError(f"generation.pass_k={list(g.pass_k)}: every k must be at least 1")
    if cfg.samples is None:  # generation settings matter only when this run generates
        if g.backend not in ("auto", "hf", "vllm"):
            raise ConfigError(f"generation.backend={g.backend!r}: must be auto, hf or vllm")
        if g.n_samples < 1 or g.batch_size < 1 or g.max_new_tokens < 1:
            raise ConfigError("generation.n_samples, batch_size and max_new_tokens must be positive")
        if max(g.pass_k) > g.n_samples:
            raise ConfigError(f"generation.pass_k={list(g.pass_k)}: every k must be in 1..n_samples={g.n_samples}")
        if not g.do_sample and g.n_samples > 1:
            raise ConfigError(f"generation.n_samples={g.n_samples}: greedy decoding gives one distinct "
                              "completion; set generation.do_sample=true for pass@k")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"limit={cfg.limit}: must be positive (or null for all problems)")
    a = cfg.aligned
    if a.limit is not None and a.limit < 1:
        raise ConfigError(f"aligned.limit={a.limit}: must be positive (or null for all problems)")
    if a.max_tokens is not None and a.max_tokens < 2:
        raise ConfigError(f"aligned.max_tokens={a.max_tokens}: must be at least 2 (a context and a scored token)")
    if a.heldout_windows < 0:
        raise ConfigError(f"aligned.heldout_windows={a.heldout_windows}: must be 0 (off) or positive")
    if a.batch_tokens < 1:
        raise ConfigError(f"aligned.batch_tokens={a.batch_tokens}: must be positive")
    if cfg.sandbox.timeout_s <= 0:
        raise ConfigError(f"sandbox.timeout_s={cfg.sandbox.timeout_s}: must be positive")


def register() -> None:
    """Register the schema so that conf/evaluate/evaluate.yaml is type-checked (unknown keys fail)."""
    register_schema("evaluate", EvalConfig)
