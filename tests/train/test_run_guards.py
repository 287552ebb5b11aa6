"""What a careless or concurrent user cannot do to a run (issue 14, items 1-6), in-process and fast:
the run-dir lock, the resume identity check, checkpoint checksums, source checks before step 1,
wandb settings, exports configured for inference. The launches are in test_run_cli.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from arctic_pretrain.common.config import HYDRA_VERSION_BASE, ConfigError
from arctic_pretrain.data.shards import MANIFEST, TokenSource
from arctic_pretrain.model import build_model
from arctic_pretrain.train.checkpoint import (
    CHECKSUMS,
    LATEST,
    CheckpointManager,
    CorruptCheckpoint,
    plan_restore,
    verify_checksums,
)
from arctic_pretrain.train.config import LoggingConfig, ModelConfig, TrainConfig, register
from arctic_pretrain.train.export import export_checkpoint
from arctic_pretrain.train.history import check_resume, check_source_data, config_diff
from arctic_pretrain.train.metrics import WANDB_ID, MetricsSink, wandb_settings
from arctic_pretrain.train.runlock import LOCK, RunLock, RunLocked
from arctic_pretrain.train.validate import check_tokenizer, validate_config, verify_sources
from tests.conftest import ROOT, make_source

register()
TINY = ModelConfig(name="tiny-guard", hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4,
                   num_kv_heads=4, max_seq_len=64, vocab_size=96, attention="sdpa")


def load(*overrides: str) -> TrainConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base=HYDRA_VERSION_BASE):
        return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides)))


def resolved(cfg: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


# ---- 1. one job per run dir ----------------------------------------------------------------------------
def test_a_second_holder_fails_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from arctic_pretrain.train.runlock import RunLock; "
        f"RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as err:
            RunLock(run_dir).acquire()
        message = str(err.value)
        assert f"pid {holder.pid}" in message and f"host {socket.gethostname()}" in message
        assert "started 20" in message and str(run_dir) in message
    finally:
        holder.kill()
        holder.wait()
    # the holder was SIGKILLed: the kernel dropped its lock; the next job takes over and reports it
    lock = RunLock(run_dir).acquire()
    assert lock.stale is not None and lock.stale["pid"] == holder.pid
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run_dir / LOCK).exists()  # a clean exit leaves no lock file
    with RunLock(run_dir) as again:
        assert again.stale is None  # and so nothing to report next time


# ---- 2. a resume keeps the run's identity --------------------------------------------------------------
def fake_run(tmp_path, cfg: TrainConfig, hashes: dict[str, str]):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / LATEST).write_text("step_00000004")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved(cfg)))
    (run_dir / "history.jsonl").write_text(json.dumps({"source_tokenizers": hashes}) + "\n")
    return run_dir


def test_resume_refuses_shape_tokenizer_and_seq_len_changes_naming_each(tmp_path):
    hashes = {"python": "a" * 64, "c": "a" * 64, "high_quality": "a" * 64, "synthetic": "a" * 64}
    run_dir = fake_run(tmp_path, load("experiment=tiny"), hashes)
    before = (run_dir / "config.yaml").read_text()
    new = resolved(load("experiment=tiny", "model=small", "training.seq_len=64", "tokenizer=/tok"))
    with pytest.raises(ConfigError) as err:
        check_resume(run_dir, new, {**hashes, "c": "b" * 64}, resuming=True)
    message = str(err.value)
    for key in ("model.hidden_size", "model.num_layers", "training.seq_len", "tokenizer", "source_tokenizers.c"):
        assert key in message
    assert "model.attention" not in message and (run_dir / "config.yaml").read_text() == before


def test_resume_accepts_and_logs_budgets_lr_and_intervals(tmp_path, caplog):
    hashes = {"python": "a" * 64}
    run_dir = fake_run(tmp_path, load("experiment=tiny"), hashes)
    new = resolved(load("experiment=tiny", "curriculum.phases.general.tokens=32K", "checkpoint.interval=7",
                        "curriculum.phases.general.lr.peak_lr=1e-3", "model.attention=eager"))
    with caplog.at_level(logging.INFO, logger="arctic_pretrain.train.history"):
        changes = check_resume(run_dir, new, hashes, resuming=True)
    assert changes["curriculum.phases.general.tokens"] == ["16K", "32K"]
    assert changes["checkpoint.interval"] == [5, 7]
    assert set(changes) == {"curriculum.phases.general.tokens", "checkpoint.interval",
                            "curriculum.phases.general.lr.peak_lr", "model.attention"}
    assert "checkpoint.interval: 5 -> 7" in caplog.text
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == {"a.c": [None, 2]}


def test_a_resume_onto_changed_data_is_refused_naming_the_source_unless_accepted(tmp_path, caplog):
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000008"
    change = {"high_quality": {"picks": 40, "windows": [100, 120], "manifest_sha256": ["a" * 64, "b" * 64]}}
    with pytest.raises(ConfigError) as err:
        check_source_data(change, [], ckpt)
    message = str(err.value)
    assert "high_quality (100 -> 120 windows, manifest.json sha256 aaaaaaaaaaaa... -> bbbbbbbbbbbb..." in message
    assert str(ckpt) in message and "checkpoint.accept_changed_sources=[high_quality]" in message
    assert check_source_data(change, ["high_quality"], ckpt) == change  # accepted: returned for history.jsonl
    with pytest.raises(ConfigError, match="accept_changed_sources=\\[high_quality\\]"):
        check_source_data(change, ["python"], ckpt)  # accepting another source accepts nothing here
    with caplog.at_level(logging.WARNING, logger="arctic_pretrain.train.history"):
        assert check_source_data(None, [], ckpt) == {}  # a checkpoint from before the record: unknown
    assert "cannot be detected" in caplog.text
    with pytest.raises(ConfigError, match="checkpoint.accept_changed_sources.*'pyhton' is not a data source"):
        validate_config(load("experiment=tiny", "checkpoint.accept_changed_sources=[pyhton]"))


def test_a_source_joining_later_resumes_if_the_run_tokenizer_made_it(tmp_path):
    # the demo recipe trains phases 1-2, synthesizes, then resumes with a synthetic source added
    hashes = {"python": "a" * 64, "c": "a" * 64, "high_quality": "a" * 64}
    run_dir = fake_run(tmp_path, load("experiment=tiny", "~curriculum.phases.synthetic", "~data.sources.synthetic"),
                       hashes)
    new = resolved(load("experiment=tiny"))
    changes = check_resume(run_dir, new, {**hashes, "synthetic": "a" * 64}, resuming=True)
    assert changes["source_tokenizers.synthetic"] == [None, "a" * 64]
    with pytest.raises(ConfigError, match="source_tokenizers.synthetic"):  # made by another tokenizer
        check_resume(run_dir, new, {**hashes, "synthetic": "b" * 64}, resuming=True)


# ---- 3. checkpoint checksums ---------------------------------------------------------------------------
@pytest.fixture
def two_checkpoints(tmp_path, process_group):
    """A real DeepSpeed engine (ZeRO 1, one rank) saved at steps 2 and 4 by the run's CheckpointManager."""
    import deepspeed

    torch.manual_seed(0)
    model = build_model(TINY, TINY.vocab_size, eos_id=0)
    config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
              "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=5, hf_config=model.config)
    for step in (2, 4):
        ids = torch.randint(1, TINY.vocab_size, (2, 16))
        engine.backward(engine(input_ids=ids, labels=ids, use_cache=False).loss)
        engine.step()
        manager.save(engine, step, {"step": step, "world_size": 1, "phase_end": None, "tokenizer": None})
    return manager


