"""Phase-2 data: the quality annotator. Train a classifier (positives vs random phase-1 files), score
every curated file, select the top per language, group and tokenize the selection, report.

``run(cfg) -> Path`` is the entry point launch/annotate.py (and the demo pipeline) call; ``summary(cfg, out)``
is what the launcher prints.
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Run (or resume) an annotation described by an ``AnnotateConfig``; returns its output folder."""
    import sys

    from arctic_pretrain.annotate.pipeline import run as _run
    from arctic_pretrain.common.logs import setup_logging

    setup_logging(stream=sys.stderr)  # stderr, as datatrove's own messages; stdout carries the summary
    return _run(cfg)


def summary(cfg, out: Path) -> str:
    """What a finished, partial (``step=``) or submitted (SLURM) annotation tells its user."""
    if cfg.executor.kind == "slurm" and not cfg.executor.wait:
        return (f"submitted the classifier's training, scoring and select+report as SLURM jobs (those still to do): "
                f"{out}/manifest.json is written last, by the finish job; logs: {out}/logs/<train|score|finish>/"
                "slurm_logs (executor.wait=true blocks until it exists)")
    if not (out / "manifest.json").is_file():  # a step= run: the other steps are still to run
        return f"step={cfg.step} complete in {out}; step=all runs the rest (train, score, select, report)"
    return f"annotated: {out}/selection.json; phase-2 sources {out}/all and {out}/python; report {out}/report/report.md"


__all__ = ["run", "summary"]
