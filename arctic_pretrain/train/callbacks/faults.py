"""Fault injection for the resume and guard tests: attached only when ``ARCTIC_PRETRAIN_FAULTS`` is set,
never part of a run's config.

    ARCTIC_PRETRAIN_FAULTS="kill_at_step=12,kill_point=during_save"
    ARCTIC_PRETRAIN_FAULTS="nan_loss_at_step=3,nan_loss_count=50"      ARCTIC_PRETRAIN_FAULTS="spike_at_step=10"
    ARCTIC_PRETRAIN_FAULTS="signal_at_step=6,signal_rank=1"

Rank 0 SIGKILLs itself at ``kill_point`` of ``kill_at_step`` (after_step | during_save: files written,
not published | phase_transition: phase-end checkpoint published, export not written); its loss is
made NaN (or 100x, a finite spike) at the given 1-based steps. The launcher takes the other ranks down.
Rank ``signal_rank`` alone sends itself SIGUSR1 as step ``signal_at_step`` begins (a pre-emption notice that
reached one process only): every rank must still stop after that step.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, fields

from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.callbacks import Callback

log = logging.getLogger(__name__)
ENV = "ARCTIC_PRETRAIN_FAULTS"
KILL_POINTS = ("after_step", "during_save", "phase_transition")


@dataclass
class Faults:
    nan_loss_at_step: int | None = None
    nan_loss_count: int = 1
    spike_at_step: int | None = None
    kill_at_step: int | None = None
    kill_point: str = "after_step"
    signal_at_step: int | None = None
    signal_rank: int = 0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        known = {f.name: f for f in fields(cls)}
        values = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, _, value = item.partition("=")
            if key not in known:
                raise ValueError(f"{ENV}: unknown fault {key!r} (known: {sorted(known)})")
            values[key] = value if key == "kill_point" else int(value)
        faults = cls(**values)
        if faults.kill_point not in KILL_POINTS:
            raise ValueError(f"{ENV}: kill_point={faults.kill_point!r}: one of {KILL_POINTS}")
        return faults


class FaultInjection(Callback):
    name = "faults"

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        spec = os.environ.get(ENV)
        return cls(Faults.parse(spec)) if spec else None

    def pre_train(self, trainer, resumed: bool) -> None:
        if dist.rank() != 0 or (self.faults.nan_loss_at_step is None and self.faults.spike_at_step is None):
            return
        inner = trainer.loss_fn

        def poisoned(model, input_ids, position_ids):
            loss_sum, count = inner(model, input_ids, position_ids)
            step, f = trainer.step + 1, self.faults
            if f.nan_loss_at_step is not None and f.nan_loss_at_step <= step < f.nan_loss_at_step + f.nan_loss_count:
                loss_sum = loss_sum * float("nan")
            if f.spike_at_step == step:
                loss_sum = loss_sum * 100.0
            return loss_sum, count

        trainer.loss_fn = poisoned

    def pre_step(self, trainer, phase) -> None:
        if self.faults.signal_at_step == trainer.step + 1 and dist.rank() == self.faults.signal_rank:
            log.warning("fault injection: SIGUSR1 to rank %d at step %d", dist.rank(), trainer.step + 1)
            os.kill(os.getpid(), signal.SIGUSR1)

    def post_step(self, trainer, phase, lr, result) -> None:
        self._maybe_die(trainer, "after_step")

    def checkpoint_written(self, trainer, tag: str) -> None:
        self._maybe_die(trainer, "during_save")

    def post_checkpoint(self, trainer, tag: str, phase_end: str | None) -> None:
        if phase_end is not None:
            self._maybe_die(trainer, "phase_transition")

    def _maybe_die(self, trainer, point: str) -> None:
        if self.faults.kill_at_step != trainer.step or self.faults.kill_point != point or dist.rank() != 0:
            return
        log.warning("fault injection: SIGKILL at step %d (%s)", trainer.step, point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
