"""Wire a run from its config in a handful of lines: data -> model -> engine -> trainer -> fit."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.model import build_model, flops_per_token, padded_vocab_size, peak_flops
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.checkpoint import (
    CheckpointManager,
    RestorePlan,
    atomic_write,
    load_engine,
    plan_restore,
    to_universal,
)
from arctic_pretrain.train.config import TrainConfig
from arctic_pretrain.train.curriculum import Curriculum, Phase
from arctic_pretrain.train.ds_config import deepspeed_config
from arctic_pretrain.train.export import EXPORT_META, export_checkpoint
from arctic_pretrain.train.guards import StepGuard, make_optimizer
from arctic_pretrain.train.metrics import MetricsSink
from arctic_pretrain.train.trainer import Trainer
from arctic_pretrain.train.validate import validate_config, validate_data_plan

log = logging.getLogger("arctic_pretrain")


def setup_logging(run_dir: Path, rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def prepare_data(cfg: TrainConfig) -> None:
    """experiment=demo: build the embedded corpus once and point the sources at it."""
    if not cfg.data.prepare_demo:
        return
    from arctic_pretrain.data.demo import build_demo

    folder = None
    if dist.rank() == 0:
        folder = build_demo(Path(cfg.data.demo_dir), cfg.data.demo_megabytes, cfg.data.demo_vocab_size)
    folder = dist.broadcast_object(str(folder) if folder else None)
    for name, src in cfg.data.sources.items():
        if not Path(src.path).is_absolute() and not Path(src.path).exists():
            src.path = str(Path(folder) / src.path)
        if not (Path(src.path) / "manifest.json").is_file():
            raise FileNotFoundError(f"data.sources.{name}.path={src.path!r}: no token source there")


def open_sources(cfg: TrainConfig) -> dict[str, TokenSource]:
    sources = {}
    for name, src in cfg.data.sources.items():
        try:
            sources[name] = TokenSource(src.path)
        except (FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(f"data.sources.{name}.path={src.path!r}: {err}") from None
    return sources


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms and biases are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def phase_end_hook(cfg: TrainConfig):
    """Phase end: rank 0 exports run_dir/export/<phase> from the checkpoint just published, then
    (evaluation.enabled) scores the export and logs the figures as a metric line."""

    def hook(trainer: Trainer, phase: Phase) -> None:
        if dist.rank() == 0:
            tag = trainer.checkpoints.latest_tag()
            out = export_checkpoint(trainer.checkpoints.root / tag, trainer.run_dir / "export" / phase.name,
                                    tokenizer=trainer.tokenizer, meta={"phase": phase.name, "phase_index": phase.index})
            if cfg.evaluation.enabled:
                trainer.sink.write(light_evaluation(cfg, out, trainer, phase))
        dist.barrier()

    return hook


def export_missing_phases(trainer: Trainer) -> None:
    """A run killed between a phase-end checkpoint and its export writes the export on resume."""
    if dist.rank() == 0:
        root = trainer.checkpoints.root
        for tag in trainer.checkpoints.complete_tags():
            state = trainer.checkpoints.read_state(tag)
            phase = state.get("phase_end")
            if phase and not (trainer.run_dir / "export" / phase / EXPORT_META).is_file():
                log.info("writing the missing export of phase %s from %s", phase, tag)
                export_checkpoint(root / tag, trainer.run_dir / "export" / phase, tokenizer=trainer.tokenizer,
                                  meta={"phase": phase, "phase_index": state["phase_index"]})
    dist.barrier()


def light_evaluation(cfg: TrainConfig, export_dir: Path, trainer: Trainer, phase: Phase) -> dict:
    from arctic_pretrain.evaluate.light import heldout_loss, light_humaneval

    ev = cfg.evaluation
    record = {"step": trainer.step, "phase": phase.name, "phase_index": phase.index,
              "consumed_tokens": trainer.consumed_tokens, "event": "phase_eval", "time": time.time()}
    sources = {name: src.path for name, src in cfg.data.sources.items()}
    record.update(heldout_loss(export_dir, sources, windows=ev.heldout_windows, seq_len=cfg.training.seq_len))
    if ev.humaneval_limit > 0:
        scores = light_humaneval(export_dir, limit=ev.humaneval_limit, max_new_tokens=ev.max_new_tokens)
        record.update({f"eval/{k}": v for k, v in scores.items()})
    log.info("phase %s evaluation: %s", phase.name, {k: v for k, v in record.items() if "/" in k})
    return record


def restore(trainer: Trainer, plan: RestorePlan, cfg: TrainConfig) -> None:
    """Resume this run, or branch from another (init_from), possibly across a world-size change."""
    root = to_universal(plan, trainer.checkpoints.root) if plan.universal else plan.root
    reset_optimizer = plan.branch and cfg.init_reset_optimizer
    load_engine(trainer.engine, root, plan.tag, load_optimizer=not reset_optimizer, rng_root=plan.root)
    trainer.load_state_dict(plan.state, metrics=not plan.branch)
    if plan.branch:
        trainer.provenance = {"init_from": str(plan.root / plan.tag)}
        if cfg.init_reset_schedule:
            trainer.schedule_restart = trainer.consumed_tokens
        log.info("branched from %s at step %d (%d tokens)%s%s", plan.root / plan.tag, trainer.step,
                 trainer.consumed_tokens, ", fresh optimizer" if reset_optimizer else "",
                 ", LR schedule restarted" if cfg.init_reset_schedule else "")
    else:
        trainer.sink.truncate_after(trainer.step)
        log.info("resumed from %s: step %d, %d tokens consumed%s", plan.tag, trainer.step, trainer.consumed_tokens,
                 f" (saved by {plan.state['world_size']} ranks, now {trainer.world})" if plan.universal else "")


def run(cfg: TrainConfig) -> dict:
    """Train ``cfg`` to the end of its curriculum (or max_steps), resuming from run_dir if possible."""
    import deepspeed

    world = dist.env_world_size()
    validate_config(cfg, world_size=world)
    run_dir = Path(cfg.run_dir)
    setup_logging(run_dir, dist.env_rank())
    dist.init_distributed()
    prepare_data(cfg)
    sources = open_sources(cfg)
    validate_data_plan(cfg, sources)
    seed_everything(cfg.seed, cfg.training.deterministic)

    tok_info = next(iter(sources.values())).tokenizer
    tokenizer = cfg.tokenizer or tok_info.name
    vocab = padded_vocab_size(cfg.model, tok_info.vocab_size)
    model = build_model(cfg.model, vocab, eos_id=tok_info.eos_id)
    if cfg.deepspeed.zero_stage in (1, 2):  # lets ds_to_universal convert these checkpoints (world-size changes)
        model.universal_checkpoint_info = {"universal_checkpoint_version": 0.2}
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    plan = plan_restore(checkpoints, cfg.init_from, world)
    ds_cfg = deepspeed_config(cfg, world, load_universal=bool(plan and plan.universal))
    optimizer = make_optimizer(param_groups(model, cfg.optimizer.weight_decay), cfg.optimizer.betas,
                               cfg.optimizer.eps, cfg.optimizer.weight_decay, cfg.deepspeed.offload_optimizer)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    tokens_per_step = cfg.training.global_batch_size * cfg.training.seq_len
    curriculum = Curriculum(cfg.curriculum, tokens_per_step, {n: s.num_tokens for n, s in sources.items()})
    max_epochs = {name: src.max_epochs for name, src in cfg.data.sources.items()}
    holdout = cfg.evaluation.heldout_windows if cfg.evaluation.enabled else 0
    sampler = MixtureSampler(sources, cfg.training.seq_len, cfg.seed, max_epochs, holdout_windows=holdout)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if dist.rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        atomic_write(run_dir / "deepspeed.json", json.dumps(ds_cfg, indent=2))
        atomic_write(run_dir / "curriculum.json", json.dumps(curriculum.describe(), indent=2))
    trainer = Trainer(
        engine=engine, optimizer=optimizer, sampler=sampler, curriculum=curriculum, checkpoints=checkpoints,
        sink=MetricsSink(run_dir, cfg.logging, resolved, enabled=dist.rank() == 0), guard=StepGuard(cfg.guards),
        run_dir=run_dir, global_batch=cfg.training.global_batch_size, micro_batch=cfg.training.micro_batch_size,
        log_interval=cfg.logging.interval, checkpoint_interval=cfg.checkpoint.interval,
        flops_per_token=flops_per_token(cfg.model, vocab, cfg.training.seq_len), peak_flops=peak_flops(cfg.peak_tflops),
        on_phase_end=phase_end_hook(cfg) if cfg.checkpoint.export_phases else None,
        hf_config=model.config, tokenizer=tokenizer, max_steps=cfg.max_steps, faults=cfg.faults,
    )
    if plan is not None:
        restore(trainer, plan, cfg)
        if cfg.checkpoint.export_phases and not plan.branch:
            export_missing_phases(trainer)
    for phase in curriculum.describe():
        log.info("phase %-13s steps %6d-%-6d weights %s", phase["phase"], phase["start_step"],
                 phase["start_step"] + phase["steps"], {k: round(v, 3) for k, v in phase["weights"].items()})
    result = trainer.fit()
    trainer.sink.close()
    if dist.rank() == 0 and (run_dir / "metrics.jsonl").is_file():
        from arctic_pretrain.train.plots import plot_losses

        log.info("loss curves: %s", plot_losses(run_dir))
    log.info("done: step %d, %d tokens", result["step"], result["consumed_tokens"])
    return result
