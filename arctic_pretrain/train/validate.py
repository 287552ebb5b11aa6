"""Cross-field rules, checked before any rank trains. Every error names the key and the value."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from arctic_pretrain.common.config import ConfigError, require
from arctic_pretrain.common.units import format_token_count, parse_token_count

if TYPE_CHECKING:
    from arctic_pretrain.data.fim import FimTokens
    from arctic_pretrain.data.shards import TokenSource
    from arctic_pretrain.train.config import TrainConfig

ATTENTION = ("auto", "flash_attention_2", "sdpa", "flex_attention", "eager")
DECAYS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
WANDB_MODES = ("online", "offline", "disabled")
WEIGHTINGS = ("explicit", "natural")
log = logging.getLogger(__name__)


def validate_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Static checks that need no data on disk."""
    m = cfg.model
    for key in ("hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads", "max_seq_len"):
        require(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "must be positive")
    require(m.hidden_size % m.num_heads == 0, "model.num_heads", m.num_heads,
             f"must divide model.hidden_size={m.hidden_size}")
    require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", m.num_kv_heads,
             f"must divide model.num_heads={m.num_heads}")
    require(m.attention in ATTENTION, "model.attention", m.attention, f"must be one of {ATTENTION}")
    require(m.vocab_size is None or m.vocab_size > 0, "model.vocab_size", m.vocab_size, "must be positive")
    require(m.vocab_multiple > 0, "model.vocab_multiple", m.vocab_multiple, "must be positive")

    t = cfg.training
    require(t.seq_len > 1, "training.seq_len", t.seq_len, "must be at least 2")
    require(t.seq_len <= m.max_seq_len, "training.seq_len", t.seq_len,
             f"longer than the model holds (model.max_seq_len={m.max_seq_len})")
    require(t.micro_batch_size > 0, "training.micro_batch_size", t.micro_batch_size, "must be positive")
    require(t.global_batch_size > 0, "training.global_batch_size", t.global_batch_size, "must be positive")
    per_step = t.micro_batch_size * world_size
    require(t.global_batch_size % per_step == 0, "training.global_batch_size", t.global_batch_size,
             f"must be a multiple of micro_batch_size x ranks = {t.micro_batch_size} x {world_size}")

    phases = cfg.curriculum.phases
    require(len(phases) > 0, "curriculum.phases", dict(phases), "needs at least one phase")
    sources = cfg.data.sources
    for name, phase in phases.items():
        key = f"curriculum.phases.{name}"
        try:
            tokens = parse_token_count(phase.tokens, field=f"{key}.tokens")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        require(tokens > 0, f"{key}.tokens", phase.tokens, "phase budget must be positive")
        require(len(phase.mixture) > 0, f"{key}.mixture", dict(phase.mixture), "names no data source")
        for src, weight in phase.mixture.items():
            require(src in sources, f"{key}.mixture.{src}", weight,
                     f"no such data source (data.sources has {sorted(sources)})")
            require(weight >= 0, f"{key}.mixture.{src}", weight, "weights must not be negative")
        require(sum(phase.mixture.values()) > 0, f"{key}.mixture", dict(phase.mixture), "weights are all zero")
        require(phase.weighting in WEIGHTINGS, f"{key}.weighting", phase.weighting, f"must be one of {WEIGHTINGS}")
        for src, share in phase.pinned.items():
            require(src in phase.mixture, f"{key}.pinned.{src}", share, "pinned source is not in the mixture")
            require(0 < share < 1, f"{key}.pinned.{src}", share, "a pinned share must be in (0, 1)")
        require(sum(phase.pinned.values()) < 1 or len(phase.pinned) == len(phase.mixture), f"{key}.pinned",
                 dict(phase.pinned), "pinned shares leave nothing for the other sources")
        for lang, share in phase.language_shares.items():
            require(0 < share < 1, f"{key}.language_shares.{lang}", share, "a language share must be in (0, 1)")
        lr = phase.lr
        require(lr.peak_lr > 0, f"{key}.lr.peak_lr", lr.peak_lr, "must be positive")
        require(0 <= lr.end_lr <= lr.peak_lr, f"{key}.lr.end_lr", lr.end_lr, "must be in [0, peak_lr]")
        require(lr.warmup_steps >= 0, f"{key}.lr.warmup_steps", lr.warmup_steps, "must not be negative")
        require(lr.decay in DECAYS, f"{key}.lr.decay", lr.decay, f"must be one of {DECAYS}")
        validate_phase_shape(cfg, name, phase)
    for name, src in sources.items():
        require(src.max_epochs > 0, f"data.sources.{name}.max_epochs", src.max_epochs, "must be positive")
    for name in cfg.checkpoint.accept_changed_sources:
        require(name in sources, "checkpoint.accept_changed_sources", list(cfg.checkpoint.accept_changed_sources),
                f"{name!r} is not a data source (data.sources has {sorted(sources)})")

    ds = cfg.deepspeed
    require(ds.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", ds.zero_stage, "must be 0, 1, 2 or 3")
    require(not ds.offload_param or ds.zero_stage == 3, "deepspeed.offload_param", ds.offload_param,
             "parameter offload needs deepspeed.zero_stage=3")
    require(ds.precision in PRECISIONS, "deepspeed.precision", ds.precision, f"must be one of {PRECISIONS}")
    require(cfg.checkpoint.interval > 0, "checkpoint.interval", cfg.checkpoint.interval, "must be positive")
    require(cfg.checkpoint.keep_last > 0, "checkpoint.keep_last", cfg.checkpoint.keep_last, "must be positive")
    require(cfg.logging.interval > 0, "logging.interval", cfg.logging.interval, "must be positive")
    require(cfg.logging.wandb_mode in WANDB_MODES, "logging.wandb_mode", cfg.logging.wandb_mode,
             f"must be one of {WANDB_MODES}")
    require(not cfg.evaluation.enabled or cfg.checkpoint.export_phases, "evaluation.enabled", True,
             "phase evaluation scores the phase exports: needs checkpoint.export_phases=true")
    ev = cfg.evaluation
    require(ev.interval >= 0, "evaluation.interval", ev.interval, "must be 0 (off) or a number of steps")
    require(ev.aligned_limit is None or ev.aligned_limit > 0, "evaluation.aligned_limit", ev.aligned_limit,
            "must be positive (or null for every problem)")
    g = cfg.guards
    require(g.max_consecutive_bad > 0, "guards.max_consecutive_bad", g.max_consecutive_bad, "must be positive")
    require(g.spike_zscore is None or g.spike_zscore > 0, "guards.spike_zscore", g.spike_zscore, "must be positive")
    require(1 < g.spike_min_window <= g.spike_window, "guards.spike_min_window", g.spike_min_window,
             f"must be in (1, guards.spike_window={g.spike_window}]")
    require(len(cfg.optimizer.betas) == 2, "optimizer.betas", list(cfg.optimizer.betas), "needs two values")
    validate_profile(cfg, world_size)
    validate_fim(cfg)


def validate_fim(cfg: TrainConfig) -> None:
    """fim.* and every phase's own fim.* are shares in [0, 1]."""
    scopes = [("fim", cfg.fim)] + [(f"curriculum.phases.{n}.fim", p.fim) for n, p in cfg.curriculum.phases.items()]
    for key, f in scopes:
        for name in ("rate", "spm_rate"):
            value = getattr(f, name)
            require(value is None or 0 <= value <= 1, f"{key}.{name}", value, "must be in [0, 1]")


def fim_tokens(cfg: TrainConfig, name: str, eos: int) -> FimTokens | None:
    """The FIM token ids of the run's tokenizer when a phase uses FIM (None otherwise); ConfigError naming
    the tokenizer when it cannot be loaded or lacks them."""
    from arctic_pretrain.data.fim import FimTokens, phase_settings

    active = [p for p, f in phase_settings(cfg.fim, cfg.curriculum.phases).items() if f.active]
    if not active:
        return None
    key = "tokenizer" if cfg.tokenizer else "tokenizer (unset: the sources' manifest tokenizer.name)"
    try:
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(name).get_vocab()
    except Exception as err:  # noqa: BLE001 (any loader failure: report it with the key, before training)
        raise ConfigError(f"{key}={name!r}: cannot be loaded ({type(err).__name__}: {str(err)[:300]}); "
                          f"fill-in-the-middle (phases {active}) needs its FIM token ids") from None
    try:
        return FimTokens.from_vocab(vocab, eos, where=f"{key}={name!r}")
    except ValueError as err:
        raise ConfigError(f"{err} (phases {active} have fim.rate > 0)") from None


def validate_phase_shape(cfg: TrainConfig, name: str, phase) -> None:
    """A phase's own ``seq_len`` fits the model and splits the run's tokens per step into whole micro-batches;
    its ``rope_theta`` is a positive base."""
    from arctic_pretrain.train.curriculum import phase_batch

    key, m, t = f"curriculum.phases.{name}", cfg.model, cfg.training
    if phase.seq_len is not None:
        require(phase.seq_len > 1, f"{key}.seq_len", phase.seq_len, "must be at least 2 (or null: training.seq_len)")
        require(phase.seq_len <= m.max_seq_len, f"{key}.seq_len", phase.seq_len,
                f"longer than the model holds (model.max_seq_len={m.max_seq_len}: set it to the longest phase's "
                "seq_len from the run's start, it fixes the RoPE positions)")
        phase_batch(name, phase.seq_len, t.seq_len, t.global_batch_size, t.micro_batch_size)
    require(phase.rope_theta is None or phase.rope_theta > 0, f"{key}.rope_theta", phase.rope_theta,
            "must be positive (or null: model.rope_theta)")


def validate_profile(cfg: TrainConfig, world_size: int) -> None:
    """``profile.steps`` is [from, to] with 1 <= from <= to <= the run's last step; ranks exist."""
    p = cfg.profile
    for rank in p.ranks:
        require(0 <= rank < world_size, "profile.ranks", list(p.ranks), f"rank {rank} is not in 0..{world_size - 1}")
    require(p.top > 0, "profile.top", p.top, "must be positive")
    if not p.steps:
        return
    steps = list(p.steps)
    require(len(steps) == 2, "profile.steps", steps, "must be [from, to] (or [] for no profiling)")
    require(1 <= steps[0] <= steps[1], "profile.steps", steps, "needs 1 <= from <= to (1-based steps, inclusive)")
    from arctic_pretrain.train.curriculum import Curriculum
    from arctic_pretrain.train.dry_run import without_language_shares

    # the steps do not depend on the mixture's weights (the dry run counts them the same way, without data)
    total = Curriculum(without_language_shares(cfg.curriculum), cfg.training.global_batch_size * cfg.training.seq_len,
                       dict.fromkeys(cfg.data.sources, 1)).total_steps
    last, what = (cfg.max_steps, "max_steps") if cfg.max_steps is not None and cfg.max_steps < total else (
        total, "the curriculum's last step")
    require(steps[1] <= last, "profile.steps", steps, f"ends after {what} ({last})")


def validate_data_plan(cfg: TrainConfig, sources: dict[str, TokenSource]) -> None:
    """Checks against the data on disk: one tokenizer, enough tokens for every phase's planned reads."""
    tokenizers = {name: src.tokenizer for name, src in sources.items()}
    first_name, first = next(iter(tokenizers.items()))
    for name, tok in tokenizers.items():
        require(tok.sha256 == first.sha256 and tok.vocab_size == first.vocab_size,
                 f"data.sources.{name}.path", cfg.data.sources[name].path,
                 f"tokenized with {tok.name} but data.sources.{first_name} with {first.name}")
    vocab = cfg.model.vocab_size
    require(vocab is None or vocab >= first.vocab_size, "model.vocab_size", vocab,
             f"smaller than the tokenizer's vocabulary ({first.vocab_size})")
    from arctic_pretrain.train.curriculum import phase_languages

    sizes = {name: src.num_tokens for name, src in sources.items()}
    languages = {name: src.language_tokens for name, src in sources.items()}
    planned: dict[str, float] = {name: 0.0 for name in sources}
    for phase_name, phase in cfg.curriculum.phases.items():
        budget = parse_token_count(phase.tokens)
        weights = checked_phase_weights(phase_name, phase, sizes, languages)
        reached = phase_languages(weights, languages)[0] if phase.language_shares else {}
        for lang, share in phase.language_shares.items():
            if abs(reached.get(lang, 0.0) - share) > 0.005:
                log.warning("curriculum.phases.%s.language_shares.%s=%s: the sources' language mix allows %.3f "
                            "(see dry_run=true)", phase_name, lang, share, reached.get(lang, 0.0))
        seq_len = phase.seq_len or cfg.training.seq_len
        for src, share in weights.items():
            planned[src] += budget * share
            require(sources[src].num_windows(seq_len) > 0, f"curriculum.phases.{phase_name}.mixture.{src}",
                     phase.mixture[src],
                     f"source holds {sources[src].num_tokens} tokens, less than one sequence of {seq_len}")
    seq_len = cfg.training.seq_len
    for name, tokens in planned.items():
        available = sources[name].num_windows(seq_len) * seq_len
        allowed = cfg.data.sources[name].max_epochs * available
        require(tokens <= allowed * 1.01, f"data.sources.{name}.max_epochs", cfg.data.sources[name].max_epochs,
                 f"the curriculum plans {format_token_count(int(tokens))} tokens from a source of "
                 f"{format_token_count(available)} ({tokens / max(available, 1):.2f} epochs); "
                 "raise max_epochs or lower the phase budgets")


def checked_phase_weights(name: str, phase, sizes: dict[str, int], languages: dict) -> dict[str, float]:
    """``phase_weights``, with a language mix that cannot be measured reported against the phase's key."""
    from arctic_pretrain.train.curriculum import phase_weights

    try:
        return phase_weights(phase, sizes, languages)
    except ValueError as err:
        raise ConfigError(f"curriculum.phases.{name}.language_shares={dict(phase.language_shares)}: {err}") from None


def verify_sources(cfg: TrainConfig, sources: dict[str, TokenSource]) -> None:
    """Before the first step, every source of every phase: files and sizes against its manifest, token ids
    inside the vocabulary on a sample (a bad shard found in phase 3 would cost phases 1 and 2)."""
    for name, src in sources.items():
        try:
            src.verify(seed=cfg.seed)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.sources.{name}.path={cfg.data.sources[name].path!r}: {err}") from None


def check_tokenizer(cfg: TrainConfig, name: str) -> None:
    """The tokenizer the phase exports save must load now, not at the end of phase 1."""
    if not cfg.checkpoint.export_phases:
        return
    key = "tokenizer" if cfg.tokenizer else "tokenizer (unset: the sources' manifest tokenizer.name)"
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".json")
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"{key}={name!r}: no such file or folder; phase exports need the tokenizer "
                          "(set tokenizer=<folder or hub name> or checkpoint.export_phases=false)")
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 (any loader failure: report it with the key, before training)
        raise ConfigError(f"{key}={name!r}: cannot be loaded ({type(err).__name__}: {str(err)[:300]}); phase "
                          "exports need it (set tokenizer=<folder or hub name> or checkpoint.export_phases=false)"
                          ) from None
