"""Step 2: train a linear classification head on a BERT-style encoder with transformers' Trainer, validate it.

The head is transformers' sequence-classification head with one logit (score = sigmoid), trained with
binary cross-entropy on the same top/middle/bottom chunks scoring reads. ``model.finetune=full`` trains
the encoder too; ``head`` freezes it (the paper's linear head on snowflake-arctic-embed-m). The examples
come from the Arrow datasets the training-data step wrote (chunked by ``datasets.map`` into a cache file
beside the checkpoints); Trainer checkpoints model, optimizer, scheduler and RNG every ``save_steps``, and
a killed run (a SLURM preemption, a time limit, SIGKILL) resumes from the newest complete checkpoint.
Several GPUs visible to the job are used by Trainer (data parallel).
Validation scores whole files the way corpus scoring does (mean over chunks) and logs accuracy and ROC-AUC
to wandb and metrics.json. The model folder is published by rename once complete:
``AutoModelForSequenceClassification`` loads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np

from arctic_pretrain.annotate.config import AnnotateConfig
from arctic_pretrain.annotate.encoder import Chunker, Scorer, autocast_dtype, resolve_encoder
from arctic_pretrain.annotate.training_data import load_split
from arctic_pretrain.common.io import atomic_write

logger = logging.getLogger(__name__)
META = "annotator.json"
METRICS = "metrics.json"
FAULTS_ENV = "ARCTIC_PRETRAIN_FAULTS"  # the project's fault injection: kill_at_step=N (SIGKILL after checkpoint N)


def file_metrics(labels: list[int], scores: list[float]) -> dict:
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(labels), np.asarray(scores)
    return {"accuracy": float(((s >= 0.5) == (y == 1)).mean()),
            "roc_auc": float(roc_auc_score(y, s)) if len(set(labels)) == 2 else math.nan,
            "examples": len(labels), "positives": int(y.sum())}


def complete_checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-<step>`` folders whose ``trainer_state.json`` (Trainer writes it last) exists, oldest first."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=lambda p: int(p.name.split("-")[-1]))


def bce_loss(outputs, labels, num_items_in_batch=None):
    """Binary cross-entropy on the single logit (Trainer's default for num_labels=1 would be regression)."""
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits[:, 0].float(), labels.float())


