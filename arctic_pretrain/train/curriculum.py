"""Phase, mixture and learning rate as pure functions of the consumed-token count.

Nothing here keeps state: a run restarted at any step computes the same phase, weights and LR from
the token count alone. A step belongs to the phase its first token falls in; a phase ends at the
first step boundary at or past its cumulative budget (budgets are rounded up to whole steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.common.units import parse_token_count
from arctic_pretrain.train.config import CurriculumConfig, LRScheduleConfig, PhaseConfig


@dataclass(frozen=True)
class Phase:
    index: int
    name: str
    start: int  # consumed tokens at the phase's first step
    end: int  # consumed tokens after its last step (a multiple of tokens_per_step)
    weights: dict[str, float]  # normalised, zero weights dropped
    lr: LRScheduleConfig
    seq_len: int | None = None  # None: training.seq_len
    rope_theta: float | None = None  # None: model.rope_theta

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BatchShape:
    """What one optimizer step reads in a phase: ``global_batch`` sequences of ``seq_len`` tokens, in
    micro-batches of ``micro_batch`` per rank."""

    seq_len: int
    global_batch: int
    micro_batch: int

    @property
    def tokens(self) -> int:
        return self.seq_len * self.global_batch


def phase_batch(name: str, seq_len: int | None, run_seq_len: int, global_batch: int, micro_batch: int) -> BatchShape:
    """A phase's batch at its own ``seq_len`` with the run's tokens per step and gradient accumulation: micro and
    global batch scaled by run_seq_len / seq_len. ConfigError, naming the phase and the numbers, when the
    micro-batch does not come out whole."""
    length = seq_len or run_seq_len
    if length == run_seq_len:
        return BatchShape(run_seq_len, global_batch, micro_batch)
    micro_tokens = micro_batch * run_seq_len
    if micro_tokens % length:
        raise ConfigError(
            f"curriculum.phases.{name}.seq_len={length}: tokens per step stay {global_batch * run_seq_len:,} "
            f"(training.global_batch_size={global_batch} x training.seq_len={run_seq_len}), so a micro-batch of "
            f"training.micro_batch_size={micro_batch} x {run_seq_len} = {micro_tokens} tokens must hold whole "
            f"sequences of {length}: {micro_tokens} / {length} = {micro_tokens / length:g}. Choose a seq_len that "
            f"divides {micro_tokens}, or raise training.micro_batch_size (and global_batch_size with it)")
    scale = micro_tokens // length
    return BatchShape(length, global_batch * scale // micro_batch, scale)


def phase_weights(phase: PhaseConfig, source_tokens: dict[str, int] | None = None,
                  source_languages: dict[str, dict[str, int] | None] | None = None) -> dict[str, float]:
    """Normalised sampling shares: pinned shares first (with those ``language_shares`` computes), the rest
    by explicit or natural weighting."""
    pinned = {**phase.pinned, **language_pins(phase, source_tokens, source_languages)}
    free = {src: w for src, w in phase.mixture.items() if w > 0 and src not in pinned}
    if phase.weighting == "natural":
        if source_tokens is None:
            raise ValueError("natural weighting needs the sources' token counts")
        free = {src: w * source_tokens[src] for src, w in free.items()}
    shares = {src: float(s) for src, s in pinned.items()}
    rest, total = 1.0 - sum(shares.values()), sum(free.values())
    if total > 0:
        shares.update({src: rest * w / total for src, w in free.items()})
    norm = sum(shares.values())
    return {src: s / norm for src, s in shares.items() if s > 0}


def language_fractions(source_languages: dict[str, dict[str, int] | None], names) -> dict[str, dict[str, float]]:
    """Each named source's tokens per language as fractions; ValueError naming the sources that record none."""
    unknown = sorted(n for n in names if not (source_languages.get(n) and sum(source_languages[n].values())))
    if unknown:
        raise ValueError(f"sources {unknown} record no language mix in their manifest.json (metadata.language, "
                         "metadata.language_tokens, or shards named <language>-...); rewrite them with this "
                         "version's stages, or drop the phase's language_shares")
    return {n: {lang: t / sum(source_languages[n].values()) for lang, t in source_languages[n].items()}
            for n in names}


