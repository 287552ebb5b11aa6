"""Every shipped config composes and validates; every bad config fails naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from arctic_pretrain.common.config import HYDRA_VERSION_BASE, ConfigError
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.train.config import TrainConfig, register
from arctic_pretrain.train.validate import validate_config, validate_data_plan
from tests.conftest import ROOT, make_source, run_cli

register()
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "train" / "experiment").glob("*.yaml"))


def load(*overrides: str) -> TrainConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base=HYDRA_VERSION_BASE):
        return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides)))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = load(f"experiment={experiment}")
    validate_config(cfg, world_size=1)


@pytest.mark.parametrize("group", ["model", "curriculum", "deepspeed", "data"])
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (ROOT / "conf" / "train" / group).glob("*.yaml")):
        cfg = load("experiment=snowcoder_1b3", f"{group}={option}")
        assert getattr(cfg, group).name == option


def test_paper_numbers_are_the_defaults():
    cfg = load("experiment=snowcoder_1b3")
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.intermediate_size, m.num_heads, m.num_kv_heads, m.max_seq_len) == (
        2048, 24, 5632, 16, 16, 8192)
    assert m.tie_embeddings and m.vocab_multiple == 64
    assert cfg.training.global_batch_size * cfg.training.seq_len == 512 * 8192
    phases = cfg.curriculum.phases
    assert list(phases) == ["general", "high_quality", "synthetic"]
    assert [p.tokens for p in phases.values()] == ["500B", "50B", "5B"]
    g, hq = phases["general"].lr, phases["high_quality"].lr
    assert (g.peak_lr, g.end_lr, g.warmup_steps, g.decay) == (5.3e-4, 5.3e-5, 600, "cosine")
    assert (hq.peak_lr, hq.end_lr, hq.warmup_steps, hq.warmup_start_lr, hq.decay) == (5.3e-4, 0.0, 1000, 0.0, "linear")
    assert len(phases["general"].mixture) == 18  # the paper's 18 languages
    assert cfg.data.sources["high_quality"].max_epochs >= 4
    assert cfg.fim.rate == 0 and all(p.fim.rate is None for p in phases.values())  # no FIM: the paper has none


def test_fim_preset_is_starcoder2s_and_a_phase_may_turn_it_off():
    from arctic_pretrain.data.fim import FimSettings, phase_settings

    cfg = load("experiment=snowcoder_1b3", "+fim=starcoder2", "curriculum.phases.synthetic.fim.rate=0")
    validate_config(cfg, world_size=1)
    assert phase_settings(cfg.fim, cfg.curriculum.phases) == {
        "general": FimSettings(0.5, 0.5, False), "high_quality": FimSettings(0.5, 0.5, False),
        "synthetic": FimSettings(0.0, 0.5, False)}


def test_budget_is_one_override_away():
    cfg = load("experiment=snowcoder_1b3", "curriculum.phases.high_quality.tokens=25B")
    assert cfg.curriculum.phases["high_quality"].tokens == "25B"


@pytest.mark.parametrize("override,message", [
    ("curriculum.phases.general.tokens=-5B", "curriculum.phases.general.tokens='-5B'"),
    ("curriculum.phases.general.tokens=0", "curriculum.phases.general.tokens='0': phase budget must be positive"),
    ("curriculum.phases.general.mixture.python=-1", "curriculum.phases.general.mixture.python=-1.0: weights must not"),
    ("curriculum.phases.general.mixture={python:0,c:0}", "curriculum.phases.general.mixture={'python': 0.0, 'c': 0.0}: weights are all zero"),
    ("+curriculum.phases.general.mixture.go=1", "curriculum.phases.general.mixture.go=1.0: no such data source"),
    ("training.seq_len=4096", "training.seq_len=4096: longer than the model holds (model.max_seq_len=1024)"),
    ("training.global_batch_size=12", "training.global_batch_size=12: must be a multiple of micro_batch_size"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage=4"),
    ("model.attention=flash", "model.attention='flash'"),
    ("profile.steps=[5,2]", "profile.steps=[5, 2]: needs 1 <= from <= to"),
    ("profile.steps=[3]", "profile.steps=[3]: must be [from, to]"),
    ("profile.steps=[300,400]", "profile.steps=[300, 400]: ends after the curriculum's last step (323)"),
    ("profile.ranks=[1]", "profile.ranks=[1]: rank 1 is not in 0..0"),
    ("curriculum.phases.synthetic.seq_len=768", "curriculum.phases.synthetic.seq_len=768: tokens per step stay 4,096 "
     "(training.global_batch_size=16 x training.seq_len=256), so a micro-batch of training.micro_batch_size=8 x 256 "
     "= 2048 tokens must hold whole sequences of 768: 2048 / 768 = 2.66667"),
    ("curriculum.phases.synthetic.seq_len=2048", "curriculum.phases.synthetic.seq_len=2048: longer than the model "
     "holds (model.max_seq_len=1024"),
    ("curriculum.phases.synthetic.rope_theta=0", "curriculum.phases.synthetic.rope_theta=0.0: must be positive"),
    ("fim.rate=1.5", "fim.rate=1.5: must be in [0, 1]"),
    ("curriculum.phases.synthetic.fim.spm_rate=-0.1", "curriculum.phases.synthetic.fim.spm_rate=-0.1: must be in"),
])
def test_bad_values_fail_naming_the_key(override, message):
    cfg = load("experiment=demo", override)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, world_size=1)
    assert message in str(err.value)


def test_the_paper_keeps_one_seq_len_and_rope_theta():
    cfg = load("experiment=snowcoder_1b3")
    assert all(p.seq_len is None and p.rope_theta is None for p in cfg.curriculum.phases.values())
    long = load("experiment=demo", "curriculum.phases.synthetic.seq_len=512", "curriculum.phases.synthetic.rope_theta=5e5")
    validate_config(long, world_size=2)  # 8 x 256 tokens hold 4 sequences of 512; accumulation stays 1


def test_a_profile_window_must_end_within_max_steps_and_the_curriculum():
    from arctic_pretrain.train.curriculum import Curriculum
    from arctic_pretrain.train.dry_run import without_language_shares

    cfg = load("experiment=demo", "profile.steps=[1,323]")
    validate_config(cfg, world_size=1)  # the curriculum's last step: the one Curriculum computes
    assert Curriculum(without_language_shares(cfg.curriculum), 16 * 256, dict.fromkeys(cfg.data.sources, 1)
                      ).total_steps == 323
    with pytest.raises(ConfigError, match=r"profile.steps=\[5, 20\]: ends after max_steps \(10\)"):
        validate_config(load("experiment=demo", "max_steps=10", "profile.steps=[5,20]"), world_size=1)
    validate_config(load("experiment=demo", "profile.ranks=[0,1]", "profile.steps=[2,3]"), world_size=2)


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="trainig"):
        load("experiment=demo", "trainig.seq_len=5")


def test_missing_source_and_overdrawn_source(tmp_path):
    cfg = load("experiment=tiny", f"data.sources.python.path={tmp_path / 'nowhere'}")
    from arctic_pretrain.train.runner import open_sources

    with pytest.raises(FileNotFoundError, match="data.sources.python.path=.*nowhere.*no manifest.json"):
        open_sources(cfg)
    src = TokenSource(make_source(tmp_path / "s", [[1] * 300] * 10))
    cfg = load("experiment=tiny", "data.sources.python.max_epochs=1")
    sources = {name: src for name in cfg.data.sources}
    with pytest.raises(ConfigError, match="data.sources.python.max_epochs=1.0: the curriculum plans"):
        validate_data_plan(cfg, sources)


def test_cli_rejects_bad_config_before_training(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", "curriculum.phases.synthetic.tokens=-1"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "curriculum.phases.synthetic.tokens='-1'" in proc.stderr
    assert not (run_dir / "checkpoints").exists()


def test_cli_prints_composed_config():
    proc = run_cli(["launch/train.py", "experiment=snowcoder_1b3", "--cfg", "job"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = OmegaConf.create(proc.stdout)
    assert printed.model.hidden_size == 2048 and printed.curriculum.phases.general.tokens == "500B"


def test_cli_strips_launcher_local_rank(tmp_path):
    proc = run_cli(["launch/train.py", "--local_rank=0", "experiment=tiny", "--cfg", "job"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path  # noqa: B018


@pytest.mark.parametrize("zero,params,bucket", [("zero1", 362_816, 362_816), ("zero2", 1_300_000_000, 500_000_000),
                                                ("zero3", 362_816, None)])
def test_the_gradient_bucket_fits_the_model(zero, params, bucket):
    """ZeRO-1/2 allocate reduce_bucket_size elements every step: a tiny model must not get DeepSpeed's 2 GB."""
    from arctic_pretrain.train.ds_config import deepspeed_config

    cfg = load("experiment=tiny", f"deepspeed={zero}")
    assert deepspeed_config(cfg, 2, params=params)["zero_optimization"].get("reduce_bucket_size") == bucket
    cfg.deepspeed.extra = {"zero_optimization": {"reduce_bucket_size": 1000}}  # the user's word wins
    if bucket:
        assert deepspeed_config(cfg, 2, params=params)["zero_optimization"]["reduce_bucket_size"] == 1000
