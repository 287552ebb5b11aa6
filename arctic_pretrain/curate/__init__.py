"""Phase-1 data: curate raw code into curated documents, token sources per language and a tokenizer.

``run(cfg) -> Path`` is the entry point (launch/curate.py, the demo pipeline); ``summary(cfg, out)`` is the
line the launcher prints. The pieces: readers.py (inputs), filters.py and pii.py (the per-file checks),
pipeline.py (the jobs: datatrove pipelines run in order), slurm.py (the chain of SLURM jobs), report.py.
"""

from __future__ import annotations

from pathlib import Path


def run(cfg) -> Path:
    """Run (or resume) a curation described by a ``CurateConfig``; returns its output folder."""
    import sys

    from arctic_pretrain.common.logs import setup_logging
    from arctic_pretrain.curate.pipeline import run as _run

    setup_logging(stream=sys.stderr)  # stderr, as datatrove's own messages; stdout carries the summary
    return _run(cfg)


def summary(cfg, out: Path) -> str:
    """What a finished (or, under SLURM without ``executor.wait``, submitted) curation tells its user."""
    if cfg.executor.kind == "slurm" and not cfg.executor.wait:
        from arctic_pretrain.common.slurm import submitted_jobs

        jobs = submitted_jobs(out / "logs")
        if not jobs:
            return f"nothing to submit: every stage is complete; report: {out}/report.json"
        return "\n".join([
            f"submitted {len(jobs)} SLURM jobs, each starting after the previous one succeeds (afterok):",
            "  " + ", ".join(f"{stage}={job}" for stage, job in jobs.items()),
            f"report: {out}/report.json and tokens in {out}/tokens/<language> once job {list(jobs.values())[-1]} "
            f"(finalize) ends; watch: squeue -j {','.join(jobs.values())}; logs: {out}/logs/<stage>/slurm_logs "
            "(or add executor.wait=true to block until the chain ends)"])
    return f"curated: {out}/report.json, tokens in {out}/tokens/<language>"


__all__ = ["run", "summary"]
