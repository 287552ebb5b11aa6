"""Reading: languages from names, notebooks to scripts, and every kind of bad input counted, not fatal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from arctic_pretrain.curate.config import ReadConfig
from arctic_pretrain.curate.readers import PlanInputs, ReadInputs, notebook_to_script
from arctic_pretrain.data.languages import PAPER_LANGUAGES, language_of, normalize_language


def test_language_table_covers_the_paper() -> None:
    samples = {"a.py": "python", "A.java": "java", "x.cpp": "cpp", "x.c": "c", "x.h": "c", "x.js": "javascript",
               "x.php": "php", "x.cs": "csharp", "x.go": "go", "x.ts": "typescript", "x.sql": "sql",
               "x.rb": "ruby", "x.rs": "rust", "x.ipynb": "jupyter", "x.scala": "scala", "x.kt": "kotlin",
               "x.sh": "shell", "x.dart": "dart", "x.swift": "swift", "README.md": "markdown",
               "p.json": "json", "c.yml": "yaml", "Rakefile": "ruby", "x.PY": "python"}
    assert {language_of(p) for p in samples} >= set(PAPER_LANGUAGES)
    assert all(language_of(p) == lang for p, lang in samples.items())
    assert language_of("image.png") is None
    assert normalize_language("C++") == "cpp" and normalize_language("Jupyter Notebook") == "jupyter"


def test_notebook_becomes_script() -> None:
    nb = {"cells": [{"cell_type": "markdown", "source": ["# Title\n", "Some text"]},
                    {"cell_type": "code", "source": ["import os\n", "print(os.name)"]}],
          "metadata": {"kernelspec": {"language": "python"}}}
    script = notebook_to_script(json.dumps(nb))
    assert script == "# # Title\n# Some text\n\nimport os\nprint(os.name)\n"
    assert notebook_to_script("{not json") is None


def _read(inputs: list[str], work: Path, cfg: ReadConfig | None = None, world: int = 1) -> tuple[list, dict]:
    cfg = cfg or ReadConfig()
    list(PlanInputs(inputs, cfg, str(work), world).run())
    docs, stats = [], {}
    for rank in range(world):
        reader = ReadInputs(cfg, str(work))
        docs += list(reader.run(None, rank, world))
        for k, v in reader.stats.stats.items():
            stats[k] = stats.get(k, 0) + v.total
    stats.update({f"plan_{k}": v for k, v in json.loads((work / "plan_skips.json").read_text()).items()})
    return docs, stats


def test_bad_inputs_are_counted_and_named(tmp_path: Path, normal_python: str) -> None:
    repo = tmp_path / "in" / "repo"
    repo.mkdir(parents=True)
    (repo / "good.py").write_text(normal_python)
    (repo / "binary.py").write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    (repo / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (repo / "empty.py").write_text("  \n")
    with open(repo / "huge.js", "w") as fh:  # 50 MB on a single line
        chunk = "x" * 2**20
        for _ in range(50):
            fh.write(chunk)
    (repo / "loop").mkdir()
    os.symlink(repo, repo / "loop" / "back")
    (repo / "dangling.py").symlink_to(tmp_path / "nowhere.py")
    lines = [json.dumps({"content": normal_python, "path": "a/b.py", "repo": "jr"}), "{oops", "",
             json.dumps({"path": "no_content.py"})]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    table = pa.table({"content": [normal_python] * 3, "path": ["p.py", "q.go", "r.txt"], "repo": ["pr"] * 3})
    pq.write_table(table, tmp_path / "ok.parquet")
    blob = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(blob[: len(blob) // 2])
    inputs = [str(tmp_path / "in"), str(tmp_path / "data.jsonl"), str(tmp_path / "ok.parquet"),
              str(tmp_path / "cut.parquet")]
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        docs, stats = _read(inputs, tmp_path / "work", world=2)
    finally:
        logger.remove(sink)
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {"repo/good.py", "jr/a/b.py", "pr/p.py", "pr/q.go"}  # r.txt: text not in defaults
    assert by_id["repo/good.py"].metadata == {"language": "python", "repo": "repo", "path": "good.py",
                                              "source": "folder"}
    assert by_id["pr/q.go"].metadata["language"] == "go"
    for reason in ("binary", "invalid_utf8", "empty", "too_large", "malformed_jsonl", "missing_content",
                   "unreadable"):
        assert stats.get(f"skipped_{reason}", 0) >= 1, reason
    assert stats["plan_symlink_loop"] >= 1 and stats["plan_corrupt_parquet"] == 1
    assert stats["skipped_language_text"] == 1
    for name in ("binary.py", "latin1.py", "empty.py", "huge.js", "data.jsonl:2", "cut.parquet", "loop/back",
                 "dangling.py"):
        assert any(name in m for m in messages), name


def test_repository_from_pattern(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "org" / "proj" / "src").mkdir(parents=True)
    (root / "org" / "proj" / "src" / "m.py").write_text("import os\nprint(os.getcwd())\n")
    docs, _ = _read([str(root)], tmp_path / "w", ReadConfig(repo_pattern=r"^([^/]+/[^/]+)/"))
    assert [(d.metadata["repo"], d.metadata["path"]) for d in docs] == [("org/proj", "src/m.py")]
    docs, _ = _read([str(root)], tmp_path / "w2", ReadConfig(repo_depth=1))
    assert [(d.metadata["repo"], d.metadata["path"]) for d in docs] == [("org", "proj/src/m.py")]


def test_hf_dataset_input_is_sharded(tmp_path: Path, monkeypatch, normal_python: str) -> None:
    import datasets

    rows = [{"content": normal_python + f"\n# {i}\n", "path": f"m{i}.py", "repo": "hub/repo", "language": "Python"}
            for i in range(5)]
    calls = []

    def fake_load_dataset(name: str, split: str, streaming: bool):
        calls.append((name, split, streaming))
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs, _ = _read(["hf:bigcode/some-code"], tmp_path / "w", world=2)
    assert sorted(d.metadata["path"] for d in docs) == [f"m{i}.py" for i in range(5)]  # each row once
    assert all(d.metadata["repo"] == "hub/repo" and d.metadata["language"] == "python" for d in docs)
    assert calls[0] == ("bigcode/some-code", "train", True)
