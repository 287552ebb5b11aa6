"""Raw inputs -> one datatrove Document per source file, with language, repository and path metadata.

Work is planned once (``PlanInputs`` walks folders, opens Parquet footers) into a list of units, and
task ``rank`` of ``ReadInputs`` takes the rank-th contiguous block of units, so every worker gets work
even from one big folder (datatrove's own readers split by input file only). Nothing here raises on bad
input: a skipped item is counted under its reason (a datatrove stat) and named in the log.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from arctic_pretrain.curate.config import ReadConfig
from arctic_pretrain.data.languages import PAPER_LANGUAGES, language_of, normalize_language
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


def safe_name(name: str) -> str:
    """A path as valid UTF-8: undecodable bytes (surrogate-escaped by os.walk) become ``\\xff`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


DATASET_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".parquet")


def is_dataset_file(name: str) -> bool:
    return name.endswith(DATASET_SUFFIXES)


def _walk(root: Path, cfg: ReadConfig, skips: Counter, exclude: set[str]) -> Iterator[dict]:
    """Files under ``root`` in a stable order; symlink loops are cut, counted and logged; folders in
    ``exclude`` (the run's own output folder) are not entered."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=cfg.follow_symlinks,
                                                onerror=lambda e: _skip(skips, "unreadable_dir", e.filename)):
        real = os.path.realpath(dirpath)
        if real in seen:
            _skip(skips, "symlink_loop", safe_name(dirpath))
            dirnames[:] = []
            continue
        seen.add(real)
        for d in list(dirnames):
            if os.path.realpath(os.path.join(dirpath, d)) in exclude:
                logger.info(f"not read: {safe_name(os.path.join(dirpath, d))} is this run's output folder")
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            safe = safe_name(rel)
            repo, path = _repo_and_path(root, safe, cfg)
            unit = {"kind": "file", "file": str(full), "repo": repo, "path": path}
            if safe != rel:
                unit["undecodable_name"] = True
            yield unit


def _skip(skips: Counter, reason: str, name: object) -> None:
    skips[reason] += 1
    logger.warning(f"skipped ({reason}): {name}")


def _dataset_units(path: Path, skips: Counter) -> list[dict]:
    """A JSONL file is one unit; a Parquet file one unit per row group (a file without a footer: skipped)."""
    if path.suffix != ".parquet":
        return [{"kind": "jsonl", "file": str(path)}]
    try:
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(path).num_row_groups
    except Exception as err:  # a truncated or empty file has no footer
        _skip(skips, "corrupt_parquet", f"{safe_name(str(path))} ({err})")
        return []
    return [{"kind": "parquet", "file": str(path), "row_group": g} for g in range(groups)]


def _plan_folder(root: Path, cfg: ReadConfig, skips: Counter, exclude: set[str]) -> list[dict]:
    """A source tree (one document per file), or a dataset: a folder holding JSONL/Parquet shards and no
    source file of the paper's languages (a README or a dataset_info.json may sit beside the shards)."""
    units = list(_walk(root, cfg, skips, exclude))
    shards = [u for u in units if is_dataset_file(u["file"])]
    if shards and not any(language_of(u["path"]) in PAPER_LANGUAGES for u in units):
        logger.info(f"{root}: a dataset folder ({len(shards)} JSONL/Parquet shards)")
        return [unit for u in shards for unit in _dataset_units(Path(u["file"]), skips)]
    return units


def plan_inputs(inputs: list[str], cfg: ReadConfig, world_size: int,
                exclude: list[str] = ()) -> tuple[list[dict], Counter]:
    """Units of reading work and the items skipped while planning (each counted once). An input is a
    folder, a file, a glob (``data/*.parquet``) or ``hf:<dataset>``."""
    units: list[dict] = []
    skips: Counter = Counter()
    excluded = {os.path.realpath(p) for p in exclude}
    for spec in inputs:
        if spec.startswith("hf:"):
            units += [{"kind": "hf", "name": spec[3:], "shard": i, "shards": world_size} for i in range(world_size)]
            continue
        expanded = os.path.expanduser(spec)
        paths = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        if not paths:
            _skip(skips, "missing_input", spec)
        for name in paths:
            path = Path(name)
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:
                _skip(skips, "missing_input", spec)
                continue
            except OSError as err:
                _skip(skips, "unreadable", f"{spec} ({err})")
                continue
            if stat.S_ISDIR(mode):
                units += _plan_folder(path.resolve(), cfg, skips, excluded)
            elif not stat.S_ISREG(mode):  # a FIFO would block the reader forever
                _skip(skips, "special_file", safe_name(name))
            elif is_dataset_file(path.name):
                units += _dataset_units(path, skips)
            else:
                safe = safe_name(path.name)
                unit = {"kind": "file", "file": str(path), "repo": safe_name(path.parent.name), "path": safe}
                units.append({**unit, "undecodable_name": True} if safe != path.name else unit)
    return units, skips


class PlanInputs(PipelineStep):
    """Write the unit list (one task); ReadInputs tasks share it."""

    type = "📖 - READER"
    name = "plan inputs"

    def __init__(self, inputs: list[str], cfg: ReadConfig, work_dir: str, read_tasks: int,
                 exclude: list[str] = ()) -> None:
        super().__init__()
        self.inputs, self.cfg, self.work_dir, self.read_tasks = list(inputs), cfg, work_dir, read_tasks
        self.exclude = list(exclude)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time("plan"):
            units, skips = plan_inputs(self.inputs, self.cfg, self.read_tasks, self.exclude)
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
        (logger.info if reason == "unknown_language" else logger.warning)(f"skipped ({reason}): {safe_name(str(name))}")

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
        repo, path = safe_name(repo), safe_name(path)  # a record's lone surrogate would stop the JSONL writer
        return Document(text=text, id=f"{repo}/{path}",
                        metadata={"language": lang, "repo": repo, "path": path, "source": source})

    def _read_file(self, unit: dict) -> Iterator[Document]:
        name = unit["file"]
        lang = language_of(unit["path"])
        if lang is None or lang not in self.languages:
            yield from filter(None, [self._make(None, None, path=unit["path"], repo=unit["repo"], lang=lang,
                                                name=name, source="folder")])
            return
        if unit.get("undecodable_name"):
            self.stat_update("undecodable_name")  # carried with \\x escapes in its path, counted
        try:
            st = os.stat(name)
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device found in a folder: opening it could block
                self._skip("special_file", safe_name(name))
                return
            size = st.st_size
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
        """This task's part of a streamed datasets dataset (a hub name, or a local folder or script): whole
        files per task where the shard count allows (datasets' split_dataset_by_node), else every
        world_size-th record. A failure mid-stream (network) is retried from the last record read, with
        back-off; after ``read.hf_retries`` the task fails (a re-run resumes it) rather than skip the input."""
        from datasets import load_dataset
        from datasets.distributed import split_dataset_by_node

        c, name = self.cfg, unit["name"]
        done = 0
        for attempt in range(c.hf_retries + 1):
            try:
                ds = load_dataset(name, c.hf_config, data_dir=c.hf_data_dir, split=c.hf_split, streaming=True)
                ds = split_dataset_by_node(ds, rank=unit["shard"], world_size=unit["shards"])
                for i, rec in enumerate(ds.skip(done) if done else ds, start=done):
                    doc = self._record(rec, f"hf:{name}:{unit['shard']}:{i}", "hf")
                    done = i + 1
                    if doc is not None:
                        yield doc
                return
            except Exception as err:
                if attempt == c.hf_retries:
                    raise RuntimeError(f"input hf:{name} (shard {unit['shard']}): {err!r}; "
                                       f"gave up after {attempt + 1} tries") from err
                self.stat_update("hf_retries")
                logger.warning(f"hf:{name}: {err!r} after {done} records; retry {attempt + 1}/{c.hf_retries}")
                time.sleep(min(60.0, c.hf_retry_wait_s * 2**attempt))

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
