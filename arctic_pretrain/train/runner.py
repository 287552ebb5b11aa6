"""Wire a run from its config: data -> model -> engine -> callbacks -> trainer -> fit.

Each piece comes from a narrow builder below; logging, seeding and restoring live in their own helpers
so ``run`` reads as the recipe. Other stages plug in only through ``callbacks`` (launch/train.py
attaches phase-end evaluation that way): this package never imports another stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from arctic_pretrain.common import logs as common_logs
from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.common.cpu_math import resolve_vml_kernels
from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.data.fim import FimTokens, FimTransform, phase_settings
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.model import build_model, flops_per_token, padded_vocab_size, peak_flops
from arctic_pretrain.model.loss import build_loss
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.callbacks import Callback
from arctic_pretrain.train.callbacks.export import PhaseExport
from arctic_pretrain.train.callbacks.faults import FaultInjection
from arctic_pretrain.train.callbacks.profile import StepProfiler
from arctic_pretrain.train.callbacks.progress import ProgressBar
from arctic_pretrain.train.callbacks.speed import MetricsRecorder
from arctic_pretrain.train.checkpoint import (
    CheckpointManager,
    RestorePlan,
    load_engine,
    plan_restore,
    to_universal,
)
from arctic_pretrain.train.config import TrainConfig
from arctic_pretrain.train.curriculum import Curriculum
from arctic_pretrain.train.ds_config import deepspeed_config
from arctic_pretrain.train.guards import StepGuard, make_optimizer
from arctic_pretrain.train.history import append_history, check_resume, check_source_data, command_overrides
from arctic_pretrain.train.metrics import MetricsSink
from arctic_pretrain.train.runlock import acquire_for_job
from arctic_pretrain.train.trainer import LoopSettings, Trainer
from arctic_pretrain.train.validate import (
    check_tokenizer,
    fim_tokens,
    validate_config,
    validate_data_plan,
    verify_sources,
)

log = logging.getLogger("arctic_pretrain")


def setup_logging(run_dir: Path, rank: int, to_file: bool = True) -> None:
    """stdout on every rank (INFO on rank 0); ``to_file``: also run_dir/train.log (once the start is valid)."""
    common_logs.setup_logging(logging.INFO if rank == 0 else logging.WARNING, f"rank{rank}",
                              run_dir / "train.log" if rank == 0 and to_file else None)


def on_rank0(check) -> None:
    """Run ``check`` on rank 0 only (file reads, tokenizer loads); every rank raises its ConfigError."""
    error = None
    if dist.rank() == 0:
        try:
            check()
        except ConfigError as err:
            error = str(err)
    error = dist.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)


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
            hint = f"\n{cfg.data.missing_hint}" if cfg.data.missing_hint else ""
            raise FileNotFoundError(f"data.sources.{name}.path={src.path!r}: {err}{hint}") from None
    return sources


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        strict_cpu_gemms()
        pin_cpu_threads(torch.get_num_threads())


def strict_cpu_gemms() -> None:
    """MKL's strict conditional numerical reproducibility (CNR) mode: a GEMM's bits no longer depend on the
    thread count MKL uses. Without it the tiny model's weight gradients change in the last bits with the
    count (MKL splits the lm_head GEMM's 4096-long reduction across threads), and MKL may pick the count
    itself (MKL_DYNAMIC) where nothing pins it: the signature of issue 16's flaky bit-exact resume.
    MKL reads MKL_CBWR once, at its first call, so launch/train.py calls this right after parsing the
    config, before anything computes (a sweep job starts its process group before ``run``);
    ``seed_everything`` calls it too, for other callers of ``run``. A user's MKL_CBWR wins."""
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def pin_cpu_threads(count: int) -> None:
    """Fix the CPU kernels' thread count. Bits of CPU results depend on it: with 1 or 2 threads the tiny
    model's loss is identical but every gradient differs in the last bits (MKL splits the lm_head GEMM's
    4096-long reduction across threads). ``torch.set_num_threads`` also turns MKL's dynamic thread choice
    off, which Intel lists as a condition of run-to-run reproducibility (MKL_DYNAMIC=FALSE)."""
    torch.set_num_threads(count)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms and biases are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_callbacks(cfg: TrainConfig, run_dir: Path, tokenizer: str, flops: float | dict[str, float], resolved: dict,
                    extra: Sequence[Callback]) -> list[Callback]:
    """The loop's side concerns, in firing order: the profiler when on (first: it opens its window before the
    others' pre_step and closes it before their post_step), metrics, sink, progress, export, then ``extra`` (e.g. evaluation, after the export it
    reads), then test-only fault injection (last: it may kill)."""
    rank0 = dist.rank() == 0
    p = cfg.profile
    callbacks: list[Callback] = [StepProfiler(run_dir / "profile", p.steps, p.ranks, p.memory_snapshot, p.top)
                                 ] if p.steps else []
    callbacks += [
        MetricsRecorder(cfg.logging.interval, flops, peak_flops(cfg.peak_tflops)),
        MetricsSink(run_dir, cfg.logging, resolved, enabled=rank0),
        ProgressBar(enabled=rank0),
    ]
    if cfg.checkpoint.export_phases:
        callbacks.append(PhaseExport(run_dir, tokenizer, cfg.training.seq_len, phase_seq_lens(cfg)))
    callbacks.extend(extra)
    faults = FaultInjection.from_env()
    if faults is not None:
        callbacks.append(faults)
    return callbacks


def phase_seq_lens(cfg: TrainConfig) -> dict[str, int]:
    """The phases that set their own ``seq_len``."""
    return {name: phase.seq_len for name, phase in cfg.curriculum.phases.items() if phase.seq_len}


def restore(trainer: Trainer, plan: RestorePlan, cfg: TrainConfig) -> None:
    """Resume this run, or branch from another (init_from), possibly across a world-size change."""
    root = to_universal(plan, trainer.checkpoints.root) if plan.universal else plan.root
    reset_optimizer = plan.branch and cfg.init_reset_optimizer
    load_engine(trainer.engine, root, plan.tag, load_optimizer=not reset_optimizer, rng_root=plan.root)
    trainer.load_state_dict(plan.state, metrics=not plan.branch)
    saved_threads = plan.state.get("cpu_threads")
    if cfg.training.deterministic and not plan.branch and saved_threads and saved_threads != torch.get_num_threads():
        log.warning("the checkpoint was computed with %d CPU threads per rank, this start has %d: using %d, as "
                    "an exact resume needs the same count (set OMP_NUM_THREADS for a new run instead)",
                    saved_threads, torch.get_num_threads(), saved_threads)
        pin_cpu_threads(saved_threads)
    if plan.branch:
        trainer.provenance["init_from"] = str(plan.root / plan.tag)
        if cfg.init_reset_schedule:
            trainer.schedule_restart = trainer.consumed_tokens
        log.info("branched from %s at step %d (%d tokens)%s%s", plan.root / plan.tag, trainer.step,
                 trainer.consumed_tokens, ", fresh optimizer" if reset_optimizer else "",
                 ", LR schedule restarted" if cfg.init_reset_schedule else "")
    else:
        log.info("resumed from %s: step %d, %d tokens consumed%s", plan.tag, trainer.step, trainer.consumed_tokens,
                 f" (saved by {plan.state['world_size']} ranks, now {trainer.world})" if plan.universal else "")


@dataclass
class Start:
    """What the checks before the first step established (nothing written yet)."""

    sources: dict[str, TokenSource]
    resolved: dict
    changes: dict[str, list]
    source_tokenizers: dict[str, str]
    fim_tokens: FimTokens | None = None  # when a phase uses fill-in-the-middle


def check_start(cfg: TrainConfig, run_dir: Path) -> Start:
    """Every check that needs data or the run dir, before any rank builds a model or writes a file:
    sources and their files, the tokenizer exports will save, and (on a resume) the run's identity."""
    prepare_data(cfg)
    sources = open_sources(cfg)
    validate_data_plan(cfg, sources)
    on_rank0(lambda: verify_sources(cfg, sources))
    tok_info = next(iter(sources.values())).tokenizer
    on_rank0(lambda: check_tokenizer(cfg, cfg.tokenizer or tok_info.name))
    fim = fim_tokens(cfg, cfg.tokenizer or tok_info.name, tok_info.eos_id)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    hashes = {name: src.tokenizer.sha256 or f"{src.tokenizer.name}:{src.tokenizer.vocab_size}"
              for name, src in sources.items()}
    resuming = (run_dir / "checkpoints" / "latest").is_file()
    changes = check_resume(run_dir, resolved, hashes, resuming)
    return Start(sources, resolved, changes, hashes, fim)


def run(cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict:
    """Train ``cfg`` to the end of its curriculum (or max_steps), resuming from run_dir if possible.
    ``callbacks`` are added after the built-in ones (see ``build_callbacks``).

    One job at a time: rank 0 holds run_dir/run.lock until this returns or the process dies. A start
    whose checks fail leaves the run dir as it found it (a new run dir is removed again)."""
    world = dist.env_world_size()
    validate_config(cfg, world_size=world)
    run_dir = Path(cfg.output_dir)
    setup_logging(run_dir, dist.env_rank(), to_file=False)
    dist.init_distributed()
    lock = acquire_for_job(run_dir, dist.rank(), dist.broadcast_object)
    try:
        try:
            start = check_start(cfg, run_dir)
        except BaseException:
            if lock is not None and lock.created_dir:
                lock.release()
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only if still empty
            raise
        return train(cfg, run_dir, start, callbacks)
    finally:
        if lock is not None:
            lock.release()


def train(cfg: TrainConfig, run_dir: Path, start: Start, callbacks: Sequence[Callback]) -> dict:
    import deepspeed

    world = dist.world_size()
    setup_logging(run_dir, dist.rank())
    sources, resolved = start.sources, start.resolved
    resolve_vml_kernels()  # before anything runs in parallel: the first RoPE cos, Adam's first sqrt (issue 16)
    seed_everything(cfg.seed, cfg.training.deterministic)
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    plan = plan_restore(checkpoints, cfg.init_from, world, cfg.checkpoint.fallback_on_corrupt)
    max_epochs = {name: src.max_epochs for name, src in cfg.data.sources.items()}
    heldout = cfg.evaluation.heldout_windows if cfg.evaluation.enabled else 0
    sampler = MixtureSampler(sources, cfg.training.seq_len, cfg.seed, max_epochs, heldout_windows=heldout,
                             accept_changed=cfg.checkpoint.accept_changed_sources)
    if start.fim_tokens is not None:
        sampler.fim = FimTransform(start.fim_tokens)
    accepted = {}
    if plan is not None:  # before anything is written or built: a refused start leaves the run as it was
        saved = plan.state["sampler"]
        accepted = check_source_data(sampler.changed_sources(saved) if sampler.records_identity(saved) else None,
                                     cfg.checkpoint.accept_changed_sources, plan.root / plan.tag)
    tokens_per_step = cfg.training.global_batch_size * cfg.training.seq_len
    curriculum = Curriculum(cfg.curriculum, tokens_per_step, {n: s.num_tokens for n, s in sources.items()},
                            {n: s.language_tokens for n, s in sources.items()})
    if dist.rank() == 0:
        append_history(run_dir, {"overrides": command_overrides(), "world_size": world,
                                 "restore_from": str(plan.root / plan.tag) if plan else None,
                                 "changes": start.changes, "source_tokenizers": start.source_tokenizers,
                                 "accepted_source_changes": accepted})
        atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        atomic_write(run_dir / "curriculum.json", json.dumps(curriculum.describe(), indent=2))

    tok_info = next(iter(sources.values())).tokenizer
    tokenizer = cfg.tokenizer or tok_info.name
    vocab = padded_vocab_size(cfg.model, tok_info.vocab_size)
    model = build_model(cfg.model, vocab, eos_id=tok_info.eos_id)
    if cfg.deepspeed.zero_stage in (1, 2):  # lets ds_to_universal convert these checkpoints (world-size changes)
        model.universal_checkpoint_info = {"universal_checkpoint_version": 0.2}
    checkpoints.hf_config = model.config
    ds_cfg = deepspeed_config(cfg, world, load_universal=bool(plan and plan.universal),
                              params=sum(p.numel() for p in model.parameters()))
    if dist.rank() == 0:
        atomic_write(run_dir / "deepspeed.json", json.dumps(ds_cfg, indent=2))
    optimizer = make_optimizer(param_groups(model, cfg.optimizer.weight_decay), cfg.optimizer.betas,
                               cfg.optimizer.eps, cfg.optimizer.weight_decay, cfg.deepspeed.offload_optimizer)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    settings = LoopSettings(cfg.training.global_batch_size, cfg.training.micro_batch_size,
                            cfg.checkpoint.interval, cfg.max_steps)
    flops = flops_per_token(cfg.model, vocab, cfg.training.seq_len)
    if phase_seq_lens(cfg):  # attention's FLOPs per token grow with the sequence: MFU per phase
        flops = {name: flops_per_token(cfg.model, vocab, phase.seq_len or cfg.training.seq_len)
                 for name, phase in cfg.curriculum.phases.items()}
    trainer = Trainer(engine, optimizer, sampler, curriculum, checkpoints, StepGuard(cfg.guards), settings,
                      callbacks=build_callbacks(cfg, run_dir, tokenizer, flops, resolved, callbacks),
                      loss_fn=build_loss(cfg.model), fim=phase_settings(cfg.fim, cfg.curriculum.phases))
    trainer.provenance["tokenizer"] = tokenizer
    if plan is not None:
        restore(trainer, plan, cfg)
    if cfg.training.deterministic:  # rides in every checkpoint: restore() keeps a resume on the same count
        trainer.provenance["cpu_threads"] = torch.get_num_threads()
    for phase, described in zip(curriculum.phases, curriculum.describe(), strict=True):
        log.info("phase %-13s steps %6d-%-6d weights %s", phase.name, described["start_step"],
                 described["start_step"] + described["steps"], {k: round(v, 3) for k, v in phase.weights.items()})
        if phase_seq_lens(cfg) or phase.rope_theta:
            shape = trainer.batch_shape(phase)
            log.info("phase %-13s seq_len %d, global batch %d x micro %d sequences (%d tokens per step, kept "
                     "constant), RoPE theta %g", phase.name, shape.seq_len, shape.global_batch, shape.micro_batch,
                     shape.tokens, phase.rope_theta or cfg.model.rope_theta)
        if phase.name in trainer.fim:
            log.info("phase %-13s fill-in-the-middle %s", phase.name, trainer.fim[phase.name])
    result = trainer.fit(resumed=plan is not None and not plan.branch)
    if dist.rank() == 0 and (run_dir / "metrics.jsonl").is_file():
        from arctic_pretrain.train.plots import plot_losses

        log.info("loss curves: %s", plot_losses(run_dir))
    log.info("done: step %d, %d tokens", result["step"], result["consumed_tokens"])
    return result
