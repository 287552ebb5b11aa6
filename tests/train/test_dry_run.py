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
    assert re.search(r"fill-in-the-middle.*\n  general\s+off\n  high_quality\s+off\n  synthetic\s+off", out)


def test_the_fim_preset_shows_per_phase():
    out = render(plan(load("experiment=snowcoder_1b3", "+fim=starcoder2", "curriculum.phases.synthetic.fim.rate=0",
                           "data.root=/nonexistent")))
    assert "  general           rate 0.5, SPM 0.5 of those, truncate_or_pad false" in out
    assert re.search(r"  synthetic\s+off", out)


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


def test_each_phase_shows_its_seq_len_theta_and_batch_and_the_memory_peak_is_the_largest_phase():
    """synthetic at 1024 tokens (a quarter of 4096): 4x the sequences per micro-batch and step, the run's tokens
    per step; with the chunked loss its micro-batch holds more chunk rows, so it is the peak."""
    from arctic_pretrain.train.memory import estimate_memory

    cfg = load("experiment=snowcoder_1b3", "data.root=/nonexistent", "nodes=8", "gpus_per_node=8",
               "training.seq_len=4096", "curriculum.phases.synthetic.seq_len=1024",
               "curriculum.phases.synthetic.rope_theta=500000", "model.loss=chunked")
    p = plan(cfg)
    rows = {ph["phase"]: (ph["seq_len"], ph["global_batch"], ph["micro_batch"], ph["rope_theta"]) for ph in p.phases}
    assert rows == {"general": (4096, 512, 2, 10_000.0), "high_quality": (4096, 512, 2, 10_000.0),
                    "synthetic": (1024, 2048, 8, 500_000.0)}
    out = render(p)
    assert re.search(r"synthetic\s+seq_len\s+1,024\s+RoPE theta\s+500,000\s+global 2,048 x micro 8 sequences\s+"
                     r"2,097,152 tokens per step", out)
    assert "largest phase     synthetic" in out
    common = dict(zero_stage=2, world=64, bf16=True, reduce_bucket=None)
    base = estimate_memory(cfg.model, p.vocab, p.parameters, micro_batch=2, seq_len=4096, **common)
    long = estimate_memory(cfg.model, p.vocab, p.parameters, micro_batch=8, seq_len=1024, **common)
    assert p.memory == long and long.peak > base.peak