def _callbacks(record: dict) -> list:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Records the step training starts at (the checkpoint's when resumed; Trainer restores its state
        before on_train_begin) and, under ARCTIC_PRETRAIN_FAULTS=kill_at_step=N, SIGKILLs this process
        once checkpoint N is written (the kill tests)."""

        def __init__(self) -> None:
            spec = os.environ.get(FAULTS_ENV, "")
            key, _, value = spec.partition("=")
            if spec and key != "kill_at_step":
                raise ValueError(f"{FAULTS_ENV}={spec!r}: the classifier knows kill_at_step=<N> only")
            self.kill_at = int(value) if spec else None

        def on_train_begin(self, args, state, control, **kwargs):
            record["start_step"] = state.global_step

        def on_save(self, args, state, control, **kwargs):
            if self.kill_at is not None and state.global_step >= self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    return [Progress()]


class TrainClassifier:
    """Train (or resume) the classifier from ``data_dir``'s Arrow splits; checkpoints in ``checkpoint_dir``
    (removed once the model is published)."""

    def __init__(self, cfg: AnnotateConfig, data_dir: Path, model_dir: Path, checkpoint_dir: Path | None = None,
                 config_hash: str = "") -> None:
        self.cfg, self.data_dir, self.model_dir = cfg, data_dir, model_dir
        self.checkpoint_dir = checkpoint_dir or model_dir.with_name(f"{model_dir.name}_checkpoints")
        self.config_hash = config_hash

    def _checkpoints(self) -> Path | None:
        """The newest complete checkpoint of this config; checkpoints of another config and torn ones go."""
        folder, stamp = self.checkpoint_dir, self.checkpoint_dir / "config_hash"
        if folder.is_dir() and (not stamp.is_file() or stamp.read_text() != self.config_hash):
            logger.info(f"classifier: {folder} holds another config's checkpoints, removed")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(stamp, self.config_hash)
        complete = complete_checkpoints(folder)
        for torn in set(folder.glob("checkpoint-*")) - set(complete):  # killed while Trainer was saving
            logger.info(f"classifier: incomplete checkpoint {torn} removed")
            shutil.rmtree(torn)
        return complete[-1] if complete else None

    def _chunks(self, tokenizer, name: str):
        """A split as chunk rows (input_ids, labels), cached beside the checkpoints so a resume reuses it."""
        m = self.cfg.model
        chunker = Chunker(tokenizer, m.max_length)

        def chunk(batch: dict) -> dict:
            out: dict[str, list] = {"input_ids": [], "labels": []}
            for ids, label in zip(chunker.ids(batch["text"]), batch["label"], strict=True):
                for c in chunker.chunks(ids, m.chunks_per_file):
                    out["input_ids"].append(c)
                    out["labels"].append(float(label))
            return out

        split = load_split(self.data_dir, name)
        return split.map(chunk, batched=True, batch_size=256, remove_columns=split.column_names,
                         cache_file_name=str(self.checkpoint_dir / f"{name}-chunks.arrow"),
                         new_fingerprint=f"{self.config_hash}-{name}-chunks", desc=f"chunk {name}")

    def run(self) -> dict:
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
        )

        from arctic_pretrain.common.cpu_math import resolve_vml_kernels

        m = self.cfg.model
        resolve_vml_kernels()  # before the first parallel GELU/Adam sqrt (see common/cpu_math.py)
        resume = self._checkpoints()
        torch.manual_seed(m.seed)
        encoder = resolve_encoder(m.encoder)
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder, num_labels=1, id2label={0: "high_quality"}, label2id={"high_quality": 0})
        if m.finetune == "head":  # the encoder (its pooler included) frozen: only the linear classifier trains
            for p in model.base_model.parameters():
                p.requires_grad_(False)
        cuda = torch.cuda.is_available()
        dtype = autocast_dtype(m.precision, "cuda" if cuda else "cpu")
        train = self._chunks(tokenizer, "train")
        devices = max(1, torch.cuda.device_count())
        total = max(1, round(math.ceil(len(train) / (m.batch_size * devices)) * m.epochs))
        wandb = os.environ.get("WANDB_MODE", self.cfg.wandb_mode) != "disabled"
        if wandb:
            os.environ.setdefault("WANDB_PROJECT", self.cfg.wandb_project)
        args = TrainingArguments(
            output_dir=str(self.checkpoint_dir), max_steps=total, per_device_train_batch_size=m.batch_size,
            learning_rate=m.learning_rate, weight_decay=m.weight_decay, lr_scheduler_type="linear",
            warmup_steps=round(total * m.warmup_fraction), max_grad_norm=1.0, seed=m.seed, data_seed=m.seed,
            save_strategy="steps", save_steps=m.save_steps, save_total_limit=m.save_total_limit,
            logging_steps=max(1, min(50, total // 20)), report_to=["wandb"] if wandb else "none",
            bf16=dtype is torch.bfloat16, use_cpu=not cuda, dataloader_num_workers=0, label_names=["labels"])
        record: dict = {}
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                          compute_loss_func=bce_loss, callbacks=_callbacks(record))
        if resume is not None:
            logger.info(f"classifier: resuming from {resume}")
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        validation = load_split(self.data_dir, "validation")
        scorer = Scorer(model, tokenizer, m.max_length, batch_size=self.cfg.score.batch_size,
                        precision=m.precision)
        scores = scorer.score_texts(validation["text"])
        metrics = {"validation": file_metrics(validation["label"], scores),
                   "train": {"steps": trainer.state.global_step, "start_step": record.get("start_step", 0),
                             "resumed_from": resume.name if resume else None,
                             "examples": load_split(self.data_dir, "train").num_rows, "chunks": len(train),
                             "finetune": m.finetune, "devices": devices,
                             "final_loss": float(np.mean(losses[-3:])) if losses else float(result.training_loss)},
                   "encoder": m.encoder}
        logger.info(f"classifier: validation accuracy {metrics['validation']['accuracy']:.3f}, "
                    f"ROC-AUC {metrics['validation']['roc_auc']:.3f}")
        if wandb:
            import wandb as wb

            if wb.run is not None:
                wb.run.log({f"validation/{k}": v for k, v in metrics["validation"].items()})
                wb.run.finish()
        self._publish(model, tokenizer, metrics)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)  # the published model supersedes them
        return metrics

    def _publish(self, model, tokenizer, metrics: dict) -> None:
        tmp = self.model_dir.with_name(f".{self.model_dir.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        m = self.cfg.model
        atomic_write(tmp / META, json.dumps({"encoder": m.encoder, "max_length": m.max_length,
                                             "positives": {p.name: p.source for p in self.cfg.positives},
                                             "score": "mean sigmoid over top/middle/bottom chunks",
                                             "config_hash": self.config_hash}, indent=2))
        atomic_write(tmp / METRICS, json.dumps(metrics, indent=2))
        shutil.rmtree(self.model_dir, ignore_errors=True)
        os.replace(tmp, self.model_dir)
