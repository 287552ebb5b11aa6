"""The Hydra contract: conf/curate.yaml composes the schema; unknown keys and bad values fail by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from arctic_pretrain.common.config import HYDRA_VERSION_BASE
from arctic_pretrain.curate.config import ConfigError, CurateConfig, register, to_config, validate

from .conftest import make_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "curate"


def _compose(*overrides: str) -> CurateConfig:
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base=HYDRA_VERSION_BASE):
        cfg = compose(config_name="curate", overrides=["inputs=[/x]", "output_dir=/y", *overrides])
    return to_config(cfg)


def test_yaml_composes_with_recipe_defaults() -> None:
    cfg = _compose()
    validate(cfg)
    assert (cfg.dedup.num_bands, cfg.dedup.rows_per_band, cfg.dedup.ngram, cfg.dedup.threshold) == (25, 10, 5, 0.7)
    assert cfg.filter.min_alpha_fraction == 0.25 and cfg.filter.data_file_max_lines == 512
    assert cfg.group.metadata_probability == 0.5
    assert cfg.executor.kind == "local"


def test_executor_group_swaps() -> None:
    cfg = _compose("executor=slurm", "executor.slurm.partition=cpu")  # the README's command, no `+`
    validate(cfg)
    assert cfg.executor.kind == "slurm" and cfg.executor.slurm["partition"] == "cpu"
    assert cfg.executor.slurm["time"] == "24:00:00" and cfg.executor.tasks == 256
    with pytest.raises(ConfigError, match=r"executor\.slurm\.partition"):
        validate(_compose("executor=slurm"))
    assert _compose("executor=ray").executor.kind == "ray"


def test_unknown_key_fails() -> None:
    with pytest.raises(ConfigError, match=r"filter\.max_lenght: unknown key"):
        _compose("+filter.max_lenght=3")
    with pytest.raises(ConfigError, match="bogus"):
        _compose("+bogus=1")
    with pytest.raises(Exception, match="nme"):
        _compose("+decontamination.benchmarks=[{nme: x, source: y}]")
    with pytest.raises(Exception, match="max_lenght"):
        _compose("filter.max_lenght=3")


@pytest.mark.parametrize(("override", "key"), [
    ("filter.min_alpha_fraction=1.5", "filter.min_alpha_fraction"),
    ("dedup.threshold=0", "dedup.threshold"),
    ("dedup.threshold=0.9", "dedup.threshold"),  # 25 x 10 bands/rows implement ~0.72, not 0.9
    ("group.buckets=0", "group.buckets"),
    ("executor.kind=mpi", "executor.kind"),
    ("read.languages=[python,cobol]", "read.languages"),
    ("read.repo_pattern=nogroup", "read.repo_pattern"),
])
def test_bad_values_name_the_key(override: str, key: str, tmp_path: Path) -> None:
    cfg = make_config(["/x"], tmp_path, override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_config_hash_ignores_only_runtime_keys(tmp_path: Path) -> None:
    from arctic_pretrain.curate.pipeline import config_hash

    base = config_hash(make_config(["/x"], tmp_path))
    assert config_hash(make_config(["/x"], tmp_path, "executor.workers=7", "progress=false")) == base
    for override in ("executor.tasks=9", "filter.max_lines=10", "group.seed=2"):
        assert config_hash(make_config(["/x"], tmp_path, override)) != base, override
    assert config_hash(make_config(["/y"], tmp_path)) != base
