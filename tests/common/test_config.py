"""The entry-point helpers every stage shares: --help text from the stage's own groups, missing values named."""

from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from arctic_pretrain.common.config import config_groups, config_hash, exit_code, help_text, missing_message
from arctic_pretrain.train.config import TrainConfig


def test_help_lists_only_the_stage_groups_with_usage_and_keys(monkeypatch):
    # a launcher process registers one stage's structured groups; this pytest process may hold others' (an
    # annotate test registers its executor group), so start from Hydra's own entries as a launcher does
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    monkeypatch.setattr(store, "repo", {k: v for k, v in store.repo.items() if k == "hydra" or k.endswith(".yaml")})
    text = help_text("train", "Train.\n\nUsage: python launch/train.py experiment=NAME\n", TrainConfig)
    assert text.startswith("Train.") and "Usage: python launch/train.py" in text
    assert "  model: small, snowcoder_1b3, tiny" in text and "output_dir" in text
    assert "executor" not in config_groups("train") and "model" not in config_groups("evaluate")


def test_missing_value_names_the_key_not_the_hydra_path():
    cfg = OmegaConf.structured(TrainConfig)
    try:
        OmegaConf.to_container(cfg.training, throw_on_missing=True)
    except MissingMandatoryValue as err:
        assert missing_message(err, "pick one").startswith("training.seq_len: has no value (mandatory); pick one")
    else:
        raise AssertionError("seq_len has no default")


def test_config_hash_is_stable_because_it_names_existing_outputs():
    """Recorded hashes and a sweep's prefix folder are compared with new ones on every rerun: the same
    config must hash to the same characters as before, or finished work is redone instead of resumed."""
    data = {"b": [1, 2], "a": {"x": None}}
    assert config_hash(data, 16) == "89db19551027f388"  # curate's, annotate's recorded config hashes
    assert config_hash(data, 10) == "89db195510"  # train/sweep.py's prefix folder
    assert config_hash(("train", data), 16) == "c084a0e29b5a5f2c"  # annotate's per-step hashes hash tuples


def test_exit_codes_come_from_the_error_type():
    from arctic_pretrain.common.config import ConfigError, DataError, StageIncomplete

    class Diverged(RuntimeError):
        exit_code = 3

    assert [exit_code(e) for e in (ConfigError("k"), DataError("f"), StageIncomplete("t"), Diverged())] == [2, 3, 1, 3]
    assert exit_code(RuntimeError("CUDA error")) is None  # torch's errors surface with their traceback
    assert exit_code(FileNotFoundError("x"), {FileNotFoundError: 2}) == 2


def test_renamed_overrides_read_the_old_spelling_as_the_new_one(capsys, monkeypatch):
    from arctic_pretrain.common.config import renamed_overrides

    monkeypatch.delenv("RANK", raising=False)
    renamed = {"run_dir": "output_dir", "recipe": "experiment"}
    args = ["run_dir=/r", "+recipe=paper", "~run_dir", "run_directory=x", "data.run_dir=y", "--cfg", "job"]
    assert renamed_overrides(args, renamed) == ["output_dir=/r", "+experiment=paper", "~output_dir",
                                                "run_directory=x", "data.run_dir=y", "--cfg", "job"]
    err = capsys.readouterr().err
    assert "deprecated: run_dir= is now output_dir=" in err and "recipe= is now experiment=" in err
    monkeypatch.setenv("RANK", "3")  # one message per job, not one per rank
    renamed_overrides(["run_dir=/r"], renamed)
    assert capsys.readouterr().err == ""


def test_old_spellings_still_compose_through_the_launchers(tmp_path):
    """train's run_dir=, annotate's stage= and recipe=, the pipeline's run_dir= (one release of grace)."""
    import yaml

    from tests.conftest import run_cli

    train = run_cli(["launch/train.py", "experiment=tiny", f"run_dir={tmp_path / 'r'}", "--cfg", "job"])
    assert train.returncode == 0 and yaml.safe_load(train.stdout)["output_dir"] == str(tmp_path / "r"), train.stderr
    assert "run_dir= is now output_dir=" in train.stderr
    annotate = run_cli(["launch/annotate.py", "curated=/c", "recipe=paper", "stage=select", "--cfg", "job"])
    printed = yaml.safe_load(annotate.stdout)
    assert annotate.returncode == 0 and printed["step"] == "select", annotate.stderr
    assert printed["model"]["encoder"] == "Snowflake/snowflake-arctic-embed-m"  # conf/annotate/experiment/paper
    assert "stage= is now step=" in annotate.stderr and "recipe= is now experiment=" in annotate.stderr
    pipeline = run_cli(["launch/pipeline.py", "experiment=tiny", "run_dir=/t", "--cfg", "job"])
    assert pipeline.returncode == 0 and yaml.safe_load(pipeline.stdout)["train_dir"] == "/t", pipeline.stderr


def test_log_to_loguru_puts_stdlib_records_where_datatrove_logs():
    """annotate's finish job (a datatrove step on SLURM) runs driver code that logs with stdlib logging;
    inside the task those records must reach loguru, which datatrove points at the task's log file."""
    import logging

    from loguru import logger

    from arctic_pretrain.common.logs import log_to_loguru

    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="INFO", format="{level} {message}")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        log_to_loguru()
        logging.getLogger("arctic_pretrain.annotate.pipeline").info("selected: {python: 3 files}")
        logging.getLogger("x").debug("below the level")
    finally:
        logger.remove(sink)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert seen == ["INFO arctic_pretrain.annotate.pipeline: selected: {python: 3 files}\n"]
