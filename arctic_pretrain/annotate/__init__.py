"""Phase-2 data: the quality annotator. Train a classifier (positives vs random phase-1 files), score
every curated file, select the top per language, group and tokenize the selection, report.

``run(cfg) -> Path`` is the entry point launch/annotate.py (and the demo pipeline) call.
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Run (or resume) an annotation described by an ``AnnotateConfig``; returns its output folder."""
    from arctic_pretrain.annotate.pipeline import run as _run

    return _run(cfg)


__all__ = ["run"]
