"""The schema of a training run. Field comments are the configuration reference (README mirrors them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from arctic_pretrain.common.config import register as register_schema
from arctic_pretrain.model.config import ModelConfig

__all__ = ["ModelConfig"]  # part of the training schema; defined with the model (shared base)


@dataclass
class LRScheduleConfig:
    """Learning rate within one phase: linear warmup from warmup_start_lr to peak_lr, then decay to end_lr."""

    peak_lr: float = MISSING
    end_lr: float = 0.0
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    decay: str = "cosine"  # cosine | linear | constant


@dataclass
class FimConfig:
    """Fill-in-the-middle, applied per file to the windows as they are read (README "Fill-in-the-middle").
    Off by default (the paper trains without it); +fim=starcoder2 sets StarCoder2's values."""

    rate: float = 0.0  # share of files transformed (0: off); StarCoder2: 0.5
    spm_rate: float = 0.5  # share of transformed files in SPM order (the rest PSM); StarCoder2: 0.5
    # true: a transformed file keeps its length (its suffix gives up the 3 sentinel tokens), positions unchanged;
    # false: files grow by 3 tokens and the window is cut back at its end (bigcode-Megatron, StarCoder2)
    truncate_or_pad: bool = True


@dataclass
class PhaseFimConfig:
    """A phase's own FIM keys; null: the run's ``fim.<key>``. E.g. curriculum.phases.synthetic.fim.rate=0"""

    rate: float | None = None
    spm_rate: float | None = None
    truncate_or_pad: bool | None = None


@dataclass
class PhaseConfig:
    """One curriculum phase: a token budget, a data mixture and its own LR schedule."""

    tokens: str = MISSING  # budget; human forms accepted: 500B, 12.5M, 1e9, 8192
    mixture: dict[str, float] = MISSING  # weights over data.sources names (normalised; zero drops a source)
    weighting: str = "explicit"  # explicit: weights as written | natural: weight x source size (keeps data ratios)
    pinned: dict[str, float] = field(default_factory=dict)  # fixed shares (e.g. python: 0.5); the rest splits by weighting
    # a language's share of the phase's tokens (python: 0.5), reached by computing the share of the mixture's
    # one unpinned source of only that language (high_quality_python) from every source's measured language mix
    # (its manifest.json: data/languages.py::language_tokens); the rest still splits by weighting
    language_shares: dict[str, float] = field(default_factory=dict)
    lr: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    # the phase's sequence length (a long-context stage); null: training.seq_len. Tokens per step stay
    # constant: the phase's micro and global batch are training's x training.seq_len / seq_len (gradient
    # accumulation unchanged), which must come out whole. Windows are the sources' tokens cut at this length.
    seq_len: int | None = None
    # RoPE base for the phase's steps (long-context stages raise it, e.g. 10k -> 500k); null: model.rope_theta.
    # Applied at the phase's first step by recomputing the rotary frequencies (weights unchanged); the
    # checkpoints and exports from then on record it in their config.json
    rope_theta: float | None = None
    fim: PhaseFimConfig = field(default_factory=PhaseFimConfig)  # over the run's fim.* for this phase


@dataclass
class CurriculumConfig:
    """Phases run in the order written; each starts where the previous one's budget ends."""

    name: str = MISSING
    phases: dict[str, PhaseConfig] = MISSING


@dataclass
class DataSourceConfig:
    """A token source: a folder in the shard format (manifest.json, *.bin, *.idx.npy)."""

    path: str = MISSING
    max_epochs: float = 1.0  # how many times the curriculum may read it (the paper: 12.5B x 4 in phase 2)
    description: str = ""


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"  # where the data stages wrote their outputs; source paths may use ${data.root}
    sources: dict[str, DataSourceConfig] = MISSING
    prepare_demo: bool = False  # build the stand-in corpus and tokenizer when missing (data=standin: tests, CI)
    missing_hint: str | None = None  # said when a source is missing (e.g. which command writes this data)
    demo_dir: str = "${oc.env:ARCTIC_PRETRAIN_CACHE,${oc.env:HOME}/.cache/arctic-pretrain}/demo"
    demo_megabytes: float = 6.0  # size of the demo's general sources (per language)
    demo_vocab_size: int = 4096


