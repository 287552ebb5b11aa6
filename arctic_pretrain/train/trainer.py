"""The step loop: batch -> forward/backward -> guarded step -> callbacks -> checkpoint. Nothing else.

Where the run is in the curriculum is the consumed-token count; the phase, the mixture and the
learning rate are read from it every step, so there is no phase branch in this loop. Every decision
that must agree across ranks (skip this update, stop now) rides on the one all-reduce a step makes.
Progress, metrics, exports, evaluation and test-only fault injection are callbacks (train/callbacks/).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as tdist

from arctic_pretrain.data.fim import FimSettings
from arctic_pretrain.data.prefetch import Prefetcher
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.model.loss import LossFn, logits_loss
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.callbacks import Callback
from arctic_pretrain.train.checkpoint import CheckpointManager, tag_for
from arctic_pretrain.train.curriculum import BatchShape, Curriculum, Phase, phase_batch
from arctic_pretrain.train.guards import StepGuard

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what SLURM and schedulers send before pre-emption


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last state was saved first. Exit code 3."""

    exit_code = 3


@dataclass(frozen=True)
class LoopSettings:
    """How the loop walks: batch sizes, checkpoint cadence, an optional early stop."""

    global_batch: int
    micro_batch: int
    checkpoint_interval: int
    max_steps: int | None = None


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    source_loss: dict[str, float]
    seconds: float
    skipped: str | None
    stop_requested: bool
    data_seconds: float = 0.0  # time the step waited for its batches (the prefetcher reads ahead)


