"""The step loop's callback protocol (OLMo-core's shape), in the base because it needs no torch: the train
stage's loop calls the events below in order, and other stages' callbacks (evaluate's PhaseEndEvaluation)
subclass ``Callback`` without importing train. Each callback keeps its own state, which is saved in the
checkpoint under its ``name``.

Events, in the order one step fires them:
    pre_train(trainer, resumed)            once, after any restore
    pre_step(trainer, phase)               before the step's batches are read
    post_step(trainer, phase, lr, result)  after the update (or the guard's skip)
    checkpoint_written(trainer, tag)       files of every rank written, not yet published as latest
    post_checkpoint(trainer, tag, phase_end)   published; ``phase_end`` names a finished phase or is None
    phase_end(trainer, phase)              after the phase-end checkpoint (exports, evaluation)
    log_metrics(trainer, record)           a metric line (from any callback, via ``trainer.log``)
    post_train(trainer, result)            once, at the end (also after max_steps or a stop signal)
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class: every event is a no-op; override what you need. ``name`` keys the checkpointed state."""

    name: str = "callback"

    def pre_train(self, trainer, resumed: bool) -> None: ...

    def pre_step(self, trainer, phase) -> None: ...

    def post_step(self, trainer, phase, lr: float, result) -> None: ...

    def checkpoint_written(self, trainer, tag: str) -> None: ...

    def post_checkpoint(self, trainer, tag: str, phase_end: str | None) -> None: ...

    def phase_end(self, trainer, phase) -> None: ...

    def log_metrics(self, trainer, record: dict[str, Any]) -> None: ...

    def post_train(self, trainer, result: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs to continue exactly (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


EVENTS = ("pre_train", "pre_step", "post_step", "checkpoint_written", "post_checkpoint", "phase_end",
          "log_metrics", "post_train")
