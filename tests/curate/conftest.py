"""Shared fixtures: small real code from this machine's Python installation, planted cases, configs."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

from omegaconf import OmegaConf

from arctic_pretrain.curate.config import CurateConfig
from tests.conftest import HUMANEVAL_0_SOLUTION, STDLIB, stdlib_file  # noqa: F401  (re-exported for the curate tests)

INCLUDE = Path(sysconfig.get_paths()["include"])



def make_config(inputs: list[str], output_dir: str | Path, *overrides: str) -> CurateConfig:
    """The config launch/curate.py would build, with dotlist overrides (type-checked by the schema)."""
    base = OmegaConf.structured(CurateConfig)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([f"inputs={inputs!r}".replace("'", '"'),
                                                           f"output_dir={output_dir}", *overrides]))
    return OmegaConf.to_object(merged)


def copy_real_repos(root: Path) -> None:
    """Three small real 'repositories': stdlib packages (Python) and the Python C headers (C)."""
    for pkg in ("json", "email"):
        shutil.copytree(STDLIB / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    headers = root / "cpython-include"
    headers.mkdir()
    for h in sorted(INCLUDE.glob("*.h"))[:25]:
        shutil.copy(h, headers / h.name)

