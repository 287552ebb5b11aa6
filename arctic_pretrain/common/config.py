"""One config helper for every stage: one error type, key checking against the schema, Hydra registration.

Each stage keeps its schema (dataclasses) in its own ``config.py``; what is common is how a composed
config is checked: unknown keys and bad values fail with one ``ConfigError`` whose message names the
key and the value, and entry points turn it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # conf/<stage>/ beside the package (source checkout)


def conf_dir(stage: str) -> str:
    """``conf/<stage>``: the one place every entry point and test finds its Hydra configs."""
    return str(CONF_DIR / stage)


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and the value."""


def require(ok: bool, key: str, value: object, why: str) -> None:
    """Raise ``ConfigError("key=value: why")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def check_keys(node: Any, schema: type, prefix: str = "") -> None:
    """Every key of ``node`` must be a field of ``schema`` (recursively). Keys added with Hydra's
    ``+key=...`` get through composition even on a structured config, so this runs on every load."""
    from omegaconf import DictConfig, ListConfig

    hints = typing.get_type_hints(schema)
    known = {f.name for f in dataclasses.fields(schema)}
    for key in node:
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown key (known under {prefix.rstrip('.') or 'the top level'}: {sorted(known)})")
        value, hint = node[key], hints[key]
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(hint):
            check_keys(value, hint, f"{path}.")
        elif isinstance(value, ListConfig) and typing.get_args(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            for i, item in enumerate(value):
                check_keys(item, typing.get_args(hint)[0], f"{path}[{i}].")


def to_object(cfg: Any, schema: type) -> Any:
    """A composed DictConfig -> the schema's dataclass instance, keys checked first; OmegaConf's own
    type errors become ConfigError naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(cfg, schema)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{key}: {getattr(err, 'msg', err)}") from None


def register(name: str, schema: type, groups: dict[str, dict[str, Any]] | None = None) -> None:
    """Put ``schema`` in Hydra's ConfigStore as ``<name>_schema`` (YAML defaults lists extend it, so every
    YAML is type-checked) and optional structured groups (``{"executor": {"local": node, ...}}``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=f"{name}_schema", node=schema)
    for group, options in (groups or {}).items():
        for option, node in options.items():
            cs.store(group=group, name=option, node=node)
