"""Metric lines: written to metrics.jsonl and wandb (rank 0); the interval accumulator they are averaged with."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from arctic_pretrain.train.callbacks import Callback
from arctic_pretrain.train.config import LoggingConfig

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


class IntervalAverage:
    """Sums of per-step values since the last metric line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float | None]) -> None:
        for key, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class MetricsSink(Callback):
    """Append-only JSONL plus wandb, fed by ``trainer.log``. Only rank 0 has one with ``enabled=True``.
    A resumed run first drops the lines written after the checkpoint it restarts from."""

    name = "sink"

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict[str, Any], enabled: bool) -> None:
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.wandb_mode != "disabled":
            import wandb

            run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or Path(run_dir).name,
                                     id=run_id, resume="allow", dir=str(run_dir), mode=cfg.wandb_mode,
                                     config=config)

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def pre_train(self, trainer, resumed: bool) -> None:
        if resumed:
            self.truncate_after(trainer.step)

    def log_metrics(self, trainer, record: dict[str, Any]) -> None:
        self.write(record)

    def post_train(self, trainer, result: dict[str, Any]) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"])

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
