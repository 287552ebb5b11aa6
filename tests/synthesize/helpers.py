"""Compose a synthesis config the way launch/synthesize.py does (Hydra, the schema, validation)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from arctic_pretrain.common.config import HYDRA_VERSION_BASE, conf_dir
from arctic_pretrain.synthesize.config import SynthesizeConfig, register, to_config, validate


def make_config(*overrides: str) -> SynthesizeConfig:
    register()
    with initialize_config_dir(config_dir=conf_dir("synthesize"), version_base=HYDRA_VERSION_BASE):
        cfg = to_config(compose("synthesize", overrides=list(overrides)))
    validate(cfg)  # what run() checks first
    return cfg


def records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "generations").glob("*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def verdicts(out: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    return {r["id"]: r["verdict"] for r in rows}
