"""The layout's promises: stages never import each other, and no import cycle exists between
packages, counting imports inside functions (they hide cycles rather than remove them)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "arctic_pretrain"
STAGES = {"curate", "annotate", "synthesize", "train", "evaluate"}


def package_imports(package: Path = PACKAGE) -> dict[str, dict[str, str]]:
    """package -> {imported package: where}, for every import statement at any depth."""
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for f in package.rglob("*.py"):
        rel = f.relative_to(package).parts
        pkg = rel[0] if len(rel) > 1 else rel[0][:-3]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "arctic_pretrain" and len(parts) > 1 and parts[1] != pkg:
                    edges[pkg].setdefault(parts[1], f"{f.relative_to(package.parent)}:{node.lineno}")
    return edges


def test_every_stage_has_its_package_entry_config_and_tests():
    root = PACKAGE.parent
    for stage in ("curate", "train", "evaluate") + tuple(s for s in ("annotate", "synthesize") if (PACKAGE / s).is_dir()):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
        assert (root / "launch" / f"{stage}.py").is_file(), stage
        assert (root / "conf" / stage).is_dir(), stage
        assert (root / "tests" / stage).is_dir(), stage


def test_stages_import_only_the_shared_base():
    edges = package_imports()
    bad = [f"{a} -> {b} ({where})" for a, targets in edges.items() for b, where in targets.items()
           if a in STAGES and b in STAGES]
    assert not bad, bad


def cycles(edges: dict[str, dict[str, str]]) -> list[str]:
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return [f"{a} -> {b} ({where}) -> ... -> {a}" for a in edges for b, where in edges[a].items() if a in reach(b)]


def test_no_package_import_cycle():
    found = cycles(package_imports())
    assert not found, found


def test_the_walk_sees_a_cycle_hidden_inside_a_function(tmp_path):
    pkg = tmp_path / "arctic_pretrain"
    for name, body in {"a/__init__.py": "from arctic_pretrain.b import x\n",
                       "b/__init__.py": "def f():\n    from arctic_pretrain.a import y\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(body)
    edges = package_imports(pkg)
    assert edges == {"a": {"b": "arctic_pretrain/a/__init__.py:1"}, "b": {"a": "arctic_pretrain/b/__init__.py:2"}}
    assert len(cycles(edges)) == 2


# ---- the stage contract (arctic_pretrain/common/config.py, docs/architecture.md) ---------------------------

def test_every_stage_follows_the_contract():
    """Each stage exports ``run(cfg) -> Path``, keeps ``validate`` and ``register`` in its ``config.py``, and
    its launcher is ``entry_point`` around one call: no try/except (entry_point maps errors to exit codes)."""
    import importlib
    import inspect

    root = PACKAGE.parent
    for stage in sorted(STAGES):
        package = importlib.import_module(f"arctic_pretrain.{stage}")
        assert "run" in package.__all__ and inspect.isfunction(package.run), stage
        assert inspect.signature(package.run).return_annotation in ("Path", "pathlib.Path"), stage
        config = importlib.import_module(f"arctic_pretrain.{stage}.config")
        assert inspect.isfunction(config.validate) and inspect.isfunction(config.register), stage
        launcher = ast.parse((root / "launch" / f"{stage}.py").read_text())
        tries = [node.lineno for node in ast.walk(launcher) if isinstance(node, ast.Try)]
        assert not tries, f"launch/{stage}.py: try/except at lines {tries} (entry_point maps errors to exit codes)"
        decorated = [f for f in launcher.body if isinstance(f, ast.FunctionDef) and f.name == "main"]
        assert decorated and any(getattr(d.func, "id", "") == "entry_point" for d in decorated[0].decorator_list
                                 if isinstance(d, ast.Call)), f"launch/{stage}.py: main is not an entry_point"


def test_a_stage_run_stays_a_function_after_its_modules_load():
    """A submodule named like the front door (train/run.py once) replaces ``<stage>.run`` on import."""
    import importlib
    import inspect

    for stage in sorted(STAGES):
        for module in (PACKAGE / stage).glob("*.py"):
            if module.stem == "run":
                raise AssertionError(f"{module}: importing it would replace arctic_pretrain.{stage}.run")
        assert inspect.isfunction(importlib.import_module(f"arctic_pretrain.{stage}").run), stage
