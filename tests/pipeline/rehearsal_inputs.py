"""The rehearsal's inputs, small, in the layouts of the paper's data (conf/pipeline/rehearsal/snowcoder_1b3.yaml):

* The Stack v2: Parquet rows of blob ids and metadata in <workdir>/raw, the contents gzip-compressed in an S3
  bucket named like Software Heritage's (content/<blob_id>); every one of the paper's 18 languages, Python and
  C from this machine's own code, the others generated; one blob missing and one not gzip, planted.
* hqcode: JSONL with `content` in <workdir>/hqcode (the paper's set is not published; users bring theirs).
* Magicoder-OSS-Instruct-75K and self-oss-instruct-sc2-exec-filter-50k: JSONL with those datasets' fields.
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.s3 import blob_id, put_blob
from tests.synthesize.openai_server import python_file

STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])
WORDS = ("parse", "merge", "count", "index", "value", "total", "buffer", "cache", "queue", "limit", "width",
         "offset", "score", "token", "node", "edge", "route", "batch", "frame", "label", "window", "retry")
OPS = ("+", "-", "*")
# language -> (The Stack v2's `language` label, extension, file head, one function, file tail); {c} etc. are names
TEMPLATES = {
    "java": ("Java", ".java", "package rehearsal;\n\npublic class {cls} {{\n",
             "    /** {doc} */\n    public static int {fn}(int {a}, int {b}) {{\n        int {c} = {a} {op} {k};\n"
             "        return {c} {op2} {b};\n    }}\n\n", "}}\n"),
    "cpp": ("C++", ".cpp", "#include <vector>\n\nnamespace rehearsal {{\n",
            "// {doc}\nint {fn}(int {a}, int {b}) {{\n    int {c} = {a} {op} {k};\n    return {c} {op2} {b};\n}}\n\n",
            "}}  // namespace rehearsal\n"),
    "javascript": ("JavaScript", ".js", "'use strict';\n\n",
                   "// {doc}\nfunction {fn}({a}, {b}) {{\n  const {c} = {a} {op} {k};\n  return {c} {op2} {b};\n}}\n\n",
                   "module.exports = {{ {cls} }};\n"),
    "php": ("PHP", ".php", "<?php\n\nnamespace Rehearsal;\n\n",
            "// {doc}\nfunction {fn}(${a}, ${b})\n{{\n    ${c} = ${a} {op} {k};\n    return ${c} {op2} ${b};\n}}\n\n", ""),
    "csharp": ("C#", ".cs", "namespace Rehearsal\n{{\n    public static class {cls}\n    {{\n",
               "        // {doc}\n        public static int {fn}(int {a}, int {b})\n        {{\n"
               "            var {c} = {a} {op} {k};\n            return {c} {op2} {b};\n        }}\n\n", "    }}\n}}\n"),
    "go": ("Go", ".go", "package rehearsal\n\n",
           "// {fn} will {doc}\nfunc {fn}({a} int, {b} int) int {{\n\t{c} := {a} {op} {k}\n\treturn {c} {op2} {b}\n}}\n\n", ""),
    "typescript": ("TypeScript", ".ts", "",
                   "// {doc}\nexport function {fn}({a}: number, {b}: number): number {{\n  const {c} = {a} {op} {k};\n"
                   "  return {c} {op2} {b};\n}}\n\n", ""),
    "sql": ("SQL", ".sql", "",
            "-- {doc}\nSELECT {a}, {b}, {a} {op} {k} AS {c}\nFROM {fn}\nWHERE {b} > {k}\nORDER BY {c};\n\n", ""),
    "ruby": ("Ruby", ".rb", "module Rehearsal\n",
             "  # {doc}\n  def self.{fn}({a}, {b})\n    {c} = {a} {op} {k}\n    {c} {op2} {b}\n  end\n\n", "end\n"),
    "rust": ("Rust", ".rs", "",
             "/// {doc}\npub fn {fn}({a}: i64, {b}: i64) -> i64 {{\n    let {c} = {a} {op} {k};\n    {c} {op2} {b}\n}}\n\n", ""),
    "scala": ("Scala", ".scala", "object {cls} {{\n",
              "  // {doc}\n  def {fn}({a}: Int, {b}: Int): Int = {{\n    val {c} = {a} {op} {k}\n    {c} {op2} {b}\n  }}\n\n",
              "}}\n"),
    "kotlin": ("Kotlin", ".kt", "package rehearsal\n\n",
               "// {doc}\nfun {fn}({a}: Int, {b}: Int): Int {{\n    val {c} = {a} {op} {k}\n    return {c} {op2} {b}\n}}\n\n", ""),
    "shell": ("Shell", ".sh", "#!/bin/sh\nset -eu\n\n",
              "# {doc}\n{fn}() {{\n  {c}=$(( $1 {op} {k} ))\n  echo $(( {c} {op2} $2 ))\n}}\n\n", ""),
    "dart": ("Dart", ".dart", "",
             "// {doc}\nint {fn}(int {a}, int {b}) {{\n  final {c} = {a} {op} {k};\n  return {c} {op2} {b};\n}}\n\n", ""),
    "swift": ("Swift", ".swift", "import Foundation\n\n",
              "// {doc}\nfunc {fn}(_ {a}: Int, _ {b}: Int) -> Int {{\n    let {c} = {a} {op} {k}\n    return {c} {op2} {b}\n}}\n\n",
              ""),
}


def _name(rng: random.Random) -> str:
    return f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{rng.randint(10, 9999)}"


def generated_file(language: str, seed: str, functions: int = 12) -> str:
    """A small source file in ``language``, different per seed (no two are near duplicates)."""
    _, _, head, body, tail = TEMPLATES[language]
    rng = random.Random(f"{language}:{seed}")
    cls = "".join(w.title() for w in rng.sample(WORDS, 2)) + str(rng.randint(10, 99))
    parts = [head.format(cls=cls)]
    for _ in range(functions):
        parts.append(body.format(fn=_name(rng), a=_name(rng), b=_name(rng), c=_name(rng), op=rng.choice(OPS),
                                 op2=rng.choice(OPS), k=rng.randint(2, 999), cls=cls,
                                 doc=f"{' '.join(rng.sample(WORDS, 5))} for the {rng.choice(WORDS)} stage"))
    return "".join(parts) + tail.format(cls=cls)


def notebook(seed: str, cells: int = 6) -> str:
    """A Jupyter notebook (nbformat 4) of markdown and Python code cells."""
    rng = random.Random(f"jupyter:{seed}")
    out = []
    for i in range(cells):
        out.append({"cell_type": "markdown", "metadata": {}, "source": [f"## Step {i}: {' '.join(rng.sample(WORDS, 4))}"]})
        out.append({"cell_type": "code", "metadata": {}, "execution_count": i + 1, "outputs": [],
                    "source": python_file(f"{seed}:{i}", lines=6).splitlines(keepends=True)})
    return json.dumps({"cells": out, "metadata": {"kernelspec": {"name": "python3", "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5}, indent=1)


def _stdlib(folders: tuple[str, ...], suffix: str, limit: int, root: Path = STDLIB) -> list[Path]:
    files = [p for d in folders for p in sorted((root / d).glob(f"*{suffix}")) if 1_500 < p.stat().st_size < 12_000]
    return files[:limit]


def code_files(per_language: int = 4) -> list[tuple[str, str, str, str]]:
    """(repo_name, path, Stack v2 language label, text) for the paper's 18 languages."""
    files = []
    for p in _stdlib(("json", "email", "logging", "http", "urllib"), ".py", 16):
        files.append((f"python-org/{p.parent.name}", p.name, "Python", p.read_text(encoding="utf-8")))
    for p in _stdlib(("",), ".h", 6, INCLUDE):
        files.append(("python-org/cpython-include", p.name, "C", p.read_text(encoding="utf-8", errors="replace")))
    for language, (label, ext, *_) in TEMPLATES.items():
        for i in range(per_language):
            files.append((f"rehearsal/{language}-{i // 2}", f"src/module_{i}{ext}", label, generated_file(language, str(i))))
    for i in range(per_language):
        files.append((f"rehearsal/notebooks-{i // 2}", f"analysis_{i}.ipynb", "Jupyter Notebook", notebook(str(i))))
    return files


