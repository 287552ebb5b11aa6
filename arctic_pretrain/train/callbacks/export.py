"""Phase-end HF exports: ``run_dir/export/<phase>/`` from the phase-end checkpoint just published.

A run killed between that checkpoint and its export writes the export when it resumes (pre_train).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from arctic_pretrain.model import EXPORT_META
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.callbacks import Callback
from arctic_pretrain.train.export import export_checkpoint

log = logging.getLogger(__name__)


class PhaseExport(Callback):
    name = "export"

    def __init__(self, run_dir: Path, tokenizer: str | None, seq_len: int | None = None,
                 phase_seq_lens: Mapping[str, int] | None = None) -> None:
        self.root = Path(run_dir) / "export"
        self.tokenizer = tokenizer
        self.seq_len = seq_len  # recorded in the export: evaluation scores documents at the trained length
        self.phase_seq_lens = dict(phase_seq_lens or {})  # phases trained at their own seq_len

    def pre_train(self, trainer, resumed: bool) -> None:
        if not resumed:
            return
        if dist.rank() == 0:
            for tag in trainer.checkpoints.complete_tags():
                state = trainer.checkpoints.read_state(tag)
                phase = state.get("phase_end")
                if phase and not (self.root / phase / EXPORT_META).is_file():
                    log.info("writing the missing export of phase %s from %s", phase, tag)
                    self._export(trainer.checkpoints.root / tag, phase, state["phase_index"])
        dist.barrier()

    def phase_end(self, trainer, phase) -> None:
        if dist.rank() == 0:
            self._export(trainer.checkpoints.root / trainer.checkpoints.latest_tag(), phase.name, phase.index)
        dist.barrier()

    def _export(self, tag_dir: Path, phase: str, index: int) -> Path:
        return export_checkpoint(tag_dir, self.root / phase, tokenizer=self.tokenizer,
                                 meta={"phase": phase, "phase_index": index,
                                       "seq_len": self.phase_seq_lens.get(phase, self.seq_len)})