@dataclass
class DeepSpeedConfig:
    """ZeRO stage and offload; `extra` is merged into the generated DeepSpeed JSON as written."""

    name: str = MISSING
    zero_stage: int = 1
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state and step on CPU
    offload_param: bool = False  # ZeRO-3 only: parameters on CPU
    precision: str = "auto"  # auto (bf16 on GPUs that support it, fp32 elsewhere) | bf16 | fp32
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """AdamW. The paper says Adam; betas/eps/decay are not published, these are Llama-2's."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # not applied to norms and biases
    grad_clip: float = 1.0  # global gradient-norm clip (0 disables)


@dataclass
class TrainingConfig:
    """Batch geometry. Gradient accumulation = global / (micro x data-parallel ranks)."""

    seq_len: int = MISSING
    global_batch_size: int = MISSING  # sequences per optimizer step (the paper: 512)
    micro_batch_size: int = 1  # sequences per rank per forward/backward
    deterministic: bool = False  # deterministic kernels (exact resume tests; slower on GPU)


@dataclass
class CheckpointConfig:
    interval: int = 1000  # steps between checkpoints (phase ends always checkpoint)
    keep_last: int = 3  # interval checkpoints kept; phase-end checkpoints are never pruned
    export_phases: bool = True  # write an HF export of every finished phase to run_dir/export/<phase>
    fallback_on_corrupt: bool = False  # latest fails its checksums: resume from the newest earlier one that passes
    # sources whose data changed since the checkpoint (re-run selection, re-tokenized) that a resume may use:
    # each starts a fresh permutation over its new windows at the recorded point (history.jsonl records it);
    # any other changed source stops the start, named. E.g. checkpoint.accept_changed_sources=[high_quality]
    accept_changed_sources: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    """metrics.jsonl always; wandb as configured. WANDB_* environment variables win over these keys
    (wandb's convention): WANDB_MODE=disabled turns a configured online run off."""

    interval: int = 10  # steps between metric lines
    wandb_mode: str = "disabled"  # online | offline (sync later: wandb sync run_dir/wandb) | disabled
    wandb_project: str = "arctic-pretrain"
    wandb_entity: str | None = None  # team or user; None: wandb's default
    wandb_group: str | None = None  # groups runs in the UI: one per sweep (e.g. logging.wandb_group=lr-sweep)
    wandb_tags: list[str] = field(default_factory=list)
    wandb_run_name: str | None = None  # None: the run dir's name (the run id is kept in run_dir/wandb_id)


@dataclass
class GuardsConfig:
    """What a bad step does: skipped (no update) and counted in metrics.jsonl; too many in a row stop the run."""

    skip_nonfinite: bool = True  # a NaN/inf loss or gradient skips the update
    max_consecutive_bad: int = 5  # this many non-finite steps in a row: save, then stop with an error
    spike_zscore: float | None = None  # skip a step whose loss is this many std devs above the window mean (e.g. 6)
    spike_window: int = 128  # recent accepted losses the z-score is taken over
    spike_min_window: int = 32  # no spike decision before this many accepted steps


@dataclass
class PhaseEvalConfig:
    """Light evaluation at every phase end (rank 0, on the phase's export), and the benchmark-aligned loss
    every ``interval`` steps on the model in memory; both logged like any metric."""

    enabled: bool = False
    humaneval_limit: int = 20  # first N HumanEval problems, greedy pass@1 in the sandbox (0: skip)
    max_new_tokens: int = 128
    heldout_windows: int = 8  # last N windows of every source: never trained on, scored at phase ends
    # steps between in-loop benchmark-aligned loss lines (also at phase ends): the loss of the benchmarks'
    # reference solutions given their prompts, plus the held-out windows' loss when enabled; 0: off
    interval: int = 0
    aligned_limit: int | None = 100  # problems per benchmark the in-loop aligned loss scores (null: all)


@dataclass
class ProfileConfig:
    """A torch.profiler window over training steps (README "Profiling"); off unless ``steps`` is set."""

    # [from, to]: profile steps from..to (1-based, inclusive: metrics.jsonl's step numbers), writing
    # run_dir/profile/steps_<from>-<to>/rank<r>.trace.json (+ a CUDA memory snapshot); []: off
    steps: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=lambda: [0])  # ranks that profile, each writing its own files
    memory_snapshot: bool = True  # on CUDA: torch.cuda.memory's allocation history (pytorch.org/memory_viz)
    top: int = 15  # ops in the logged summary (key_averages by self time)


@dataclass
class TrainConfig:
    """A whole run: `python launch/train.py --cfg job` prints the composed instance."""

    model: ModelConfig = MISSING
    curriculum: CurriculumConfig = MISSING
    data: DataConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evaluation: PhaseEvalConfig = field(default_factory=PhaseEvalConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    fim: FimConfig = field(default_factory=FimConfig)  # per phase: curriculum.phases.<name>.fim
    init_from: str | None = None  # start from another run's checkpoint (<output_dir> or <output_dir>/checkpoints/<tag>)
    init_reset_optimizer: bool = False  # with init_from: fresh AdamW state
    init_reset_schedule: bool = False  # with init_from: the current phase's LR schedule restarts at the branch point
    # the run dir: metrics.jsonl, checkpoints/, export/; rerun with the same output_dir to resume
    output_dir: str = "runs/default"
    seed: int = 1234
    tokenizer: str | None = None  # HF tokenizer folder or hub name for exports; None: the sources' manifest
    peak_tflops: float | None = None  # per-device peak for MFU; None: known GPUs (H100/H200 989, A100 312)
    max_steps: int | None = None  # stop early after this many steps (smoke tests); the curriculum decides otherwise
    dry_run: bool = False  # print the run's arithmetic for nodes x gpus_per_node ranks and exit (nothing trains)
    nodes: int = 1  # cluster shape for dry_run and the SLURM launcher preset (hydra/launcher=submitit_slurm)
    gpus_per_node: int = 1  # ranks per node for dry_run and the SLURM launcher preset


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Cross-field checks that need no data on disk (the rules: train/validate.py; the data plan is checked
    once the sources are open). ``run`` calls it with the job's world size before any rank trains."""
    from arctic_pretrain.train.validate import validate_config

    validate_config(cfg, world_size=world_size)


# deprecated spellings on the command line (launch/train.py), read as the new key until the next release
RENAMED = {"run_dir": "output_dir"}


def register() -> None:
    """Register the schema so that conf/train/*.yaml are checked against it (unknown keys fail)."""
    register_schema("train", TrainConfig)
    # hydra/launcher=submitit_slurm: conf/train/hydra/launcher/submitit_slurm.yaml sets our defaults over the
    # plugin's schema of the same name, which Hydra merges by name ("automatic schema matching"); it warns
    # that this is deprecated, but a differently named schema in the defaults list fails to merge with it.
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*'hydra/launcher/submitit_slurm' is validated against")