def write_stack_v2(s3, raw: Path) -> dict:
    """The corpus as The Stack v2 holds it: rows of blob ids + metadata in ``raw``/*.parquet, contents in
    s3://softwareheritage/content/<blob_id> (gzip). Planted: one row whose blob is missing, one whose blob
    is not gzip. Returns the counts a curation of it must report."""
    s3.create_bucket(Bucket="softwareheritage")
    rows = []
    files = code_files()
    for repo, path, language, text in files:
        data = text.encode()
        rows.append(_row(repo, path, language, put_blob(s3, data), len(data)))
    missing = b"# a file Software Heritage does not have\n"
    rows.append(_row("rehearsal/gone", "gone.py", "Python", blob_id(missing), len(missing)))
    corrupt = b"print('stored without compression')\n"
    rows.append(_row("rehearsal/plain", "plain.py", "Python", put_blob(s3, corrupt, gzipped=False), len(corrupt)))
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rng.shuffle(rows)  # languages mixed across shards, as in the dataset's per-language files they are not
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), raw / f"train-{i:05d}-of-00002.parquet", row_group_size=16)
    return {"files": len(files), "missing_blob": 1, "corrupt_gzip": 1}


def _row(repo: str, path: str, language: str, blob: str, size: int) -> dict:
    return {"blob_id": blob, "directory_id": blob_id(f"{repo}/{Path(path).parent}".encode()), "path": path,
            "content_id": blob, "detected_licenses": ["mit"], "license_type": "permissive", "repo_name": repo,
            "snapshot_id": blob_id(repo.encode()), "revision_id": blob_id(f"{repo}@main".encode()),
            "branch_name": "refs/heads/main", "star_events_count": 3, "fork_events_count": 1, "gha_language": language,
            "src_encoding": "UTF-8", "language": language, "is_vendor": False, "is_generated": False,
            "length_bytes": size, "extension": Path(path).suffix.lstrip(".")}