def test_checksums_are_recorded_before_publishing_and_catch_corruption(two_checkpoints):
    folder = two_checkpoints.root / "step_00000004"
    table = json.loads((folder / CHECKSUMS).read_text())
    assert {"mp_rank_00_model_states.pt", "trainer_state.json", "rng_rank0.pt", "hf_config/config.json"} <= set(table)
    assert verify_checksums(folder) == []
    model_file = folder / "mp_rank_00_model_states.pt"
    with open(model_file, "r+b") as fh:  # the probe: 4 KiB of 0x7f in the newest model states
        fh.seek(model_file.stat().st_size // 2)
        fh.write(b"\x7f" * 4096)
    assert verify_checksums(folder) == [f"{model_file}: SHA-256 differs from the one recorded at save (corrupted)"]
    optim = folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(b"")  # emptied
    assert any(str(optim) in p and "0 bytes" in p for p in verify_checksums(folder))


def test_a_corrupt_latest_is_named_and_the_previous_offered_then_taken(two_checkpoints):
    manager = two_checkpoints
    state = manager.root / "step_00000004" / "trainer_state.json"
    state.write_text(state.read_text()[:20])  # truncated
    with pytest.raises(CorruptCheckpoint) as err:
        plan_restore(manager, None, world_size=1)
    assert str(state) in str(err.value) and "step_00000002" in str(err.value)
    assert "checkpoint.fallback_on_corrupt=true" in str(err.value)
    plan = plan_restore(manager, None, world_size=1, fallback_on_corrupt=True)
    assert plan.tag == "step_00000002" and plan.state["step"] == 2
    assert (manager.root / LATEST).read_text() == "step_00000002"
    assert (manager.root / "step_00000004.corrupt").is_dir()  # kept for inspection, out of the way
    assert manager.complete_tags() == ["step_00000002"]


# ---- 4. sources checked before the first step ----------------------------------------------------------
@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    return make_source(tmp_path / "src", [rng.integers(1, 1000, 50).tolist() for _ in range(40)], shard_tokens=512)


def test_truncated_odd_missing_and_out_of_vocab_shards_are_named(source):
    TokenSource(source).verify()
    shard = sorted(source.glob("*.bin"))[1]
    data = shard.read_bytes()

    shard.write_bytes(data[: len(data) // 4 * 2])
    with pytest.raises(ValueError, match=f"{shard}: holds .* tokens, manifest.json says"):
        TokenSource(source).verify()
    shard.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=f"{shard}: {len(data) - 1} bytes is not a whole number of uint16"):
        TokenSource(source).verify()
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard}: missing"):
        TokenSource(source).verify()
    shard.write_bytes(data)
    manifest = json.loads((source / MANIFEST).read_text())
    manifest["tokenizer"]["vocab_size"] = 500  # smaller than the ids written (up to 999)
    (source / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"\.bin: token id \d+ .* outside the vocabulary of 500"):
        TokenSource(source).verify()


def test_run_checks_every_source_and_the_tokenizer_naming_the_key(source, tmp_path):
    cfg = load("experiment=tiny")
    (source / sorted(p.name for p in source.glob("*.bin"))[0]).write_bytes(b"\0" * 3)
    with pytest.raises(ConfigError, match=r"data.sources.c.path=.*shard-00000.bin: 3 bytes"):
        verify_sources(cfg, {"python": TokenSource(make_source(tmp_path / "ok", [[1, 2, 3]])),
                             "c": TokenSource(source)})
    with pytest.raises(ConfigError, match=r"tokenizer \(unset: the sources' manifest tokenizer.name\)="
                                          r"'/nowhere/tokenizer': no such file"):
        check_tokenizer(cfg, "/nowhere/tokenizer")
    check_tokenizer(load("experiment=tiny", "checkpoint.export_phases=false"), "/nowhere/tokenizer")  # not needed


# ---- 5. wandb ------------------------------------------------------------------------------------------
def test_wandb_environment_wins_and_the_run_id_lives_in_the_run_dir(tmp_path):
    cfg = LoggingConfig(wandb_mode="online", wandb_entity="team", wandb_group="lr-sweep", wandb_tags=["a", "b"])
    assert wandb_settings(cfg, tmp_path, env={"WANDB_MODE": "disabled"}) is None
    assert wandb_settings(cfg, tmp_path, env={"WANDB_DISABLED": "true"}) is None
    assert not (tmp_path / WANDB_ID).exists()
    first = wandb_settings(cfg, tmp_path, env={"WANDB_MODE": "offline", "WANDB_PROJECT": "theirs"})
    assert first["mode"] == "offline" and "project" not in first  # left to wandb, which reads the env
    assert (first["entity"], first["group"], first["tags"], first["name"]) == ("team", "lr-sweep", ["a", "b"],
                                                                              tmp_path.name)
    assert (tmp_path / WANDB_ID).read_text() == first["id"]
    moved = tmp_path.parent / "moved"
    shutil.move(tmp_path, moved)  # the id belongs to the run, not to its path
    assert wandb_settings(cfg, moved, env={})["id"] == first["id"]
    assert wandb_settings(cfg, moved, env={"WANDB_RUN_ID": "x1"})["id"] == "x1"


def test_offline_wandb_run_takes_the_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggingConfig(wandb_mode="offline", wandb_group="g1", wandb_tags=["t1"])
    sink = MetricsSink(tmp_path, cfg, {"seed": 1}, enabled=True)
    try:
        run = sink._wandb
        assert run.id == (tmp_path / WANDB_ID).read_text() and run.group == "g1" and list(run.tags) == ["t1"]
    finally:
        sink.close()


def test_the_paper_experiment_does_not_need_internet_by_default():
    assert load("experiment=snowcoder_1b3").logging.wandb_mode == "offline"


# ---- 6. exports are configured for inference -----------------------------------------------------------
def test_export_uses_the_kv_cache(two_checkpoints, tmp_path):
    out = export_checkpoint(two_checkpoints.root / "step_00000004", tmp_path / "export", dtype=torch.float32)
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert json.loads((out / "generation_config.json").read_text())["use_cache"] is True
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    lengths = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    prompt = torch.randint(1, TINY.vocab_size, (1, 7))
    model.generate(prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert lengths == [7, 1, 1, 1, 1]  # the prompt once, then one new token per step from the cache


def test_yaml_history_reads_what_run_writes(tmp_path):
    cfg = resolved(load("experiment=tiny"))
    assert yaml.safe_load(OmegaConf.to_yaml(cfg)) == cfg  # config.yaml round-trips for the identity check
