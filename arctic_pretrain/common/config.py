"""One config helper for every stage: the error types, key checking against the schema, Hydra registration,
and ``entry_point``, the one front door of every launcher.

The stage contract (docs/architecture.md, checked by tests/test_layout.py): ``arctic_pretrain/<stage>/``
exports ``run(cfg) -> Path`` (the folder it completed); ``<stage>/config.py`` holds the schema, ``validate``
and ``register``; ``launch/<stage>.py`` is ``entry_point`` around one call, with no try/except of its own:
``entry_point`` turns an error into its exit code (``EXIT_CODES``) and a one-line message naming it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # conf/<stage>/ beside the package (source checkout)


def conf_dir(stage: str) -> str:
    """``conf/<stage>``: the one place every entry point and test finds its Hydra configs."""
    return str(CONF_DIR / stage)


HYDRA_VERSION_BASE = "1.3"  # every entry point and every test composing a config


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and the value. Exit code 2."""

    exit_code = 2


class DataError(ValueError):
    """Input data that cannot be used (a file, a field, a value of the inputs, named). Exit code 3."""

    exit_code = 3


class StageIncomplete(RuntimeError):
    """Work that did not complete (tasks, jobs or requests that failed; their logs are named). What is
    finished is kept and a rerun resumes. Exit code 1."""

    exit_code = 1


# The exit code of each error an entry point reports in one line (any exception class may also set its own
# ``exit_code``, e.g. train's CorruptCheckpoint and TrainingDiverged); anything else surfaces with its traceback.
EXIT_CODES = {ConfigError: 2, DataError: 3, StageIncomplete: 1}


def exit_code(err: BaseException, extra: dict[type, int] | None = None) -> int | None:
    """The exit code ``entry_point`` gives ``err``, or None: not one of ours (let it surface with its traceback)."""
    for kind, code in (extra or {}).items():
        if isinstance(err, kind):
            return code
    return getattr(type(err), "exit_code", None)


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


def config_hash(data: Any, length: int = 16) -> str:
    """sha256 of ``data`` as JSON (sorted keys; ``str`` for what JSON cannot hold), first ``length`` hex
    characters. The length is the caller's: the hashes name folders and records of existing outputs
    (curate's and annotate's recorded hashes 16, evaluate's cache keys 20, a sweep's prefix folder 10), so
    changing one would make a rerun redo finished work instead of resuming it."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def register(name: str, schema: type, groups: dict[str, dict[str, Any]] | None = None) -> None:
    """Put ``schema`` in Hydra's ConfigStore as ``<name>_schema`` (YAML defaults lists extend it, so every
    YAML is type-checked) and optional structured groups (``{"executor": {"local": node, ...}}``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=f"{name}_schema", node=schema)
    for group, options in (groups or {}).items():
        for option, node in options.items():
            cs.store(group=group, name=option, node=node)


# ---- entry points: --help, exit code 2 for every config error, EXIT_CODES for the rest ------------------

CONFIG_ERROR_EXIT = EXIT_CODES[ConfigError]


def config_groups(stage: str) -> dict[str, list[str]]:
    """The stage's groups and their options: YAML under ``conf/<stage>/<group>/`` and structured groups
    registered in Hydra's ConfigStore (only this process's stage registers any)."""
    from hydra.core.config_store import ConfigStore

    groups: dict[str, set[str]] = {}
    for folder in sorted(p for p in Path(conf_dir(stage)).iterdir() if p.is_dir() and p.name != "hydra"):
        groups.setdefault(folder.name, set()).update(p.stem for p in folder.glob("*.yaml"))
    cs = ConfigStore.instance()
    for name in cs.list(""):
        if name != "hydra" and not name.endswith(".yaml"):
            groups.setdefault(name, set()).update(n.removesuffix(".yaml") for n in cs.list(name))
    return {group: sorted(options) for group, options in sorted(groups.items())}


def help_text(stage: str, doc: str, schema: type) -> str:
    """``--help``: the entry point's docstring (usage line and examples), its groups, its top-level keys."""
    lines = [doc.strip(), "", f"Config groups (group=option; conf/{stage}/):"]
    groups = config_groups(stage)
    lines += [f"  {group}: {', '.join(options)}" for group, options in groups.items()] or ["  (none)"]
    keys = [f.name for f in dataclasses.fields(schema) if f.name not in groups]
    lines += ["", "Keys (key=value, nested as a.b=value): " + ", ".join(keys),
              "Print the composed config: --cfg job.  Hydra's own options: --hydra-help.",
              f"A config error (unknown key, bad type or value, missing value) exits {CONFIG_ERROR_EXIT} naming it."]
    return "\n".join(lines)


