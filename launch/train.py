"""Train through the curriculum (Arctic-SnowCoder's three phases) with DeepSpeed ZeRO.

Usage: [deepspeed --num_gpus N | torchrun --nproc_per_node N | python] launch/train.py experiment=NAME [key=value ...]

Examples:
    python launch/train.py experiment=tiny                  # the tiny model on stand-in data (built on first use)
    python launch/train.py experiment=demo                  # after launch/pipeline.py experiment=demo (its data)
    deepspeed --num_gpus 8 launch/train.py experiment=snowcoder_1b3 output_dir=/ckpt/snowcoder
    python launch/train.py experiment=demo --cfg job        # print the composed config
    python launch/train.py experiment=tiny output_dir=runs/t checkpoint.fallback_on_corrupt=true
Rerun the same command (same output_dir) to resume; one job at a time holds output_dir (output_dir/run.lock).
``run_dir=`` is the deprecated spelling of ``output_dir=`` (until the next release).
"""

from __future__ import annotations

import os
import sys


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` / `--local_rank N` (the deepspeed launcher's); LOCAL_RANK is in the environment."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        out.append(arg)
    return out


sys.argv = strip_launcher_args(sys.argv)

from arctic_pretrain.common.config import config_groups, entry_point  # noqa: E402
from arctic_pretrain.train import run  # noqa: E402
from arctic_pretrain.train.config import RENAMED, TrainConfig, register  # noqa: E402

register()
EXPERIMENT_HINT = (f"pick an experiment (experiment={'|'.join(config_groups('train')['experiment'])}) or set it; "
                   "python launch/train.py --help shows usage and examples")


def stage_callbacks(cfg: TrainConfig) -> list:
    """Other stages join the step loop here, and only here: phase-end evaluation (evaluation.enabled) and
    the in-loop benchmark-aligned loss (evaluation.interval)."""
    ev, callbacks = cfg.evaluation, []
    if ev.enabled:
        from arctic_pretrain.evaluate.phase_end import PhaseEndEvaluation

        callbacks.append(PhaseEndEvaluation(os.path.join(cfg.output_dir, "export"), cfg.data.sources,
                                            cfg.training.seq_len, ev.heldout_windows, ev.humaneval_limit,
                                            ev.max_new_tokens))
    if ev.interval > 0:
        from arctic_pretrain.evaluate.aligned import AlignedLossEvaluation

        # held-out windows only where the sampler leaves them alone (evaluation.enabled)
        callbacks.append(AlignedLossEvaluation(ev.interval, ev.aligned_limit, cfg.training.seq_len,
                                               cfg.training.micro_batch_size * cfg.training.seq_len,
                                               cfg.data.sources, ev.heldout_windows if ev.enabled else 0))
    return callbacks


# a missing data source or init_from checkpoint is named by its key: a config error (train/runner.py, checkpoint.py)
@entry_point("train", "train", TrainConfig, __doc__, missing_hint=EXPERIMENT_HINT, exit_codes={FileNotFoundError: 2},
             renamed=RENAMED)
def main(cfg: TrainConfig) -> None:
    run(cfg, callbacks_for=stage_callbacks)


if __name__ == "__main__":
    main()
