"""`dry_run=true`: the run's arithmetic for a cluster shape, before anything is allocated.

It answers what a person checks by hand before submitting a job: the world size, micro batch, gradient
accumulation, tokens per step, steps per phase, how often each data source is read, each phase's language
mix (from the sources' manifests), how many checkpoints the run keeps and how large they are, and the peak
memory per GPU (train/memory.py). The same ``validate_config`` a real launch runs decides whether the
global batch divides, so a dry run fails exactly when the launch would. The model is built on the meta
device (no memory) to count its parameters.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from arctic_pretrain.common.units import format_token_count, parse_token_count
from arctic_pretrain.train.config import TrainConfig
from arctic_pretrain.train.curriculum import Curriculum, phase_batch, phase_languages
from arctic_pretrain.train.memory import MemoryEstimate, estimate_memory, render_estimate
from arctic_pretrain.train.validate import checked_phase_weights, validate_config

PAPER_VOCAB = 64_000  # assumed when neither the sources nor model.vocab_size give one
ADAM_BYTES = 12  # fp32 master weights + Adam's two moments, per parameter (DeepSpeed's optimizer states)


@dataclass
class DryRunPlan:
    nodes: int
    gpus_per_node: int
    world_size: int
    micro_batch: int
    grad_accumulation: int
    global_batch: int
    seq_len: int
    phases: list[dict]  # name, steps, tokens, and the phase's seq_len, global/micro batch, rope_theta
    parameters: int
    vocab: int
    vocab_note: str
    weight_bytes: int  # per parameter in the saved module (bf16: 2, fp32: 4)
    checkpoints_written: int
    checkpoints_kept: int
    epochs: dict[str, float] | None  # per source; None when the sources were not found
    sources_note: str = ""
    notes: list[str] = field(default_factory=list)
    # per phase: each language's share of its tokens, and the sources whose mix is unknown (None: no sources)
    languages: dict[str, tuple[dict[str, float], list[str]]] | None = None
    memory: MemoryEstimate | None = None  # peak per GPU (the largest over the phases)
    memory_phase: str = ""  # the phase that peak belongs to, when phases differ in seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def checkpoint_bytes(self) -> int:
        return self.parameters * (self.weight_bytes + ADAM_BYTES)


def _source_paths(cfg: TrainConfig) -> dict[str, Path]:
    """Where each source lives; the demo's relative paths resolve inside its cached corpus folder."""
    from arctic_pretrain.data.demo import demo_key

    # the folder data.demo.build_demo names (the dry run reads it when built, never builds it)
    demo = Path(cfg.data.demo_dir) / demo_key(cfg.data.demo_megabytes, cfg.data.demo_vocab_size)
    paths = {}
    for name, src in cfg.data.sources.items():
        path = Path(src.path)
        if cfg.data.prepare_demo and not path.is_absolute() and not path.exists():
            path = demo / src.path
        paths[name] = path
    return paths


def _open_sources(cfg: TrainConfig):
    from arctic_pretrain.data.shards import TokenSource

    missing, sources = [], {}
    for name, path in _source_paths(cfg).items():
        if (path / "manifest.json").is_file():
            sources[name] = TokenSource(path)
        else:
            missing.append(f"{name} ({path})")
    return sources, missing


def _parameters(cfg: TrainConfig, vocab: int) -> int:
    import torch

    from arctic_pretrain.model import build_model, padded_vocab_size

    with torch.device("meta"):
        model = build_model(cfg.model, padded_vocab_size(cfg.model, vocab))
    return sum(p.numel() for p in model.parameters())


