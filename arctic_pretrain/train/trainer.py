"""The step loop: batch -> forward/backward -> step -> callbacks. Everything else lives elsewhere.

Where the run is in the curriculum is the consumed-token count; the phase, the mixture and the
learning rate are read from it every step, so there is no phase branch in this loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from arctic_pretrain.curriculum import Curriculum, Phase
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.checkpoint import CheckpointManager
from arctic_pretrain.train.loss import packed_next_token_loss
from arctic_pretrain.train.metrics import IntervalAverage, MetricsSink

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    source_loss: dict[str, float]
    source_tokens: dict[str, int]
    seconds: float


@dataclass
class TrainerState:
    step: int = 0
    consumed_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(self, *, engine, sampler: MixtureSampler, curriculum: Curriculum, checkpoints: CheckpointManager,
                 sink: MetricsSink, run_dir: Path, global_batch: int, micro_batch: int, log_interval: int,
                 checkpoint_interval: int, flops_per_token: float, peak_flops: float | None,
                 on_phase_end=None, hf_config=None, tokenizer: str | None = None, max_steps: int | None = None
                 ) -> None:
        self.engine = engine
        self.sampler = sampler
        self.curriculum = curriculum
        self.checkpoints = checkpoints
        self.sink = sink
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
        self.state = TrainerState()
        self.interval = IntervalAverage()
        self.device = dist.device()
        self.rank, self.world = dist.rank(), dist.world_size()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self, phase_end: str | None = None) -> dict[str, Any]:
        phase = self.curriculum.phase_at(max(self.state.consumed_tokens - 1, 0))
        return {"step": self.state.step, "consumed_tokens": self.state.consumed_tokens,
                "phase": phase.name, "phase_index": phase.index, "phase_end": phase_end,
                "world_size": self.world, "global_batch_size": self.global_batch,
                "sampler": self.sampler.state_dict(), "interval": self.interval.state_dict(),
                "tokenizer": self.tokenizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["global_batch_size"] != self.global_batch:
            log.warning("checkpoint used global batch %d, this run %d: the curriculum continues by tokens",
                        state["global_batch_size"], self.global_batch)
        self.state.step = state["step"]
        self.state.consumed_tokens = state["consumed_tokens"]
        self.sampler.load_state_dict(state["sampler"])
        self.interval.load_state_dict(state["interval"])

    def resume(self) -> bool:
        tag = self.checkpoints.latest_tag()
        if tag is None:
            return False
        self.load_state_dict(self.checkpoints.load(self.engine, tag))
        self.sink.truncate_after(self.state.step)
        log.info("resumed from %s: step %d, %d tokens consumed", tag, self.state.step, self.state.consumed_tokens)
        return True

    def save(self, phase_end: str | None = None) -> str:
        return self.checkpoints.save(self.engine, self.state.step, self.state_dict(phase_end), self.hf_config)

    # ---- the loop ------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, phase: Phase) -> StepResult:
        start = time.perf_counter()
        samples = self.sampler.global_batch(self.global_batch, phase.weights, self.rank, self.world)
        n_sources = len(self.sampler.names)
        sums = torch.zeros(2 * n_sources + 2, dtype=torch.float64, device=self.device)
        for m in range(0, len(samples), self.micro_batch):
            batch = self.sampler.read(samples[m:m + self.micro_batch])
            ids = torch.from_numpy(batch.input_ids).to(self.device)
            pos = torch.from_numpy(batch.position_ids).to(self.device)
            logits = self.engine(input_ids=ids, position_ids=pos, use_cache=False).logits
            loss_sum, count = packed_next_token_loss(logits, ids, pos)
            loss = loss_sum.sum() / count.sum().clamp(min=1)
            self.engine.backward(loss)
            self.engine.step()
            src = torch.from_numpy(batch.source_ids).to(self.device)
            sums[:n_sources].index_add_(0, src, loss_sum.detach().double())
            sums[n_sources:2 * n_sources].index_add_(0, src, count.double())
        sums[-2] = sums[:n_sources].sum()
        sums[-1] = sums[n_sources:2 * n_sources].sum()
        if self.world > 1:
            tdist.all_reduce(sums)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        values = sums.tolist()
        source_loss, source_tokens = {}, {}
        for i, name in enumerate(self.sampler.names):
            if values[n_sources + i] > 0:
                source_loss[name] = values[i] / values[n_sources + i]
                source_tokens[name] = int(values[n_sources + i])
        loss = values[-2] / max(values[-1], 1)
        return StepResult(loss, grad_norm, source_loss, source_tokens, time.perf_counter() - start)

    def fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        tps = self.curriculum.tokens_per_step
        bar = tqdm(total=self.curriculum.total_steps, initial=self.state.step, disable=self.rank != 0,
                   unit="step", dynamic_ncols=True)
        steps_this_run = 0
        while not self.curriculum.is_done(self.state.consumed_tokens):
            if self.max_steps is not None and self.state.step >= self.max_steps:
                break
            phase = self.curriculum.phase_at(self.state.consumed_tokens)
            lr = self.curriculum.lr_at(self.state.consumed_tokens)
            self.set_lr(lr)
            result = self.train_step(phase)
            self.state.step += 1
            steps_this_run += 1
            self.state.consumed_tokens += tps
            self.record(phase, lr, result)
            bar.update(1)
            bar.set_postfix(phase=phase.name, loss=f"{result.loss:.3f}", lr=f"{lr:.2e}")
            finished = self.curriculum.finished_phase(self.state.consumed_tokens)
            if finished is not None:
                self.save(phase_end=finished.name)
                if self.on_phase_end is not None:
                    self.on_phase_end(self, finished)
            elif self.state.step % self.checkpoint_interval == 0:
                self.save()
        bar.close()
        if not self.curriculum.is_done(self.state.consumed_tokens) and steps_this_run:
            self.save()  # stopped by max_steps: keep the progress
        return {"step": self.state.step, "consumed_tokens": self.state.consumed_tokens}

    def record(self, phase: Phase, lr: float, result: StepResult) -> None:
        tokens_per_s = self.curriculum.tokens_per_step / max(result.seconds, 1e-9)
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world)
        values: dict[str, float | None] = {"loss": result.loss, "grad_norm": result.grad_norm,
                                           "tokens_per_s": tokens_per_s, "mfu": mfu, "step_seconds": result.seconds}
        values.update({f"loss/{k}": v for k, v in result.source_loss.items()})
        self.interval.add(values)
        end_of_phase = self.curriculum.finished_phase(self.state.consumed_tokens) is not None
        if self.state.step % self.log_interval and not end_of_phase:
            return
        averaged = self.interval.pop()
        record = {"step": self.state.step, "phase": phase.name, "phase_index": phase.index,
                  "consumed_tokens": self.state.consumed_tokens, "lr": lr,
                  "loss": averaged.get("loss"), "grad_norm": averaged.get("grad_norm"),
                  "tokens_per_s": averaged.get("tokens_per_s"), "mfu": averaged.get("mfu"),
                  "step_seconds": averaged.get("step_seconds"), "time": time.time()}
        record.update({k: v for k, v in averaged.items() if k.startswith("loss/")})
        self.sink.write(record)
