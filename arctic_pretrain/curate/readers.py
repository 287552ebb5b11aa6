"""Raw inputs -> one datatrove Document per source file, with language, repository and path metadata.

Work is planned once (``PlanInputs`` walks folders, opens Parquet footers) into a list of units, and
task ``rank`` of ``ReadInputs`` takes the rank-th contiguous block of units, so every worker gets work
even from one big folder (datatrove's own readers split by input file only). Nothing here raises on bad
input: a skipped item is counted under its reason (a datatrove stat) and named in the log.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from arctic_pretrain.curate.config import ReadConfig
from arctic_pretrain.data.languages import language_of, normalize_language
from arctic_pretrain.text.steps import timed

PLAN = "plan.jsonl"
PLAN_SKIPS = "plan_skips.json"
PLAN_COUNT = "plan_units.txt"
_SNIFF = 8192


def decode(data: bytes, max_bytes: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for raw file bytes."""
    if len(data) > max_bytes:
        return None, "too_large"
    if not data.strip():
        return None, "empty"
    if b"\0" in data[:_SNIFF]:
        return None, "binary"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "invalid_utf8"


_COMMENT = {"python": "#", "r": "#", "julia": "#", "ruby": "#", "bash": "#", "sh": "#", "perl": "#"}


def notebook_to_script(text: str) -> str | None:
    """Jupyter JSON -> script: code cells as code, markdown cells as comments (as StarCoder did)."""
    try:
        nb = json.loads(text)
        cells = nb.get("cells") or [c for ws in nb.get("worksheets", []) for c in ws.get("cells", [])]
        meta = nb.get("metadata", {})
        lang = (meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name")
                or "python").lower()
    except (ValueError, AttributeError, TypeError):
        return None
    mark = _COMMENT.get(lang, "//")
    parts = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        src = cell.get("source", cell.get("input", ""))
        src = "".join(src) if isinstance(src, list) else str(src)
        if not src.strip():
            continue
        if cell.get("cell_type") == "code":
            parts.append(src.rstrip())
        elif cell.get("cell_type") in ("markdown", "raw", "heading"):
            parts.append("\n".join(f"{mark} {line}".rstrip() for line in src.rstrip().splitlines()))
    return "\n\n".join(parts) + "\n" if parts else None


def _repo_and_path(root: Path, rel: str, cfg: ReadConfig) -> tuple[str, str]:
    if cfg.repo_pattern:
        m = re.search(cfg.repo_pattern, rel)
        if m:
            repo = m.group(1)
            start = m.end(1)
            return repo, rel[start:].lstrip("/") or rel
    parts = rel.split("/")
    if cfg.repo_depth == 0 or len(parts) <= cfg.repo_depth:
        return root.name, rel
    return "/".join(parts[: cfg.repo_depth]), "/".join(parts[cfg.repo_depth:])


