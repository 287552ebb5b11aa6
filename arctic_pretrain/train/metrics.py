"""Metric lines: written to metrics.jsonl and wandb (rank 0); the interval accumulator they are averaged with."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
from pathlib import Path
from typing import Any

from arctic_pretrain.common.io import atomic_write, read_jsonl
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
        settings = wandb_settings(cfg, Path(run_dir))
        if settings is not None:
            import wandb

            self._wandb = wandb.init(**settings, resume="allow", dir=str(run_dir), config=config)

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


WANDB_ID = "wandb_id"
ENV_WINS = {"project": "WANDB_PROJECT", "entity": "WANDB_ENTITY", "group": "WANDB_RUN_GROUP",
            "tags": "WANDB_TAGS", "name": "WANDB_NAME"}


def wandb_settings(cfg: LoggingConfig, run_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """``wandb.init`` keywords, or None when wandb is off. The environment wins over the config (wandb's
    convention): WANDB_MODE / WANDB_DISABLED, and a WANDB_PROJECT, _ENTITY, _RUN_GROUP, _TAGS or _NAME set
    there is left to wandb. The run id is created once and kept in ``run_dir/wandb_id`` (WANDB_RUN_ID wins),
    so a resumed run continues the same wandb run, and a moved run dir keeps it."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE") or cfg.wandb_mode
    if env.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes") or mode == "disabled":
        return None
    ours = {"project": cfg.wandb_project, "entity": cfg.wandb_entity, "group": cfg.wandb_group,
            "tags": list(cfg.wandb_tags) or None, "name": cfg.wandb_run_name or run_dir.name}
    settings = {key: value for key, value in ours.items() if not env.get(ENV_WINS[key]) and value is not None}
    id_file = run_dir / WANDB_ID
    if env.get("WANDB_RUN_ID"):
        run_id = env["WANDB_RUN_ID"]
    elif id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's form
        atomic_write(id_file, run_id)
    return {**settings, "mode": mode, "id": run_id}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)