def missing_message(err: Exception, hint: str = "") -> str:
    key = getattr(err, "full_key", None) or ""
    named = re.search(r"Missing mandatory value: ?([\w.\[\]]+)", str(err))
    if (not key or key.startswith("hydra.")) and named:  # a missing value behind an interpolation
        key = named.group(1)
    return f"{key or '?'}: has no value (mandatory){'; ' + hint if hint else ''}"


def renamed_overrides(args: list[str], renamed: dict[str, str]) -> list[str]:
    """Command-line overrides with each deprecated key (or group) of ``renamed`` ({old: new}) spelled new,
    ``+``/``~`` prefixes and the rest kept; a deprecation message names each one on stderr (rank 0 only).
    The old spellings keep working for one release (README: Deprecated spellings)."""
    import os
    import sys

    out = []
    for arg in args:
        match = re.match(r"([+~]*)([\w.]+)(?=[=@]|$)", arg)
        old = match.group(2) if match else None
        if old in renamed:
            arg = match.group(1) + renamed[old] + arg[match.end():]
            if os.environ.get("RANK", "0") == "0":
                print(f"deprecated: {old}= is now {renamed[old]}= (read as {arg}); {old}= stops working in the "
                      "next release", file=sys.stderr)
        out.append(arg)
    return out


def entry_point(stage: str, config_name: str, schema: type, doc: str, missing_hint: str = "",
                exit_codes: dict[type, int] | None = None, renamed: dict[str, str] | None = None):
    """Decorator for a stage's ``main(cfg: Schema)``, in place of ``hydra.main``: ``-h/--help`` prints
    ``help_text``; the composed config is checked with ``to_object``; every config error (Hydra's own
    composition errors included: unknown key, bad type, unknown group option) exits 2 naming it; an error
    with an exit code (``exit_code``; ``exit_codes`` adds a stage's own, e.g. train's FileNotFoundError: 2)
    prints ``error: <message>`` and exits with it. A string ``main`` returns is printed (its summary).
    ``renamed`` ({old: new}) keeps deprecated override keys and group names working (``renamed_overrides``)."""
    import functools

    def wrap(task):
        @functools.wraps(task)
        def main() -> None:
            import sys

            import hydra
            from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

            if renamed:
                sys.argv[1:] = renamed_overrides(sys.argv[1:], renamed)
            if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
                print(help_text(stage, doc, schema))
                sys.exit(0)
            started = False

            def job(dict_cfg):
                nonlocal started
                started = True
                try:
                    from omegaconf import OmegaConf

                    try:
                        OmegaConf.to_container(dict_cfg, throw_on_missing=True)
                    except MissingMandatoryValue as err:
                        raise ConfigError(missing_message(err, missing_hint)) from None
                    summary = task(to_object(dict_cfg, schema))
                except Exception as err:
                    code = exit_code(err, exit_codes)
                    if code is None:
                        raise  # not one of ours (a torch error, a bug): its traceback is the message
                    print(f"error: {err}", file=sys.stderr)
                    sys.exit(code)
                if isinstance(summary, str) and summary:
                    print(summary)

            try:
                hydra.main(version_base=HYDRA_VERSION_BASE, config_path=conf_dir(stage), config_name=config_name)(job)()
            except SystemExit as exc:
                if exc.code == 1 and not started:  # Hydra printed a composition error (key, value) above
                    print(f"error: invalid configuration (see above); python {sys.argv[0]} --help lists "
                          "the groups and keys", file=sys.stderr)
                    sys.exit(CONFIG_ERROR_EXIT)
                raise
            except (MissingMandatoryValue, InterpolationToMissingValueError) as err:  # e.g. hydra.run.dir=${output_dir}/... with no output_dir
                if started:
                    raise
                print(f"error: {missing_message(err, missing_hint)}", file=sys.stderr)
                sys.exit(CONFIG_ERROR_EXIT)

        return main

    return wrap
