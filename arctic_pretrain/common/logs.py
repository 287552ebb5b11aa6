"""One logging setup for every stage: stdlib ``logging``, one line format.

loguru stays only where datatrove drives the work (curate, annotate and the datatrove steps in text/): datatrove
logs through loguru in every task, and our messages there go to the same per-task logs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NOISY = ("DeepSpeed", "deepspeed", "torch.distributed")  # INFO chatter of every rank


def setup_logging(level: int = logging.INFO, tag: str = "", log_file: Path | None = None, stream=None) -> None:
    """``stream`` (default stdout) and ``log_file`` at ``level``, ``%(asctime)s [tag] LEVEL name: message``;
    replaces any earlier setup (``force``), so a stage may call it again once it knows more (e.g. its rank)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stdout)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    prefix = f"[{tag}] " if tag else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
