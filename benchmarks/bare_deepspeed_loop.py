"""The baseline for train_overhead.py: the plainest DeepSpeed loop over the same model and data.

It reads a framework run's resolved config.yaml and deepspeed.json, builds the identical model,
pre-reads every batch into memory (no data cost inside the timed loop), and uses the model's own
loss on the same packed, document-masked batches. It prints one JSON list: the wall-clock time after each optimizer step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import deepspeed
import torch
import yaml
from omegaconf import OmegaConf

from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.model import build_model, padded_vocab_size
from arctic_pretrain.model.config import ModelConfig


def main(run_dir: Path, steps: int) -> None:
    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    ds_config = json.loads((run_dir / "deepspeed.json").read_text())
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29533"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(verbose=False)
    sources = {name: TokenSource(src["path"]) for name, src in conf["data"]["sources"].items()}
    model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), conf["model"]))
    vocab = padded_vocab_size(model_cfg, next(iter(sources.values())).tokenizer.vocab_size)
    torch.manual_seed(conf["seed"])
    model = build_model(model_cfg, vocab)
    opt = conf["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=tuple(opt["betas"]), eps=opt["eps"],
                                  weight_decay=opt["weight_decay"], foreach=True)  # plain AdamW: no guards
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    sampler = MixtureSampler(sources, conf["training"]["seq_len"], conf["seed"])
    micro, gas = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    weights = {name: 1.0 for name in sources}
    batches = [sampler.read(sampler.draw(micro, weights)) for _ in range(steps * gas)]
    batches = [(torch.from_numpy(b.input_ids), torch.from_numpy(b.position_ids)) for b in batches]
    times = []
    for step in range(steps):
        for m in range(gas):
            ids, positions = batches[step * gas + m]  # same document-masked attention as the framework
            ids, positions = ids.to(engine.device), positions.to(engine.device)
            loss = engine(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
            engine.backward(loss)
            engine.step()
        times.append(time.time())
    print(json.dumps(times))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
