"""Step guards: skip an update whose loss or gradients are not finite, or whose loss spikes.

The decision is collective: the loss is all-reduced before the optimizer step, so every rank skips
the same steps. A skipped step changes nothing (no parameter update, no Adam moment update, no step
count), as OLMo-core's skip-step optimizers do; the data is consumed, so the run moves on.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.distributed as tdist

from arctic_pretrain.train.config import GuardsConfig


class _SkipStepMixin:
    """A torch optimizer that can be told to skip its next step, and skips by itself on non-finite grads."""

    skip_requested: bool = False
    skipped_last: bool = False

    def _grads_finite(self) -> bool:
        """One flag for all ranks, computed on the device with a single host sync (NCCL needs CUDA tensors)."""
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            finite = torch.stack([torch.isfinite(g).all().to(device) for g in grads]).all().float()
        else:
            finite = torch.ones((), device=device)
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)  # every rank steps its partition: collective is safe
        return bool(finite.item() > 0)

    @torch.no_grad()
    def step(self, closure=None):
        self.skipped_last = self.skip_requested or not self._grads_finite()
        self.skip_requested = False
        if self.skipped_last:
            return None
        return super().step(closure)


class GuardedAdamW(_SkipStepMixin, torch.optim.AdamW):
    pass


def make_optimizer(param_groups: list[dict], betas, eps: float, weight_decay: float, cpu_offload: bool):
    """AdamW that honours skip requests: torch's (fused on CUDA) or DeepSpeed's CPU Adam for ZeRO-Offload."""
    if cpu_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        cls = type("GuardedCPUAdam", (_SkipStepMixin, DeepSpeedCPUAdam), {})
        return cls(param_groups, lr=0.0, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adamw_mode=True)
    kwargs: dict[str, Any] = {"fused": True} if torch.cuda.is_available() else {"foreach": True}
    return GuardedAdamW(param_groups, lr=0.0, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kwargs)


class StepGuard:
    """Decides whether a step's update is applied; counts what it skipped."""

    def __init__(self, cfg: GuardsConfig) -> None:
        self.cfg = cfg
        self.window: deque[float] = deque(maxlen=cfg.spike_window)
        self.counts = {"nonfinite": 0, "spike": 0}
        self.consecutive_bad = 0

    def check(self, loss: float) -> str | None:
        """The reason to skip this step (before the optimizer runs), or None."""
        if not math.isfinite(loss):
            return "nonfinite" if self.cfg.skip_nonfinite else None
        z = self.cfg.spike_zscore
        if z is not None and len(self.window) >= self.cfg.spike_min_window:
            mean = sum(self.window) / len(self.window)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.window) / len(self.window))
            if (loss - mean) / max(std, 1e-8) > z:
                return "spike"
        return None

    def record(self, loss: float, reason: str | None) -> None:
        if reason is None:
            self.window.append(loss)
            self.consecutive_bad = 0
            return
        self.counts[reason] += 1
        self.consecutive_bad = self.consecutive_bad + 1 if reason == "nonfinite" else 0

    def exhausted(self) -> bool:
        return self.consecutive_bad >= self.cfg.max_consecutive_bad

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "counts": dict(self.counts), "consecutive_bad": self.consecutive_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.clear()
        self.window.extend(state["window"])
        self.counts = dict(state["counts"])
        self.consecutive_bad = state["consecutive_bad"]
