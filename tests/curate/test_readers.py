"""Reading: languages from names, notebooks to scripts, and every kind of bad input counted, not fatal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
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


def _shards(folder: Path, normal_python: str, files: int = 4, rows: int = 3) -> list[str]:
    """A local dataset: ``files`` Parquet shards of ``rows`` records (The Stack's field names)."""
    folder.mkdir(parents=True)
    paths = []
    for f in range(files):
        recs = [{"content": normal_python + f"\n# {f}-{r}\n", "path": f"f{f}/m{r}.py", "repo": "hub/repo",
                 "language": "Python"} for r in range(rows)]
        paths += [rec["path"] for rec in recs]
        pq.write_table(pa.Table.from_pylist(recs), folder / f"train-{f:05d}.parquet")
    return paths


def test_hf_input_each_task_reads_its_own_files(tmp_path: Path, normal_python: str) -> None:
    """`hf:<local dataset folder>` goes through load_dataset like a hub name: 4 files, 2 tasks, each task
    streams whole files of its own (the old reader streamed everything in every task, keeping every 2nd)."""
    paths = _shards(tmp_path / "ds", normal_python)
    cfg = ReadConfig()
    list(PlanInputs([f"hf:{tmp_path / 'ds'}"], cfg, str(tmp_path / "w"), 2).run())
    per_rank = [[d.metadata["path"] for d in ReadInputs(cfg, str(tmp_path / "w")).run(None, r, 2)] for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(paths)  # each record once
    files = [{p.split("/")[0] for p in ranks} for ranks in per_rank]
    assert len(files[0]) == len(files[1]) == 2 and not files[0] & files[1]


def test_hf_config_data_dir_and_retries(tmp_path: Path, monkeypatch, normal_python: str) -> None:
    """data_dir picks a sub-folder; a stream that breaks mid-way (a dropped connection) resumes where it
    stopped, each record once; one that keeps failing fails the task, naming the input."""
    import datasets

    _shards(tmp_path / "ds" / "python", normal_python, files=2)
    _shards(tmp_path / "ds" / "other", normal_python.replace("import", "from x import"), files=1)
    real, calls = datasets.load_dataset, []

    class Flaky:
        """The real streamed dataset, whose first stream drops after 2 records."""

        def __init__(self, ds, fail: bool) -> None:
            self.ds, self.fail = ds, fail

        def __iter__(self):
            for i, rec in enumerate(self.ds):
                if self.fail and i == 2:
                    raise ConnectionError("connection reset by peer")
                yield rec

        def skip(self, n):
            return Flaky(self.ds.skip(n), False)

    def load(*args, **kwargs):
        calls.append((args, kwargs))
        return Flaky(real(*args, **kwargs), fail=len(calls) == 1)

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr("datasets.distributed.split_dataset_by_node", lambda ds, rank, world_size: ds)
    cfg = ReadConfig(hf_data_dir="python", hf_retry_wait_s=0.0)
    docs, stats = _read([f"hf:{tmp_path / 'ds'}"], tmp_path / "w", cfg)
    assert sorted(d.metadata["path"] for d in docs) == sorted(f"f{f}/m{r}.py" for f in range(2) for r in range(3))
    assert all("from x import" not in d.text for d in docs) and stats["hf_retries"] == 1
    assert calls[0] == ((str(tmp_path / "ds"), None), {"data_dir": "python", "split": "train", "streaming": True})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(RuntimeError, match="hf:.*gave up after 4 tries"):
        _read(["hf:org/unreachable"], tmp_path / "w2", ReadConfig(hf_retry_wait_s=0.0))


def test_hostile_inputs(tmp_path: Path, normal_python: str) -> None:
    """A non-UTF-8 file name is carried (escaped) and counted; a FIFO, in a folder or given, is skipped and
    counted, not opened (it would block); a glob and a folder of shards read as datasets."""
    repo = tmp_path / "in" / "repo"
    repo.mkdir(parents=True)
    (repo / "good.py").write_text(normal_python)
    bad = os.fsencode(repo) + b"/bad\xffname.py"
    with open(bad, "wb") as fh:
        fh.write(normal_python.encode())
    os.mkfifo(repo / "pipe.py")
    os.mkfifo(tmp_path / "given.jsonl")
    paths = _shards(tmp_path / "shards", normal_python, files=2, rows=2)
    (tmp_path / "shards" / "README.md").write_text("# a dataset card\n")
    (tmp_path / "more").mkdir()
    pq.write_table(pa.Table.from_pylist([{"content": normal_python, "path": "g/x.py", "repo": "gr"}]),
                   tmp_path / "more" / "part-0.parquet")
    inputs = [str(tmp_path / "in"), str(tmp_path / "given.jsonl"), str(tmp_path / "shards"),
              str(tmp_path / "more" / "*.parquet")]
    docs, stats = _read(inputs, tmp_path / "work", world=2)
    ids = {d.id for d in docs}
    assert ids == {"repo/good.py", "repo/bad\\xffname.py", *(f"hub/repo/{p}" for p in paths), "gr/g/x.py"}
    assert stats["undecodable_name"] == 1 and stats["skipped_special_file"] == 1
    assert stats["plan_special_file"] == 1  # the FIFO given as an input
    from datatrove.pipeline.writers.jsonl import JsonlWriter  # it stopped the run on the raw name

    with JsonlWriter(str(tmp_path / "written"), compression=None) as writer:
        for d in docs:
            writer.write(d)
    assert "bad\\\\xffname.py" in (tmp_path / "written" / "00000.jsonl").read_text()


def test_stack_v1_and_starcoderdata_field_names(tmp_path: Path, normal_python: str) -> None:
    """Inline datasets name repository and path `max_stars_repo_name` / `max_stars_repo_path` (The Stack v1,
    starcoderdata) or `repo_name` (The Stack v2 style): read without any key, not as the file's stem."""
    recs = [{"content": normal_python, "max_stars_repo_path": "src/a.py", "max_stars_repo_name": "org/v1"},
            {"content": normal_python + "\n# 2\n", "path": "b.py", "repo_name": "org/v3"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    docs, _ = _read([str(tmp_path / "train.jsonl")], tmp_path / "w")
    assert [d.id for d in docs] == ["org/v1/src/a.py", "org/v3/b.py"]