def _walk(root: Path, cfg: ReadConfig, skips: Counter) -> Iterator[dict]:
    """Files under ``root`` in a stable order; symlink loops are cut, counted and logged."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=cfg.follow_symlinks,
                                                onerror=lambda e: _skip(skips, "unreadable_dir", e.filename)):
        real = os.path.realpath(dirpath)
        if real in seen:
            _skip(skips, "symlink_loop", dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            repo, path = _repo_and_path(root, rel, cfg)
            yield {"kind": "file", "file": str(full), "repo": repo, "path": path}


def _skip(skips: Counter, reason: str, name: object) -> None:
    skips[reason] += 1
    logger.warning(f"skipped ({reason}): {name}")


def plan_inputs(inputs: list[str], cfg: ReadConfig, world_size: int) -> tuple[list[dict], Counter]:
    """Units of reading work and the items skipped while planning."""
    units: list[dict] = []
    skips: Counter = Counter()
    for spec in inputs:
        if spec.startswith("hf:"):
            units += [{"kind": "hf", "name": spec[3:], "shard": i, "shards": world_size} for i in range(world_size)]
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            units += list(_walk(path.resolve(), cfg, skips))
        elif path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
            units.append({"kind": "jsonl", "file": str(path)})
        elif path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq

                groups = pq.ParquetFile(path).num_row_groups
                units += [{"kind": "parquet", "file": str(path), "row_group": g} for g in range(groups)]
            except Exception as err:  # a truncated file has no footer
                _skip(skips, "corrupt_parquet", f"{path} ({err})")
        elif path.is_file():
            units.append({"kind": "file", "file": str(path), "repo": path.parent.name, "path": path.name})
        else:
            _skip(skips, "missing_input", spec)
    return units, skips


class PlanInputs(PipelineStep):
    """Write the unit list (one task); ReadInputs tasks share it."""

    type = "📖 - READER"
    name = "plan inputs"

    def __init__(self, inputs: list[str], cfg: ReadConfig, work_dir: str, read_tasks: int) -> None:
        super().__init__()
        self.inputs, self.cfg, self.work_dir, self.read_tasks = list(inputs), cfg, work_dir, read_tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time("plan"):
            units, skips = plan_inputs(self.inputs, self.cfg, self.read_tasks)
        work = Path(self.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / (PLAN + ".tmp")
        with open(tmp, "w") as fh:
            for unit in units:
                fh.write(json.dumps(unit) + "\n")
        os.replace(tmp, work / PLAN)
        (work / PLAN_SKIPS).write_text(json.dumps(dict(skips)))
        (work / PLAN_COUNT).write_text(str(len(units)))
        self.stat_update("units", value=len(units))
        for reason, n in skips.items():
            self.stat_update(f"skipped_{reason}", value=n)
        yield from ()


class ReadInputs(PipelineStep):
    """Turn this task's units into Documents (text, id, metadata: language, repo, path)."""

    type = "📖 - READER"
    name = "read"

    def __init__(self, cfg: ReadConfig, work_dir: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.work_dir = work_dir
        self.languages = set(cfg.languages)

    def _skip(self, reason: str, name: object) -> None:
        self.stat_update(f"skipped_{reason}")
        # unknown extensions are the bulk of any tree (build files, images): named at a quieter level
        (logger.info if reason == "unknown_language" else logger.warning)(f"skipped ({reason}): {name}")

    def _make(self, text: str | None, reason: str | None, *, path: str, repo: str, lang: str | None,
              name: str, source: str) -> Document | None:
        if lang is None:
            self._skip("unknown_language", name)
            return None
        if lang not in self.languages:
            self.stat_update(f"skipped_language_{lang}")  # not an error: only counted
            return None
        if text is None:
            self._skip(reason or "unreadable", name)
            return None
        if lang == "jupyter" and self.cfg.convert_notebooks and path.endswith(".ipynb"):
            text = notebook_to_script(text)
            if text is None:
                self._skip("bad_notebook", name)
                return None
        self.stat_update("out_docs")
        self.stat_update("out_bytes", value=len(text.encode("utf-8", "replace")), unit="doc")
        return Document(text=text, id=f"{repo}/{path}",
                        metadata={"language": lang, "repo": repo, "path": path, "source": source})

    def _read_file(self, unit: dict) -> Iterator[Document]:
        name = unit["file"]
        lang = language_of(unit["path"])
        if lang is None or lang not in self.languages:
            yield from filter(None, [self._make(None, None, path=unit["path"], repo=unit["repo"], lang=lang,
                                                name=name, source="folder")])
            return
        try:
            size = os.stat(name).st_size
            if size > self.cfg.max_file_bytes:
                self._skip("too_large", f"{name} ({size} bytes)")
                return
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as err:
            self._skip("unreadable", f"{name} ({err})")
            return
        self.stat_update("in_bytes", value=len(data), unit="doc")
        text, reason = decode(data, self.cfg.max_file_bytes)
        doc = self._make(text, reason, path=unit["path"], repo=unit["repo"], lang=lang, name=name, source="folder")
        if doc is not None:
            yield doc

    def _record(self, rec: object, where: str, source: str) -> Document | None:
        c = self.cfg
        if not isinstance(rec, dict) or not isinstance(rec.get(c.content_field), str | bytes):
            self._skip("missing_content", where)
            return None
        content = rec[c.content_field]
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
        self.stat_update("in_bytes", value=len(data), unit="doc")
        text, reason = decode(data, c.max_file_bytes)
        path = str(rec.get(c.path_field) or where)
        label = rec.get(c.language_field)
        lang = normalize_language(label) if isinstance(label, str) else None
        lang = lang or language_of(path)
        repo = str(rec.get(c.repo_field) or Path(where.split(":")[0]).stem)
        return self._make(text, reason, path=path, repo=repo, lang=lang, name=f"{where} ({path})", source=source)

    def _read_jsonl(self, unit: dict) -> Iterator[Document]:
        name = unit["file"]
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(name, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        self._skip("malformed_jsonl", f"{name}:{lineno}")
                        continue
                    doc = self._record(rec, f"{name}:{lineno}", "jsonl")
                    if doc is not None:
                        yield doc
        except (OSError, EOFError) as err:
            self._skip("unreadable", f"{name} ({err})")

    def _read_parquet(self, unit: dict) -> Iterator[Document]:
        import pyarrow.parquet as pq

        name, group = unit["file"], unit["row_group"]
        try:
            table = pq.ParquetFile(name).read_row_group(group)
        except Exception as err:  # corrupt pages raise several pyarrow error types
            self._skip("corrupt_parquet", f"{name} row group {group} ({err})")
            return
        for i, rec in enumerate(table.to_pylist()):
            doc = self._record(rec, f"{name}:{group}:{i}", "parquet")
            if doc is not None:
                yield doc

    def _read_hf(self, unit: dict) -> Iterator[Document]:
        from datasets import load_dataset

        try:
            ds = load_dataset(unit["name"], split=self.cfg.hf_split, streaming=True)
            for i, rec in enumerate(ds):
                if i % unit["shards"] == unit["shard"]:
                    doc = self._record(rec, f"hf:{unit['name']}:{i}", "hf")
                    if doc is not None:
                        yield doc
        except Exception as err:  # network, missing dataset: skip the input, do not kill the worker
            self._skip("hf_error", f"{unit['name']} ({err})")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        readers = {"file": self._read_file, "jsonl": self._read_jsonl, "parquet": self._read_parquet,
                   "hf": self._read_hf}
        # contiguous blocks: (rank, position) order is input order, so the dedup stages, which keep
        # the first copy in that order, keep the copy met first in the inputs (the original)
        count = int((Path(self.work_dir) / PLAN_COUNT).read_text())
        lo, hi = rank * count // world_size, (rank + 1) * count // world_size
        with open(Path(self.work_dir) / PLAN) as fh:
            for i, line in enumerate(fh):
                if i < lo:
                    continue
                if i >= hi:
                    break
                unit = json.loads(line)
                yield from timed(readers[unit["kind"]](unit), self)
