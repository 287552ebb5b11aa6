"""The step loop: batch -> forward/backward -> guarded step -> record -> checkpoint. Nothing else.

Where the run is in the curriculum is the consumed-token count; the phase, the mixture and the
learning rate are read from it every step, so there is no phase branch in this loop. Every decision
that must agree across ranks (skip this update, stop now) rides on the one all-reduce a step makes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.model.loss import packed_next_token_loss
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.checkpoint import CheckpointManager
from arctic_pretrain.train.config import FaultConfig
from arctic_pretrain.train.curriculum import Curriculum, Phase
from arctic_pretrain.train.guards import StepGuard
from arctic_pretrain.train.metrics import IntervalAverage, MetricsSink

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what SLURM and schedulers send before pre-emption


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last state was saved first."""


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    source_loss: dict[str, float]
    seconds: float
    skipped: str | None
    stop_requested: bool


class Trainer:
    def __init__(self, *, engine, optimizer, sampler: MixtureSampler, curriculum: Curriculum,
                 checkpoints: CheckpointManager, sink: MetricsSink, guard: StepGuard, run_dir: Path,
                 global_batch: int, micro_batch: int, log_interval: int, checkpoint_interval: int,
                 flops_per_token: float, peak_flops: float | None, on_phase_end=None, hf_config=None,
                 tokenizer: str | None = None, max_steps: int | None = None, faults: FaultConfig | None = None
                 ) -> None:
        self.engine = engine
        self.optimizer = optimizer  # the skip-aware base optimizer DeepSpeed wraps
        self.sampler = sampler
        self.curriculum = curriculum
        self.checkpoints = checkpoints
        self.sink = sink
        self.guard = guard
        self.run_dir = run_dir
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.log_interval = log_interval
        self.checkpoint_interval = checkpoint_interval
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.on_phase_end = on_phase_end
        self.hf_config = hf_config
        self.tokenizer = tokenizer
        self.max_steps = max_steps
        self.faults = faults or FaultConfig()
        self.step = 0
        self.consumed_tokens = 0
        self.schedule_restart: int | None = None  # init_reset_schedule: the current phase's LR restarts here
        self.provenance: dict[str, Any] = {}
        self.interval = IntervalAverage()
        self.device = dist.device()
        self.rank, self.world = dist.rank(), dist.world_size()
        self._signal: int | None = None

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self, phase_end: str | None = None) -> dict[str, Any]:
        phase = self.curriculum.phase_at(max(self.consumed_tokens - 1, 0))
        return {"step": self.step, "consumed_tokens": self.consumed_tokens,
                "phase": phase.name, "phase_index": phase.index, "phase_end": phase_end,
                "world_size": self.world, "global_batch_size": self.global_batch,
                "sampler": self.sampler.state_dict(), "interval": self.interval.state_dict(),
                "guard": self.guard.state_dict(), "schedule_restart": self.schedule_restart,
                "tokenizer": self.tokenizer, **self.provenance}

    def load_state_dict(self, state: dict[str, Any], *, metrics: bool = True) -> None:
        if state["global_batch_size"] != self.global_batch:
            log.warning("checkpoint used global batch %d, this run %d: the curriculum continues by tokens, "
                        "the sample stream is re-cut", state["global_batch_size"], self.global_batch)
        self.step = state["step"]
        self.consumed_tokens = state["consumed_tokens"]
        self.sampler.load_state_dict(state["sampler"])
        self.schedule_restart = state.get("schedule_restart")
        self.provenance = {k: state[k] for k in ("init_from",) if state.get(k)}
        if metrics:
            self.interval.load_state_dict(state["interval"])
            self.guard.load_state_dict(state["guard"])

    def save(self, phase_end: str | None = None) -> str:
        return self.checkpoints.save(self.engine, self.step, self.state_dict(phase_end), self.hf_config,
                                     before_publish=lambda: self._maybe_die("during_save"))

    # ---- the loop ------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, phase: Phase) -> StepResult:
        start = time.perf_counter()
        samples = self.sampler.global_batch(self.global_batch, phase.weights, self.rank, self.world)
        n = len(self.sampler.names)
        sums = torch.zeros(2 * n + 1, dtype=torch.float64, device=self.device)  # per-source loss, tokens; stop
        reason = None
        starts = range(0, len(samples), self.micro_batch)
        for m in starts:
            batch = self.sampler.read(samples[m:m + self.micro_batch])
            ids = torch.from_numpy(batch.input_ids).to(self.device)
            pos = torch.from_numpy(batch.position_ids).to(self.device)
            logits = self.engine(input_ids=ids, position_ids=pos, use_cache=False).logits
            loss_sum, count = packed_next_token_loss(logits, ids, pos)
            if self._poisoned(self.step + 1) and self.rank == 0:
                loss_sum = loss_sum * float("nan")  # test-only poison
            if self.faults.spike_at_step == self.step + 1 and self.rank == 0:
                loss_sum = loss_sum * 100.0  # test-only spike
            self.engine.backward(loss_sum.sum() / count.sum().clamp(min=1))
            src = torch.from_numpy(batch.source_ids).to(self.device)
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
                          time.perf_counter() - start, reason, values[-1] > 0)

    def fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        bar = tqdm(total=self.curriculum.total_steps, initial=self.step, disable=self.rank != 0,
                   unit="step", dynamic_ncols=True)
        status, steps_this_run = "done", 0
        try:
            while not self.curriculum.is_done(self.consumed_tokens):
                if self.max_steps is not None and self.step >= self.max_steps:
                    status = "max_steps"
                    break
                phase = self.curriculum.phase_at(self.consumed_tokens)
                lr = self.curriculum.lr_at(self.consumed_tokens, self.schedule_restart)
                self.set_lr(lr)
                result = self.train_step(phase)
                self.step += 1
                steps_this_run += 1
                self.consumed_tokens += self.curriculum.tokens_per_step
                self.record(phase, lr, result)
                bar.update(1)
                bar.set_postfix(phase=phase.name, loss=f"{result.loss:.3f}", lr=f"{lr:.2e}")
                self._maybe_die("after_step")
                finished = self.curriculum.finished_phase(self.consumed_tokens)
                if finished is not None:
                    self.save(phase_end=finished.name)
                    self._maybe_die("phase_transition")
                    if self.on_phase_end is not None:
                        self.on_phase_end(self, finished)
                elif self.step % self.checkpoint_interval == 0 or result.stop_requested or self.guard.exhausted():
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
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if status == "max_steps" and steps_this_run and self.checkpoints.latest_tag() != f"step_{self.step:08d}":
            self.save()  # keep the progress of a shortened run
        return {"step": self.step, "consumed_tokens": self.consumed_tokens, "status": status}

    def _poisoned(self, step: int) -> bool:
        first = self.faults.nan_loss_at_step
        return first is not None and first <= step < first + self.faults.nan_loss_count

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _maybe_die(self, point: str) -> None:
        """Fault injection (tests only): rank 0 SIGKILLs itself at the configured step and point."""
        if self.faults.kill_at_step != self.step or self.faults.kill_point != point or self.rank != 0:
            return
        log.warning("fault injection: SIGKILL at step %d (%s)", self.step, self.faults.kill_point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    def record(self, phase: Phase, lr: float, result: StepResult) -> None:
        tokens_per_s = self.curriculum.tokens_per_step / max(result.seconds, 1e-9)
        mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world) if self.peak_flops else None
        values: dict[str, float | None] = {"loss": result.loss, "grad_norm": result.grad_norm,
                                           "tokens_per_s": tokens_per_s, "mfu": mfu, "step_seconds": result.seconds}
        values.update({f"loss/{k}": v for k, v in result.source_loss.items()})
        self.interval.add(values)
        if result.skipped:
            log.warning("step %d skipped (%s loss %.4g): no update applied", self.step, result.skipped, result.loss)
        end_of_phase = self.curriculum.finished_phase(self.consumed_tokens) is not None
        if self.step % self.log_interval and not end_of_phase and not result.skipped:
            return
        averaged = self.interval.pop()
        record = {"step": self.step, "phase": phase.name, "phase_index": phase.index,
                  "consumed_tokens": self.consumed_tokens, "lr": lr,
                  "loss": averaged.get("loss"), "grad_norm": averaged.get("grad_norm"),
                  "tokens_per_s": averaged.get("tokens_per_s"), "mfu": averaged.get("mfu"),
                  "step_seconds": averaged.get("step_seconds"), "time": time.time(),
                  "skipped": result.skipped, "skipped_nonfinite": self.guard.counts["nonfinite"],
                  "skipped_spike": self.guard.counts["spike"]}
        if torch.cuda.is_available():  # the accelerator's high-water mark, for sizing batches
            record["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        record.update({k: v for k, v in averaged.items() if k.startswith("loss/")})
        self.sink.write(record)
