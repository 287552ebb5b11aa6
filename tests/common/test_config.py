"""The entry-point helpers every stage shares: --help text from the stage's own groups, missing values named."""

from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from arctic_pretrain.common.config import config_groups, help_text, missing_message
from arctic_pretrain.train.config import TrainConfig


def test_help_lists_only_the_stage_groups_with_usage_and_keys():
    text = help_text("train", "Train.\n\nUsage: python launch/train.py experiment=NAME\n", TrainConfig)
    assert text.startswith("Train.") and "Usage: python launch/train.py" in text
    assert "  model: small, snowcoder_1b3, tiny" in text and "run_dir" in text
    assert "executor" not in config_groups("train") and "model" not in config_groups("evaluate")


def test_missing_value_names_the_key_not_the_hydra_path():
    cfg = OmegaConf.structured(TrainConfig)
    try:
        OmegaConf.to_container(cfg.training, throw_on_missing=True)
    except MissingMandatoryValue as err:
        assert missing_message(err, "pick one").startswith("training.seq_len: has no value (mandatory); pick one")
    else:
        raise AssertionError("seq_len has no default")
