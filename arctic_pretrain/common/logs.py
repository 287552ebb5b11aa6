"""One logging setup for every stage: stdlib ``logging``, one line format.

loguru stays only inside datatrove steps (the ``PipelineStep`` classes in curate, annotate, data/ and text/):
datatrove logs through loguru in every task and points it at the task's log file, so a step's messages land
beside datatrove's own. A step that runs our driver code (annotate's finish job) calls ``log_to_loguru``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NOISY = ("DeepSpeed", "deepspeed", "torch.distributed", "httpx")  # INFO chatter of every rank, every hub request


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


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, f"{record.name}: {record.getMessage()}")


def log_to_loguru(level: int = logging.INFO) -> None:
    """Inside a datatrove task: stdlib records (ours) go to loguru, which datatrove points at the task's log
    file and stderr, so driver code a step runs logs where the step's own messages go."""
    logging.basicConfig(level=level, handlers=[_ToLoguru()], force=True)