def write_positives(workdir: Path, per_source: int = 8) -> dict[str, Path]:
    """hqcode (JSONL, `content`) and the two instruction sets in their datasets' fields, under ``workdir``."""
    hqcode = workdir / "hqcode" / "hqcode.jsonl"
    magicoder = workdir / "positives" / "magicoder-oss-instruct-75k.jsonl"
    sc2 = workdir / "positives" / "self-oss-instruct-sc2-exec-filter-50k.jsonl"
    for path in (hqcode, magicoder, sc2):
        path.parent.mkdir(parents=True, exist_ok=True)
    code = _stdlib(("importlib", "concurrent/futures", "xml/dom", "wsgiref", "unittest"), ".py", per_source)
    _jsonl(hqcode, [{"content": p.read_text(encoding="utf-8"), "path": f"{p.parent.name}/{p.name}"} for p in code])
    rows = []
    for i in range(per_source):
        solution = python_file(f"magicoder:{i}", lines=10)
        rows.append({"lang": "python", "raw_index": 1000 + i, "index": i, "seed": solution.splitlines()[0],
                     "openai_fingerprint": "fp_rehearsal",
                     "problem": f"You are given a function stub. Implement it so that it combines its inputs "
                                f"step by step ({i}).", "solution": f"```python\n{solution}```"})
    _jsonl(magicoder, rows)
    rows = []
    for i in range(per_source):
        response = python_file(f"sc2:{i}", lines=10)
        rows.append({"fingerprint": None, "sha1": blob_id(response.encode()), "seed": response.splitlines()[0],
                     "concepts": ["arithmetic", "naming"], "prompt": "", "id": i,
                     "instruction": f"Write a Python function that folds three numbers into one value ({i}).",
                     "response": f"Here is the function:\n\n```python\n{response}```\n"})
    _jsonl(sc2, rows)
    return {"hqcode": hqcode, "magicoder_oss_instruct": magicoder, "starcoder2_instruct": sc2}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