def language_pins(phase: PhaseConfig, source_tokens: dict[str, int] | None,
                  source_languages: dict[str, dict[str, int] | None] | None) -> dict[str, float]:
    """The pinned shares that bring each language of ``phase.language_shares`` to its share of the phase.

    Each such language moves through the mixture's one unpinned source of only that language (phase 3's
    high_quality_python); the other sources keep their pins and their split of the rest, so every language's
    share is linear in these pins: one small linear system. A target the data cannot reach (the language
    already exceeds it without its source) is clamped to [0, the unpinned rest]; ``phase_languages`` shows
    what the phase then gets."""
    if not phase.language_shares:
        return {}
    if source_languages is None:
        raise ValueError("language_shares needs the sources' measured language mix")
    active = [src for src, w in phase.mixture.items() if w > 0]
    frac = language_fractions(source_languages, active)
    movers = {}
    for lang in phase.language_shares:
        only = [src for src in active if src not in phase.pinned and set(frac[src]) == {lang}]
        if len(only) != 1:
            raise ValueError(f"language_shares.{lang}: needs exactly one unpinned mixture source of only {lang} "
                             f"to raise it with, found {only or 'none'}")
        movers[lang] = only[0]
    free = {src: phase.mixture[src] for src in active if src not in phase.pinned and src not in movers.values()}
    if phase.weighting == "natural":
        if source_tokens is None:
            raise ValueError("natural weighting needs the sources' token counts")
        free = {src: w * source_tokens[src] for src, w in free.items()}
    total = sum(free.values())
    rest = 1.0 - sum(phase.pinned.values())
    langs = list(movers)
    pool = np.array([sum(w / total * frac[s].get(lang, 0.0) for s, w in free.items()) if total else 0.0
                     for lang in langs])  # each language's fraction of the free pool
    fixed = np.array([sum(p * frac[s].get(lang, 0.0) for s, p in phase.pinned.items()) for lang in langs])
    target = np.array([phase.language_shares[lang] for lang in langs])
    # share(lang) = fixed + x_lang + (rest - sum(x)) * pool  ->  (I - pool 1^T) x = target - fixed - rest * pool
    x = np.linalg.solve(np.eye(len(langs)) - np.outer(pool, np.ones(len(langs))), target - fixed - rest * pool)
    x = np.clip(x, 0.0, rest)
    if x.sum() > rest:
        x *= rest / x.sum()
    return {movers[lang]: float(v) for lang, v in zip(langs, x, strict=True)}


def phase_languages(weights: dict[str, float], source_languages: dict[str, dict[str, int] | None]
                    ) -> tuple[dict[str, float], list[str]]:
    """Each language's share of a phase's tokens under its sampling ``weights``, and the sources whose mix
    is unknown (their share is left out)."""
    known = [s for s in weights if source_languages.get(s) and sum(source_languages[s].values())]
    frac = language_fractions(source_languages, known)
    out: dict[str, float] = {}
    for src in known:
        for lang, f in frac[src].items():
            out[lang] = out.get(lang, 0.0) + weights[src] * f
    return dict(sorted(out.items(), key=lambda kv: -kv[1])), sorted(set(weights) - set(known))


def lr_in_phase(schedule: LRScheduleConfig, step: int, total_steps: int) -> float:
    """LR of the phase's ``step``-th optimizer step (0-based). Warmup reaches peak at step warmup-1."""
    warmup = min(schedule.warmup_steps, total_steps)
    if step < warmup:
        frac = (step + 1) / warmup
        return schedule.warmup_start_lr + (schedule.peak_lr - schedule.warmup_start_lr) * frac
    if schedule.decay == "constant":
        return schedule.peak_lr
    decay_steps = max(total_steps - warmup - 1, 1)
    progress = min(max((step - warmup) / decay_steps, 0.0), 1.0)
    if schedule.decay == "cosine":
        return schedule.end_lr + (schedule.peak_lr - schedule.end_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule.decay == "linear":
        return schedule.peak_lr + (schedule.end_lr - schedule.peak_lr) * progress
    raise ValueError(f"unknown decay {schedule.decay!r}")


class Curriculum:
    """Walks the phases in the order configured, ``tokens_per_step`` tokens per optimizer step."""

    def __init__(self, cfg: CurriculumConfig, tokens_per_step: int, source_tokens: dict[str, int] | None = None,
                 source_languages: dict[str, dict[str, int] | None] | None = None) -> None:
        if tokens_per_step <= 0:
            raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step}")
        self.tokens_per_step = tokens_per_step
        self.phases: list[Phase] = []
        budget_end, start = 0, 0
        for index, (name, phase) in enumerate(cfg.phases.items()):
            budget_end += parse_token_count(phase.tokens, field=f"curriculum.phases.{name}.tokens")
            end = math.ceil(budget_end / tokens_per_step) * tokens_per_step
            weights = phase_weights(phase, source_tokens, source_languages)
            self.phases.append(Phase(index, name, start, max(end, start + tokens_per_step), weights, phase.lr,
                                     phase.seq_len, phase.rope_theta))
            start = self.phases[-1].end

    @property
    def total_tokens(self) -> int:
        return self.phases[-1].end

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.tokens_per_step

    def phase_at(self, consumed: int) -> Phase:
        """The phase that the step starting at ``consumed`` tokens belongs to (the last one past the end)."""
        for phase in self.phases:
            if consumed < phase.end:
                return phase
        return self.phases[-1]

    def is_done(self, consumed: int) -> bool:
        return consumed >= self.total_tokens

    def finished_phase(self, consumed: int) -> Phase | None:
        """The phase whose last step ends exactly at ``consumed`` tokens, if any."""
        for phase in self.phases:
            if consumed == phase.end:
                return phase
        return None

    def lr_at(self, consumed: int, restart: int | None = None) -> float:
        """LR of the step starting at ``consumed``; ``restart`` (a branch with init_reset_schedule)
        makes the phase that contains it run its schedule anew from there."""
        phase = self.phase_at(consumed)
        start = restart if restart is not None and phase.start <= restart < phase.end else phase.start
        step = (consumed - start) // self.tokens_per_step
        return lr_in_phase(phase.lr, step, (phase.end - start) // self.tokens_per_step)

    def describe(self) -> list[dict]:
        tps = self.tokens_per_step
        return [{"phase": p.name, "start_step": p.start // tps, "steps": p.tokens // tps, "tokens": p.tokens,
                 "weights": p.weights, **({"seq_len": p.seq_len} if p.seq_len else {}),
                 **({"rope_theta": p.rope_theta} if p.rope_theta else {})} for p in self.phases]
