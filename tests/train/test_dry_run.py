"""dry_run=true: the run's arithmetic for a cluster shape, and the refusal when the global batch does not divide."""

from __future__ import annotations

import re

from arctic_pretrain.train.dry_run import plan, render
from tests.conftest import run_cli
from tests.train.test_configs import load


def test_paper_config_on_8x8_gpus():
    proc = run_cli(["launch/train.py", "experiment=snowcoder_1b3", "dry_run=true", "nodes=8", "gpus_per_node=8",
                    "data.root=/nonexistent"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "world size          64 ranks (8 nodes x 8 GPUs)" in out
    assert "grad accumulation   4 (global 512 = 2 x 64 x 4)" in out
    assert "tokens per step     512 x 8192 = 4,194,304" in out
    general = int(re.search(r"general\s+([\d,]+) steps", out).group(1).replace(",", ""))
    assert general == 119_210  # 500B / 4.19M, rounded up to a whole step
    assert "data epochs         not checked: no token source at python (/nonexistent/tokens/python)" in out
    assert not list((__import__("pathlib").Path("/nonexistent")).glob("*"))  # nothing was created
    # ZeRO-2 over 64 ranks: optimizer states 12 B x 1,364M / 64, gradients (2 + 4) B x params / 64
    assert "peak memory per GPU ~" in out and "bf16, ZeRO-2, 64 ranks" in out
    assert re.search(r"optimizer states\s+0\.2 GiB", out) and re.search(r"activations\s+36\.0 GiB", out)
    assert "formula           states + bucket + activations + max(loss head, recompute)" in out


def test_arithmetic_and_epochs_with_sources(demo_cache):
    from arctic_pretrain.data.demo import build_demo

    cfg = load("experiment=tiny", f"data.demo_dir={demo_cache}", "nodes=2", "gpus_per_node=2",
               "checkpoint.interval=5", "checkpoint.keep_last=2")
    build_demo(demo_cache, cfg.data.demo_megabytes, cfg.data.demo_vocab_size)
    p = plan(cfg)
    assert (p.world_size, p.micro_batch, p.grad_accumulation, p.tokens_per_step) == (4, 2, 1, 1024)
    assert [(ph["phase"], ph["steps"]) for ph in p.phases] == [("general", 16), ("high_quality", 8), ("synthetic", 4)]
    assert p.epochs is not None and p.epochs["high_quality"] > 0 and set(p.epochs) == set(cfg.data.sources)
    assert (p.checkpoints_written, p.checkpoints_kept) == (28 // 5 + 3, 2 + 3)
    assert 0.3e6 < p.parameters < 1e6  # the tiny model (0.4M)
    assert "data epochs per source" in render(p)


def test_global_batch_that_does_not_divide_fails_with_the_reason():
    proc = run_cli(["launch/train.py", "experiment=snowcoder_1b3", "dry_run=true", "nodes=3", "gpus_per_node=8"])
    assert proc.returncode == 2
    assert "training.global_batch_size=512: must be a multiple of micro_batch_size x ranks = 2 x 24" in proc.stderr
