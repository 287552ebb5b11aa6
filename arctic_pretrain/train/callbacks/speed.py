"""Metric lines: per-step values averaged over the logging interval, with throughput and MFU.

The interval accumulator is this callback's checkpointed state, so a resumed run writes exactly the
lines an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from arctic_pretrain.train.callbacks import Callback
from arctic_pretrain.train.metrics import IntervalAverage

log = logging.getLogger(__name__)


class MetricsRecorder(Callback):
    """Turns step results into metric lines every ``interval`` steps (and at phase ends and skipped
    steps), then hands them to ``trainer.log`` (the sink and any other ``log_metrics`` callback)."""

    name = "metrics"

    def __init__(self, interval: int, flops_per_token: float | Mapping[str, float], peak_flops: float | None) -> None:
        """``flops_per_token``: one figure, or one per phase name (phases at their own seq_len)."""
        self.interval = interval
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.average = IntervalAverage()

    def post_step(self, trainer, phase, lr: float, result) -> None:
        tokens_per_step = trainer.curriculum.tokens_per_step
        tokens_per_s = tokens_per_step / max(result.seconds, 1e-9)
        flops = self.flops_per_token
        flops = flops[phase.name] if isinstance(flops, Mapping) else flops
        mfu = tokens_per_s * flops / (self.peak_flops * trainer.world) if self.peak_flops else None
        values: dict[str, float | None] = {"loss": result.loss, "grad_norm": result.grad_norm,
                                           "tokens_per_s": tokens_per_s, "mfu": mfu, "step_seconds": result.seconds,
                                           "data_seconds": result.data_seconds}
        values.update({f"loss/{k}": v for k, v in result.source_loss.items()})
        self.average.add(values)
        if result.skipped:
            log.warning("step %d skipped (%s loss %.4g): no update applied", trainer.step, result.skipped, result.loss)
        end_of_phase = trainer.curriculum.finished_phase(trainer.consumed_tokens) is not None
        if trainer.step % self.interval and not end_of_phase and not result.skipped:
            return
        averaged = self.average.pop()
        record = {"step": trainer.step, "phase": phase.name, "phase_index": phase.index,
                  "consumed_tokens": trainer.consumed_tokens, "lr": lr,
                  "loss": averaged.get("loss"), "grad_norm": averaged.get("grad_norm"),
                  "tokens_per_s": averaged.get("tokens_per_s"), "mfu": averaged.get("mfu"),
                  "step_seconds": averaged.get("step_seconds"), "data_seconds": averaged.get("data_seconds"),
                  "time": time.time(),
                  "skipped": result.skipped, "skipped_nonfinite": trainer.guard.counts["nonfinite"],
                  "skipped_spike": trainer.guard.counts["spike"]}
        if torch.cuda.is_available():  # the accelerator's high-water mark, for sizing batches
            record["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        record.update({k: v for k, v in averaged.items() if k.startswith("loss/")})
        trainer.log(record)

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