def plan(cfg: TrainConfig) -> DryRunPlan:
    """Resolve the run for ``cfg.nodes`` x ``cfg.gpus_per_node`` ranks; ConfigError when it cannot run."""
    from arctic_pretrain.common.config import require

    require(cfg.nodes > 0, "nodes", cfg.nodes, "must be positive")
    require(cfg.gpus_per_node > 0, "gpus_per_node", cfg.gpus_per_node, "must be positive")
    world = cfg.nodes * cfg.gpus_per_node
    validate_config(cfg, world_size=world)  # the global batch must divide: the same check a launch makes
    t = cfg.training
    sources, missing = _open_sources(cfg)
    sizes = {name: s.num_tokens for name, s in sources.items()} if not missing else None
    mixes = {name: s.language_tokens for name, s in sources.items()} if not missing else None
    # the steps do not depend on the weights: without sizes natural weights come out equal, and language shares
    # are computed below (checked_phase_weights names the phase whose sources record no language mix)
    curriculum = Curriculum(without_language_shares(cfg.curriculum), t.global_batch_size * t.seq_len,
                            sizes or dict.fromkeys(cfg.data.sources, 1))
    from arctic_pretrain.data.fim import phase_settings

    fim = phase_settings(cfg.fim, cfg.curriculum.phases)
    phases = []
    for p in curriculum.describe():
        shape = phase_batch(p["phase"], p.get("seq_len"), t.seq_len, t.global_batch_size, t.micro_batch_size)
        phases.append({"phase": p["phase"], "steps": p["steps"], "tokens": p["tokens"], "seq_len": shape.seq_len,
                       "global_batch": shape.global_batch, "micro_batch": shape.micro_batch,
                       "rope_theta": p.get("rope_theta") or cfg.model.rope_theta, "fim": fim.get(p["phase"])})
    epochs, note, languages = None, "", None
    if sizes is not None:
        epochs = {name: 0.0 for name in sources}
        languages = {}
        for name, phase in cfg.curriculum.phases.items():
            weights = checked_phase_weights(name, phase, sizes, mixes)
            languages[name] = phase_languages(weights, mixes)
            seq_len = phase.seq_len or t.seq_len
            for src, share in weights.items():
                available = sources[src].num_windows(seq_len) * seq_len
                epochs[src] += parse_token_count(phase.tokens) * share / max(available, 1)
    else:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        note = f"not checked: no token source at {missing[0]}{more}"
    if cfg.model.vocab_size:
        vocab, vocab_note = cfg.model.vocab_size, "model.vocab_size"
    elif sources:
        vocab, vocab_note = next(iter(sources.values())).tokenizer.vocab_size, "the sources' tokenizer"
    else:
        vocab, vocab_note = PAPER_VOCAB, "assumed (the paper's; no sources and no model.vocab_size)"
    fp32 = cfg.deepspeed.precision == "fp32"
    total_steps = curriculum.total_steps
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    written = total_steps // cfg.checkpoint.interval + len(phases)
    kept = min(cfg.checkpoint.keep_last, total_steps // cfg.checkpoint.interval) + len(phases)
    parameters = _parameters(cfg, vocab)
    # the peak over the phases: a phase at its own seq_len has its own micro-batch of sequences
    shapes = {(ph["micro_batch"], ph["seq_len"]): ph["phase"] for ph in reversed(phases)}
    estimates = {name: _memory(cfg, vocab, parameters, world, micro, seq_len)
                 for (micro, seq_len), name in shapes.items()}
    peak_phase = max(estimates, key=lambda name: estimates[name].peak)
    return DryRunPlan(cfg.nodes, cfg.gpus_per_node, world, t.micro_batch_size,
                      t.global_batch_size // (t.micro_batch_size * world), t.global_batch_size, t.seq_len, phases,
                      parameters, vocab, vocab_note, 4 if fp32 else 2, written, kept, epochs, note,
                      languages=languages, memory=estimates[peak_phase],
                      memory_phase=peak_phase if len(shapes) > 1 else "")


def _memory(cfg: TrainConfig, vocab: int, parameters: int, world: int, micro_batch: int,
            seq_len: int) -> MemoryEstimate:
    """The peak per GPU at one phase's micro-batch and seq_len; precision ``auto`` counts as bf16 (a dry run
    plans for GPUs)."""
    from arctic_pretrain.model import padded_vocab_size

    ds = cfg.deepspeed
    bucket = dict(ds.extra).get("zero_optimization", {}).get("reduce_bucket_size")
    return estimate_memory(cfg.model, padded_vocab_size(cfg.model, vocab), parameters,
                           micro_batch=micro_batch, seq_len=seq_len,
                           zero_stage=ds.zero_stage, world=world, bf16=ds.precision != "fp32",
                           offload_optimizer=ds.offload_optimizer, offload_param=ds.offload_param,
                           reduce_bucket=int(bucket) if bucket else None)


def without_language_shares(curriculum):
    """The curriculum with no ``language_shares`` (they need the sources' mixes; the phases' steps do not)."""
    copy = deepcopy(curriculum)
    for phase in copy.phases.values():
        phase.language_shares = {}
    return copy


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def render(p: DryRunPlan) -> str:
    lines = [
        f"world size          {p.world_size} ranks ({p.nodes} nodes x {p.gpus_per_node} GPUs)",
        f"micro batch         {p.micro_batch} sequences per rank",
        f"grad accumulation   {p.grad_accumulation} (global {p.global_batch} = {p.micro_batch} x "
        f"{p.world_size} x {p.grad_accumulation})",
        f"tokens per step     {p.global_batch} x {p.seq_len} = {p.tokens_per_step:,}",
        "steps per phase",
    ]
    start = 0
    for ph in p.phases:
        lines.append(f"  {ph['phase']:<16}  {ph['steps']:>9,} steps  ({format_token_count(ph['tokens'])} tokens, "
                     f"steps {start + 1:,}-{start + ph['steps']:,})")
        start += ph["steps"]
    lines.append(f"  {'total':<16}  {start:>9,} steps  ({format_token_count(start * p.tokens_per_step)} tokens)")
    lines.append("sequence per phase  (tokens per step constant; micro and global batch scaled by seq_len)")
    for ph in p.phases:
        lines.append(f"  {ph['phase']:<16}  seq_len {ph['seq_len']:>6,}  RoPE theta {ph['rope_theta']:>11,g}  "
                     f"global {ph['global_batch']:,} x micro {ph['micro_batch']:,} sequences  "
                     f"{ph['global_batch'] * ph['seq_len']:,} tokens per step")
    lines.append("fill-in-the-middle  (per file at read time; fim.* and curriculum.phases.<name>.fim.*)")
    for ph in p.phases:
        f = ph.get("fim")
        lines.append(f"  {ph['phase']:<16}  " + ("off" if f is None or not f.active else
                     f"rate {f.rate:g}, SPM {f.spm_rate:g} of those, truncate_or_pad {str(f.truncate_or_pad).lower()}"))
    if p.epochs is None:
        lines.append(f"data epochs         {p.sources_note}")
    else:
        lines.append("data epochs per source")
        lines += [f"  {name:<16}  {ep:.2f}" for name, ep in p.epochs.items()]
    if p.languages is not None:
        lines.append("languages per phase (share of the phase's tokens, from the sources' manifests)")
        lines += [f"  {phase:<16}  {language_mix(shares, unknown)}" for phase, (shares, unknown) in p.languages.items()]
    lines += [
        f"parameters          {p.parameters / 1e6:,.1f}M (vocabulary {p.vocab}: {p.vocab_note})",
        f"checkpoints         {p.checkpoints_written} written, {p.checkpoints_kept} kept "
        f"(interval ones pruned to keep_last, phase ends kept)",
        f"checkpoint size     ~{_gb(p.checkpoint_bytes)} each ({p.weight_bytes} + {ADAM_BYTES} bytes/parameter: "
        f"weights + fp32 master and Adam moments), ~{_gb(p.checkpoint_bytes * p.checkpoints_kept)} kept",
    ]
    if p.memory is not None:
        lines += render_estimate(p.memory)
        if p.memory_phase:
            lines.append(f"  largest phase     {p.memory_phase} (each phase estimated at its own micro batch x "
                         "seq_len; the peak is the largest)")
    return "\n".join(lines)


def language_mix(shares: dict[str, float], unknown: list[str], top: int = 8) -> str:
    """``python 50.0%, java 9.1%, ...`` (the largest ``top``, the rest summed), then the sources not known."""
    shown = [f"{lang} {share:.1%}" for lang, share in list(shares.items())[:top]]
    rest = sum(list(shares.values())[top:])
    if rest > 0:
        shown.append(f"{len(shares) - top} others {rest:.1%}")
    if unknown:
        shown.append(f"unknown: {', '.join(unknown)} (no language mix in their manifest.json)")
    return ", ".join(shown)


def report(cfg: TrainConfig) -> str:
    return render(plan(cfg))
