"""Training on DeepSpeed: the step loop, checkpoints, exports, metrics.

``run(cfg) -> Path`` is the entry point (launch/train.py); runner.py builds one run, sweep.py runs a
``-m`` variant from its sweep's shared prefix, dry_run.py prints the arithmetic instead of training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def run(cfg, callbacks_for: Callable | None = None) -> Path:
    """Train (or resume) ``cfg`` through its curriculum; returns ``cfg.output_dir``. ``callbacks_for(cfg)`` gives
    other stages' callbacks for the (variant's) config: launch/train.py attaches evaluate's here, so this
    stage never imports it. ``dry_run=true`` prints the run's arithmetic and trains nothing."""
    from arctic_pretrain.train import runner

    if cfg.training.deterministic:  # first thing after the config: MKL reads it at its first call
        runner.strict_cpu_gemms()
    if cfg.dry_run:
        from arctic_pretrain.train.dry_run import report

        print(report(cfg))
        return Path(cfg.output_dir)
    from arctic_pretrain.train.sweep import run_job  # -m: a sweep variant, from the shared prefix

    run_job(cfg, lambda c: runner.run(c, callbacks=callbacks_for(c) if callbacks_for else ()))
    return Path(cfg.output_dir)


__all__ = ["run"]
