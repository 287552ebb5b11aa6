"""A small curated root and an annotate-style seeds folder built from this machine's own code.

The seeds folder follows the annotate stage's contract (selection.json + selected/<language>.jsonl,
highest score first) but is written here, so these tests do not depend on the annotate code.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from arctic_pretrain.data.documents import iter_documents
from arctic_pretrain.data.tokenizer import TokenizeConfig, prepare_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _python_files(n: int) -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for sub in ("json", "email", "logging", "http", "importlib", "concurrent/futures", "urllib"):
        for p in sorted((lib / sub).glob("*.py")):
            if 800 < p.stat().st_size < 30_000:
                out.append(p)
    return out[:n]


def _c_files(n: int) -> list[Path]:
    inc = Path(sysconfig.get_paths()["include"])
    return sorted(p for p in inc.glob("*.h") if 500 < p.stat().st_size < 20_000)[:n]


def build_curated(root: Path, n_python: int = 60, n_c: int = 12) -> Path:
    """<root>/documents/<language>/part-0.jsonl + <root>/tokenizer (a 512-token BPE trained on them)."""
    for lang, files in (("python", _python_files(n_python)), ("c", _c_files(n_c))):
        folder = root / "documents" / lang
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "part-0.jsonl", "w") as fh:
            for i, p in enumerate(files):
                rec = {"text": p.read_text(encoding="utf-8", errors="replace"), "id": f"{lang}-{i}",
                       "metadata": {"language": lang, "repo": p.parent.name, "path": p.name}}
                fh.write(json.dumps(rec) + "\n")
    prepare_tokenizer(TokenizeConfig(train_vocab_size=512, train_sample_mb=2), root / "documents", root / "tokenizer")
    return root


def build_seeds(curated: Path, folder: Path) -> Path:
    """The annotate contract: scores decreasing with the line number (a fixed, known order)."""
    (folder / "selected").mkdir(parents=True, exist_ok=True)
    languages = {}
    by_lang: dict[str, list] = {}
    for ref, rec in iter_documents(curated / "documents"):
        by_lang.setdefault(rec["metadata"]["language"], []).append((ref, rec))
    for lang, docs in by_lang.items():
        rows = []
        for i, (ref, rec) in enumerate(docs):
            rows.append({"key": ref.key, "file": ref.file, "offset": ref.offset, "language": lang,
                         "repo": rec["metadata"]["repo"], "path": rec["metadata"]["path"],
                         "score": round(1.0 - i / 1000, 4), "tokens": len(rec["text"]) // 4})
        with open(folder / "selected" / f"{lang}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        languages[lang] = {"threshold": 0.0, "files": len(rows), "tokens": tokens, "share": 0.0, "repeats": 4}
    total = sum(v["tokens"] for v in languages.values())
    for v in languages.values():
        v["share"] = v["tokens"] / total
    (folder / "selection.json").write_text(json.dumps({"curated": str(curated.resolve()), "languages": languages}))
    return folder


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """<data.root> with documents/, tokenizer/ and high_quality/ (the seeds), as the stages lay it out."""
    root = tmp_path_factory.mktemp("data-root")
    build_curated(root)
    build_seeds(root, root / "high_quality")
    return root


@pytest.fixture
def seeds(data_root) -> Path:
    return data_root / "high_quality"
