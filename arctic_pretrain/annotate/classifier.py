"""Step 2: fine-tune a linear classification head on a BERT-style encoder (transformers), validate it.

The head is transformers' sequence-classification head with one logit (score = sigmoid), trained with
binary cross-entropy on the same top/middle/bottom chunks scoring reads. Validation scores whole files
the way corpus scoring does (mean over chunks) and logs accuracy and ROC-AUC to wandb and metrics.json.
The model folder is published by rename once complete: ``AutoModelForSequenceClassification`` loads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from arctic_pretrain.annotate.config import AnnotateConfig
from arctic_pretrain.annotate.encoder import Chunker, Scorer, autocast_dtype, resolve_encoder
from arctic_pretrain.annotate.training_data import read_split
from arctic_pretrain.common.io import atomic_write

logger = logging.getLogger(__name__)
META = "annotator.json"
METRICS = "metrics.json"


def file_metrics(labels: list[int], scores: list[float]) -> dict:
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(labels), np.asarray(scores)
    return {"accuracy": float(((s >= 0.5) == (y == 1)).mean()),
            "roc_auc": float(roc_auc_score(y, s)) if len(set(labels)) == 2 else math.nan,
            "examples": len(labels), "positives": int(y.sum())}


class TrainClassifier:
    def __init__(self, cfg: AnnotateConfig, data_dir: Path, model_dir: Path) -> None:
        self.cfg, self.data_dir, self.model_dir = cfg, data_dir, model_dir

    def run(self) -> dict:
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            get_linear_schedule_with_warmup,
        )

        from arctic_pretrain.common.cpu_math import resolve_vml_kernels

        m = self.cfg.model
        resolve_vml_kernels()  # before the first parallel GELU/Adam sqrt (see common/cpu_math.py)
        torch.manual_seed(m.seed)
        encoder = resolve_encoder(m.encoder)
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder, num_labels=1, id2label={0: "high_quality"}, label2id={"high_quality": 0})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).train()
        dtype = autocast_dtype(m.precision, device)
        chunker = Chunker(tokenizer, m.max_length)
        train = read_split(self.data_dir, "train")
        examples = [(c, float(r["label"])) for r, ids in zip(train, chunker.ids([r["text"] for r in train]), strict=True)
                    for c in chunker.chunks(ids, m.chunks_per_file)]
        steps_per_epoch = math.ceil(len(examples) / m.batch_size)
        total = max(1, round(steps_per_epoch * m.epochs))
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": m.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=m.learning_rate)
        sched = get_linear_schedule_with_warmup(opt, round(total * m.warmup_fraction), total)
        run = _wandb(self.cfg, self.model_dir.parent)
        rng = random.Random(m.seed)
        batcher = Scorer(model, tokenizer, m.max_length, batch_size=m.batch_size, device=device)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        step, losses = 0, []
        bar = tqdm(total=total, desc="train classifier", unit="step")
        while step < total:
            order = list(range(len(examples)))
            rng.shuffle(order)
            for lo in range(0, len(order), m.batch_size):
                if step >= total:
                    break
                idx = order[lo:lo + m.batch_size]
                ids, mask = batcher.pad([examples[i][0] for i in idx])
                labels = torch.tensor([examples[i][1] for i in idx], device=device)
                model.train()
                with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
                loss = loss_fn(logits.float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if run is not None:
                    run.log({"train/loss": losses[-1], "train/lr": sched.get_last_lr()[0]}, step=step)
        bar.close()
        validation = read_split(self.data_dir, "validation")
        scorer = Scorer(model, tokenizer, m.max_length, batch_size=self.cfg.score.batch_size, device=device,
                        precision=m.precision)
        scores = scorer.score_texts([r["text"] for r in validation])
        metrics = {"validation": file_metrics([r["label"] for r in validation], scores),
                   "train": {"steps": step, "examples": len(train), "chunks": len(examples),
                             "final_loss": float(np.mean(losses[-10:])) if losses else math.nan},
                   "encoder": m.encoder}
        logger.info(f"classifier: validation accuracy {metrics['validation']['accuracy']:.3f}, "
                    f"ROC-AUC {metrics['validation']['roc_auc']:.3f}")
        if run is not None:
            run.log({f"validation/{k}": v for k, v in metrics["validation"].items()}, step=step)
            run.finish()
        self._publish(model, tokenizer, metrics)
        return metrics

    def _publish(self, model, tokenizer, metrics: dict) -> None:
        tmp = self.model_dir.with_name(f".{self.model_dir.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        m = self.cfg.model
        atomic_write(tmp / META, json.dumps({"encoder": m.encoder, "max_length": m.max_length,
                                             "positives": {p.name: p.source for p in self.cfg.positives},
                                             "score": "mean sigmoid over top/middle/bottom chunks"}, indent=2))
        atomic_write(tmp / METRICS, json.dumps(metrics, indent=2))
        shutil.rmtree(self.model_dir, ignore_errors=True)
        os.replace(tmp, self.model_dir)


def _wandb(cfg: AnnotateConfig, out: Path):
    mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(project=cfg.wandb_project, mode=mode, dir=str(out),
                      config={"model": vars(cfg.model), "positives": [p.name for p in cfg.positives]})
