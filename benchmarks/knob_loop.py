"""One throughput configuration, timed in this process: the sweep in gpu_throughput.py runs one per process.

    python benchmarks/knob_loop.py '{"model": "snowcoder_1b3", "seq_len": 8192, "micro": 2, "gas": 4, ...}'

The pieces are the training stack's own: ``build_model`` (attention backend, liger kernels, activation
checkpointing, compile), ``build_loss`` given the DeepSpeed engine (the loss kind), the real token-source
format read by the mixture sampler through the background ``Prefetcher``, and a DeepSpeed engine with the
ZeRO stage, ``overlap_comm`` and bucket sizes asked for. The data are random-token documents of random
lengths written once into a token source (content does not change the speed; packing and the document
mask do). Plain AdamW (the guarded one lives in the train stage). Prints one JSON line:
median step time over the steps after ``warmup``, tokens/s, TFLOP/s and MFU per device, peak memory,
and data time per step (what the loop waited for the prefetcher).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"model": "snowcoder_1b3", "vocab": 64000, "seq_len": 8192, "micro": 2, "gas": 4, "steps": 8,
            "warmup": 3, "zero_stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8, "precision": "bf16", "prefetch_depth": 2, "model_overrides": {},
            "data_dir": None, "peak_tflops": None}


def token_source(folder: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """Random documents (lengths 50..4000 tokens) in the shard format, written once and reused."""
    from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo

    if (folder / "manifest.json").is_file():
        return folder
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, TokenizerInfo("random", vocab, eos_id=0), shard_tokens=1 << 24) as writer:
        written = 0
        while written < tokens:
            docs = [rng.integers(1, vocab, rng.integers(50, 4000)).tolist() for _ in range(64)]
            writer.add_documents(docs)
            written += sum(len(d) + 1 for d in docs)
    return folder


def model_config(name: str, overrides: dict):
    from arctic_pretrain.model.config import ModelConfig

    conf = yaml.safe_load((ROOT / "conf" / "train" / "model" / f"{name}.yaml").read_text())
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), conf, overrides))


def ds_config(c: dict) -> dict:
    zero = {"stage": c["zero_stage"]}
    if c["zero_stage"] > 0:
        zero.update(contiguous_gradients=True, overlap_comm=bool(c["overlap_comm"]),
                    reduce_bucket_size=int(c["reduce_bucket_size"]), allgather_bucket_size=int(c["allgather_bucket_size"]))
    return {"train_batch_size": c["micro"] * c["gas"] * int(os.environ.get("WORLD_SIZE", "1")),
            "train_micro_batch_size_per_gpu": c["micro"], "gradient_accumulation_steps": c["gas"],
            "gradient_clipping": 1.0, "zero_optimization": zero, "bf16": {"enabled": c["precision"] == "bf16"},
            "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "wall_clock_breakdown": False}


def main(c: dict) -> dict:
    import deepspeed

    from arctic_pretrain.data.prefetch import Prefetcher
    from arctic_pretrain.data.sampler import MixtureSampler
    from arctic_pretrain.data.shards import TokenSource
    from arctic_pretrain.model import build_model, flops_per_token, peak_flops
    from arctic_pretrain.model.loss import build_loss

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("KNOB_PORT", "29541")}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    cuda = torch.cuda.is_available()
    if not cuda:  # one thread: on a shared CPU, OpenMP barriers across starved threads swamp the figures
        torch.set_num_threads(int(os.environ.get("KNOB_CPU_THREADS", "1")))
    cfg = model_config(c["model"], c["model_overrides"])
    data_dir = Path(c["data_dir"] or Path(tempfile.gettempdir()) / f"knob-data-{c['vocab']}")
    tokens = c["seq_len"] * c["micro"] * c["gas"] * (c["steps"] + 2)
    source = TokenSource(token_source(data_dir / f"{tokens}", c["vocab"], tokens))
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialising 1.3B parameters on the GPU takes a second
        model = build_model(cfg, c["vocab"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  foreach=True, fused=cuda or None)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(c))
    loss_fn = build_loss(cfg)
    sampler = MixtureSampler({"random": source}, c["seq_len"], seed=0)
    per_step = c["micro"] * c["gas"]
    step_s, data_s, losses = [], [], []
    with Prefetcher(sampler.read, engine.device, depth=c["prefetch_depth"]) as prefetch:
        prefetch.submit(sampler.global_batch(per_step, {"random": 1.0}, 0, 1), c["micro"])
        for step in range(c["steps"]):
            start, waited = time.perf_counter(), 0.0
            if step + 1 < c["steps"]:  # the next step's reads queue behind this one's
                prefetch.submit(sampler.global_batch(per_step, {"random": 1.0}, 0, 1), c["micro"])
            total = torch.zeros((), device=engine.device)
            for _ in range(c["gas"]):
                batch = prefetch.get()
                waited += batch.wait_seconds
                loss_sum, count = loss_fn(engine, batch.input_ids, batch.position_ids)
                loss = loss_sum.sum() / count.sum().clamp(min=1)
                engine.backward(loss)
                engine.step()
                total += loss.detach()
            losses.append(float(total) / c["gas"])  # syncs: the step is done when this returns
            step_s.append(time.perf_counter() - start)
            data_s.append(waited)
    timed = step_s[c["warmup"]:] or step_s
    step = statistics.median(timed)
    tokens_per_s = per_step * c["seq_len"] / step
    flops = flops_per_token(cfg, c["vocab"], c["seq_len"])
    peak = peak_flops(c["peak_tflops"])
    return {"step_seconds": round(step, 4), "tokens_per_s": round(tokens_per_s, 1),
            "tflops_per_device": round(tokens_per_s * flops / 1e12, 2),
            "mfu": round(tokens_per_s * flops / peak, 4) if peak else None,
            "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
            "data_seconds_per_step": round(statistics.median(data_s[c["warmup"]:] or data_s), 5),
            "data_share": round(statistics.median(data_s[c["warmup"]:] or data_s) / step, 5),
            "first_step_seconds": round(step_s[0], 2), "losses": [round(x, 4) for x in losses],
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


if __name__ == "__main__":
    config = {**DEFAULTS, **json.loads(sys.argv[1])}
    print(json.dumps({"config": config, **main(config)}), flush=True)
