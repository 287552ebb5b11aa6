"""Run: python -m tests.model.ds_loss_steps <zero_stage> <port> <loss>... -> JSON {loss: per-step losses}.

A real DeepSpeed engine (world size 1, gloo on CPU, fp32) over the tiny model: 3 optimizer steps of
2 micro-batches of packed documents, the loss from ``build_loss`` given the engine itself, as the step
loop calls it. Run in its own process: DeepSpeed's process group and ZeRO-3 hooks stay out of pytest's."""

from __future__ import annotations

import json
import os
import sys

import torch
from omegaconf import OmegaConf

from arctic_pretrain.model import build_model
from arctic_pretrain.model.config import ModelConfig
from arctic_pretrain.model.loss import build_loss


def steps(stage: int, loss_kind: str) -> list[float]:
    import deepspeed

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {
        "name": "t", "hidden_size": 32, "num_layers": 2, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 2,
        "max_seq_len": 64, "attention": "sdpa", "loss": loss_kind, "loss_chunk_tokens": 8}))
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=128)
    ds = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
          "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
          "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      config=ds)
    loss_fn = build_loss(cfg)
    gen = torch.Generator().manual_seed(1)
    pos = torch.cat([torch.arange(10), torch.arange(22)]).repeat(2, 1)
    losses = []
    for _ in range(3):
        total = 0.0
        for _ in range(2):
            ids = torch.randint(1, 128, (2, 32), generator=gen)
            loss_sum, count = loss_fn(engine, ids, pos)
            engine.backward(loss_sum.sum() / count.sum())
            total += float(loss_sum.sum() / count.sum())
            engine.step()
        losses.append(total / 2)
    return losses


def main(stage: int, port: str, kinds: list[str]) -> None:
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    deepspeed.init_distributed(dist_backend="gloo")
    print(json.dumps({kind: steps(stage, kind) for kind in kinds}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
