"""Phase-end evaluation as a training callback: launch/train.py attaches it when
``evaluation.enabled=true``, so training never imports this stage.

It subclasses the step loop's ``Callback`` (arctic_pretrain/common/callbacks.py) and uses one event,
``phase_end``: rank 0 scores the phase export written just before (HumanEval pass@1 on the
first problems, held-out loss per source) and logs the figures as a metric line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as tdist

from arctic_pretrain.common.callbacks import Callback
from arctic_pretrain.evaluate.light import heldout_loss, light_humaneval

log = logging.getLogger(__name__)


class PhaseEndEvaluation(Callback):
    name = "phase_eval"

    def __init__(self, export_root: str | Path, sources: Mapping[str, Any], seq_len: int, heldout_windows: int,
                 humaneval_limit: int, max_new_tokens: int) -> None:
        self.export_root = Path(export_root)
        # name -> path, or -> an object with .path read at phase end (a demo run resolves its paths at start)
        self.sources, self.seq_len, self.windows = sources, seq_len, heldout_windows
        self.limit, self.max_new_tokens = humaneval_limit, max_new_tokens

    def phase_end(self, trainer, phase) -> None:
        rank0 = not tdist.is_initialized() or tdist.get_rank() == 0
        if rank0:
            trainer.log(self.evaluate(trainer, phase))
        if tdist.is_initialized():
            tdist.barrier()

    def evaluate(self, trainer, phase) -> dict:
        export = self.export_root / phase.name
        record = {"step": trainer.step, "phase": phase.name, "phase_index": phase.index,
                  "consumed_tokens": trainer.consumed_tokens, "event": "phase_eval", "time": time.time()}
        sources = {n: str(getattr(s, "path", s)) for n, s in self.sources.items()}
        record.update(heldout_loss(export, sources, windows=self.windows, seq_len=self.seq_len))
        if self.limit > 0:
            scores = light_humaneval(export, limit=self.limit, max_new_tokens=self.max_new_tokens)
            record.update({f"eval/{k}": v for k, v in scores.items()})
        log.info("phase %s evaluation: %s", phase.name, {k: v for k, v in record.items() if "/" in k})
        return record