class Trainer:
    """Holds the run's state (step, consumed tokens) and walks the curriculum.

    ``engine`` is the DeepSpeed engine around the model, ``optimizer`` the skip-aware base optimizer it
    wraps; ``sampler`` + ``curriculum`` decide what each step reads; ``checkpoints`` writes and publishes.
    """

    def __init__(self, engine, optimizer, sampler: MixtureSampler, curriculum: Curriculum,
                 checkpoints: CheckpointManager, guard: StepGuard, settings: LoopSettings,
                 callbacks: Sequence[Callback] = (), loss_fn: LossFn = logits_loss,
                 fim: Mapping[str, FimSettings] | None = None) -> None:
        self.engine, self.optimizer = engine, optimizer
        self.sampler, self.curriculum = sampler, curriculum
        self.checkpoints, self.guard, self.settings = checkpoints, guard, settings
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        self.fim = {name: f for name, f in (fim or {}).items() if f.active}  # phase -> FIM its samples carry
        self.step = 0
        self.consumed_tokens = 0
        self.schedule_restart: int | None = None  # init_reset_schedule: the current phase's LR restarts here
        self.provenance: dict[str, Any] = {}  # init_from, tokenizer: recorded in every checkpoint
        self.device = dist.device()
        self.rank, self.world = dist.rank(), dist.world_size()
        self._signal: int | None = None
        self._prefetch: Prefetcher | None = None  # reads the step's micro-batches ahead (fit() owns it)
        self._model_theta: float | None = None  # the model's own RoPE base, for phases that set none

    # ---- callbacks -----------------------------------------------------------------------------
    def fire(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def log(self, record: dict[str, Any]) -> None:
        """A metric line: every callback's ``log_metrics`` sees it (JSONL + wandb sink, others)."""
        self.fire("log_metrics", record)

    def callback(self, name: str) -> Callback | None:
        return next((cb for cb in self.callbacks if cb.name == name), None)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self, phase_end: str | None = None) -> dict[str, Any]:
        phase = self.curriculum.phase_at(max(self.consumed_tokens - 1, 0))
        callbacks = {cb.name: s for cb in self.callbacks if (s := cb.state_dict()) is not None}
        return {"step": self.step, "consumed_tokens": self.consumed_tokens,
                "phase": phase.name, "phase_index": phase.index, "phase_end": phase_end,
                "world_size": self.world, "global_batch_size": self.settings.global_batch,
                "sampler": self.sampler.state_dict(), "guard": self.guard.state_dict(),
                "schedule_restart": self.schedule_restart, "callbacks": callbacks, **self.provenance}

    def load_state_dict(self, state: dict[str, Any], *, metrics: bool = True) -> None:
        """Restore the position; ``metrics=False`` (a branch) keeps this run's own guard and callback state."""
        if state["global_batch_size"] != self.settings.global_batch:
            log.warning("checkpoint used global batch %d, this run %d: the curriculum continues by tokens, "
                        "the sample stream is re-cut", state["global_batch_size"], self.settings.global_batch)
        self.step = state["step"]
        self.consumed_tokens = state["consumed_tokens"]
        self.sampler.load_state_dict(state["sampler"])
        self.schedule_restart = state.get("schedule_restart")
        if state.get("init_from"):
            self.provenance["init_from"] = state["init_from"]
        if metrics:
            self.guard.load_state_dict(state["guard"])
            saved = dict(state.get("callbacks", {}))
            for cb in self.callbacks:
                if cb.name in saved:
                    cb.load_state_dict(saved[cb.name])

    def save(self, phase_end: str | None = None) -> str:
        tag = tag_for(self.step)
        self.checkpoints.save(self.engine, self.step, self.state_dict(phase_end),
                              before_publish=lambda: self.fire("checkpoint_written", tag))
        self.fire("post_checkpoint", tag, phase_end)
        return tag

    # ---- the loop ------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def batch_shape(self, phase: Phase) -> BatchShape:
        """The phase's sequence length and batch in sequences; tokens per step are the run's in every phase."""
        s = self.settings
        return phase_batch(phase.name, phase.seq_len, self.curriculum.tokens_per_step // s.global_batch,
                           s.global_batch, s.micro_batch)

    def set_rope(self, phase: Phase) -> None:
        """The phase's RoPE base (``model.rope_theta`` unless the phase sets one), applied before its first
        step reads; a resume re-applies it from the phase alone."""
        from arctic_pretrain.model.build import rope_theta, set_rope_theta

        if self._model_theta is None:
            self._model_theta = rope_theta(self.engine.module)
        theta = phase.rope_theta or self._model_theta
        if set_rope_theta(self.engine.module, theta):
            log.info("phase %s: RoPE theta %g (rotary frequencies recomputed; weights unchanged)", phase.name, theta)

    def train_step(self, phase: Phase) -> StepResult:
        start = time.perf_counter()
        shape = self.batch_shape(phase)
        micro = shape.micro_batch
        samples = self.sampler.global_batch(shape.global_batch, phase.weights, self.rank, self.world, shape.seq_len)
        if phase.name in self.fim:  # applied when the prefetcher reads them (data/fim.py)
            samples = [replace(s, fim=self.fim[phase.name]) for s in samples]
        n = len(self.sampler.names)
        sums = torch.zeros(2 * n + 1, dtype=torch.float64, device=self.device)  # per-source loss, tokens; stop
        reason, data_seconds = None, 0.0
        if self._prefetch is None:
            self._prefetch = Prefetcher(self.sampler.read, self.device)
        starts = range(self._prefetch.submit(samples, micro))
        for m in starts:
            batch = self._prefetch.get()  # read in a background thread, pinned, copied without blocking
            data_seconds += batch.wait_seconds
            loss_sum, count = self.loss_fn(self.engine, batch.input_ids, batch.position_ids)
            self.engine.backward(loss_sum.sum() / count.sum().clamp(min=1))
            src = batch.source_ids
            sums[:n].index_add_(0, src, loss_sum.detach().double())
            sums[n:2 * n].index_add_(0, src, count.double())
            if m == starts[-1]:  # before the optimizer runs: agree on the loss and on stopping
                sums[-1] = 1.0 if self._signal is not None else 0.0
                if self.world > 1:
                    tdist.all_reduce(sums)
                loss = float(sums[:n].sum() / sums[n:2 * n].sum().clamp(min=1))
                reason = self.guard.check(loss)
                self.optimizer.skip_requested = reason is not None
            self.engine.step()
        if reason is None and self.optimizer.skipped_last:
            reason = "nonfinite"  # finite loss, non-finite gradients
        self.guard.record(loss, reason)
        grad_norm = self.engine.get_global_grad_norm()
        values = sums.tolist()
        source_loss = {name: values[i] / values[n + i] for i, name in enumerate(self.sampler.names)
                       if values[n + i] > 0}
        return StepResult(loss, None if grad_norm is None else float(grad_norm), source_loss,
                          time.perf_counter() - start, reason, values[-1] > 0, data_seconds)

    def fit(self, resumed: bool = False) -> dict[str, Any]:
        """Train to the end of the curriculum, ``max_steps`` or a stop signal; returns where it stopped."""
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        status, steps_this_run = "done", 0
        self.fire("pre_train", resumed)
        try:
            while not self.curriculum.is_done(self.consumed_tokens):
                if self.settings.max_steps is not None and self.step >= self.settings.max_steps:
                    status = "max_steps"
                    break
                phase = self.curriculum.phase_at(self.consumed_tokens)
                lr = self.curriculum.lr_at(self.consumed_tokens, self.schedule_restart)
                self.set_lr(lr)
                self.set_rope(phase)
                self.fire("pre_step", phase)
                result = self.train_step(phase)
                self.step += 1
                steps_this_run += 1
                self.consumed_tokens += self.curriculum.tokens_per_step
                self.fire("post_step", phase, lr, result)
                finished = self.curriculum.finished_phase(self.consumed_tokens)
                if finished is not None:
                    self.save(phase_end=finished.name)
                    self.fire("phase_end", finished)
                elif (self.step % self.settings.checkpoint_interval == 0 or result.stop_requested
                      or self.guard.exhausted()):
                    self.save()
                if self.guard.exhausted():
                    raise TrainingDiverged(
                        f"{self.guard.consecutive_bad} consecutive steps with a non-finite loss or gradient "
                        f"(guards.max_consecutive_bad={self.guard.cfg.max_consecutive_bad}) at step {self.step}; "
                        f"saved {self.checkpoints.latest_tag()}. Lower the learning rate or branch from an "
                        "earlier checkpoint (init_from=...).")
                if result.stop_requested:
                    status = "preempted"
                    log.warning("stop signal received: saved step %d, exiting", self.step)
                    break
            if status == "max_steps" and steps_this_run and self.checkpoints.latest_tag() != tag_for(self.step):
                self.save()  # keep the progress of a shortened run
        finally:
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None
            for s, handler in previous.items():
                signal.signal(s, handler)
            result = {"step": self.step, "consumed_tokens": self.consumed_tokens, "status": status}
            self.fire("post_train", result)
        return result

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
