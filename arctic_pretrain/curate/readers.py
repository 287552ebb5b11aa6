"""Raw inputs -> one datatrove Document per source file, with language, repository and path metadata.

Work is planned once (``PlanInputs`` walks folders, opens Parquet footers) into a list of units, and
task ``rank`` of ``ReadInputs`` takes the rank-th contiguous block of units, so every worker gets work
even from one big folder (datatrove's own readers split by input file only). A bad item is skipped,
counted under its reason (a datatrove stat) and named in the log; only a dataset that cannot yield any
document (no content field and nothing to fetch, a store that answers nothing) stops the run, at once.

Dataset records come in three layouts, recognised from their fields (``content_format``): the text
inline (The Stack v1, starcoderdata, The Stack v3), a blob id whose content is fetched from S3 (The Stack
v2, ``fetch.py``), or one row per repository with its files in a list (``the-stack-v2-train-*-ids``).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from arctic_pretrain.curate.config import ReadConfig
from arctic_pretrain.curate.fetch import BlobFetcher, Fetched, ReadAbort, ordered_map
from arctic_pretrain.data.languages import PAPER_LANGUAGES, language_of, normalize_language
from arctic_pretrain.text.steps import timed

PLAN = "plan.jsonl"
PLAN_SKIPS = "plan_skips.json"
PLAN_COUNT = "plan_units.txt"
_SNIFF = 8192


def decode(data: bytes, max_bytes: int, encoding: str | None = None) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for raw file bytes; ``encoding``: the record's own (The Stack v2's
    src_encoding, e.g. ISO-8859-1), else UTF-8."""
    if len(data) > max_bytes:
        return None, "too_large"
    if not data.strip():
        return None, "empty"
    if encoding is not None:
        try:
            utf8 = codecs.lookup(encoding).name == "utf-8"
        except LookupError:
            return None, "decode_error"
        if not utf8:  # e.g. UTF-16: NUL bytes are text, so the binary check looks at the decoded text
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                return None, "decode_error"
            return (None, "binary") if "\0" in text[:_SNIFF] else (text, None)
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


def is_remote(spec: str) -> bool:
    """An fsspec URL (s3://, gs://, hf://, ...) rather than a local path."""
    return "://" in spec and not spec.startswith("file://")


def open_input(name: str):
    """A binary file object for a local path or any fsspec URL (s3:// needs s3fs)."""
    if is_remote(name):
        import fsspec

        return fsspec.open(name, "rb").open()
    return open(name, "rb")


def input_exists(spec: str) -> bool:
    """Whether an input (a path, a glob, an fsspec URL of either) names anything; an fsspec protocol
    whose package is missing (s3fs for s3://) raises, naming it."""
    if not is_remote(spec):
        path = os.path.expanduser(spec)
        return bool(glob.glob(path, recursive=True)) if glob.has_magic(path) else os.path.exists(path)
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(spec)
    except ImportError as err:
        raise ReadAbort(f"inputs: {spec}: {err}") from None
    return bool(fs.glob(path)) if glob.has_magic(path) else fs.exists(path)


def content_format(fields: Collection[str], cfg: ReadConfig, where: str,
                   inner: Collection[str] | None = None) -> str:
    """How a dataset's records carry their text, from its field names (a Parquet schema, the first JSONL or
    hf record): ``inline``, ``blob`` (a blob id to fetch) or ``repo_files`` (one row per repository, its
    files in ``read.fetch.files_field``, whose fields are ``inner``). Anything else raises naming the
    field and the fix: reading hundreds of millions of records to skip each one would take hours."""
    f = cfg.fetch
    if cfg.content_field in fields:
        return "inline"
    if f.files_field in fields and f.blob_field not in fields and inner is not None:
        content_format(inner, cfg, f"{where} (field {f.files_field})")
        return "repo_files"
    if f.blob_field not in fields:
        shown = ", ".join(sorted(fields)[:30]) or "none"
        raise ReadAbort(f"{where}: records have no `{cfg.content_field}` field (they have: {shown}); set "
                        f"read.content_field=<the field that holds each file's text>, or, for a dataset of "
                        f"blob ids whose contents live in a bucket (The Stack v2), "
                        f"read.fetch.blob_field=<the id field> (now {f.blob_field!r})")
    if not f.enabled:
        raise ReadAbort(f"{where}: records hold `{f.blob_field}` and no `{cfg.content_field}`: their contents "
                        f"are fetched from S3 only with read.fetch.enabled=true (now false)")
    return "blob"


def _record_format(rec: object, cfg: ReadConfig, where: str) -> str:
    if not isinstance(rec, dict):
        raise ReadAbort(f"{where}: a record is {type(rec).__name__}, not an object with fields")
    files = rec.get(cfg.fetch.files_field)
    inner = files[0].keys() if isinstance(files, list) and files and isinstance(files[0], dict) else None
    return content_format(rec.keys(), cfg, where, inner)


def _parquet_format(schema, cfg: ReadConfig, where: str) -> str:
    import pyarrow as pa

    inner = None
    if cfg.fetch.files_field in schema.names:
        kind = schema.field(cfg.fetch.files_field).type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        inner = [kind.field(i).name for i in range(kind.num_fields)] if pa.types.is_struct(kind) else None
    return content_format(schema.names, cfg, where, inner)


def _first_jsonl_record(name: str) -> object:
    """The first record of a JSONL file (None: empty or malformed; the reader counts those)."""
    with open_input(name) as raw:
        fh = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


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


def _dataset_units(path: Path | str, skips: Counter, cfg: ReadConfig) -> list[dict]:
    """A JSONL file is one unit; a Parquet file one unit per row group (a file without a footer: skipped).
    The records' layout is checked here, from the schema or the first record: a dataset that has no text
    and nothing to fetch stops the plan stage, before any read task starts."""
    name = str(path)
    if not is_remote(name):
        try:
            regular = stat.S_ISREG(os.stat(name).st_mode)
        except OSError as err:  # a dangling symlink among the shards
            _skip(skips, "unreadable", f"{safe_name(name)} ({err})")
            return []
        if not regular:  # a FIFO would block the plan
            _skip(skips, "special_file", safe_name(name))
            return []
    if not name.endswith(".parquet"):
        try:
            rec = _first_jsonl_record(name)
        except (OSError, EOFError) as err:
            _skip(skips, "unreadable", f"{safe_name(name)} ({err})")
            return []
        if rec is not None:
            _record_format(rec, cfg, safe_name(name))
        return [{"kind": "jsonl", "file": name}]
    try:
        import pyarrow.parquet as pq

        with open_input(name) as fh:
            meta = pq.ParquetFile(fh)
            groups, schema = meta.num_row_groups, meta.schema_arrow
    except Exception as err:  # a truncated or empty file has no footer
        _skip(skips, "corrupt_parquet", f"{safe_name(name)} ({err})")
        return []
    _parquet_format(schema, cfg, safe_name(name))
    return [{"kind": "parquet", "file": name, "row_group": g} for g in range(groups)]


def _plan_remote(spec: str, cfg: ReadConfig, skips: Counter) -> list[dict]:
    """An fsspec URL (a file, a glob or a folder): its JSONL/Parquet files, as datasets; source trees are
    read from local or mounted folders only (a remote file of any other kind is counted, not read)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec)
    paths = sorted(fs.glob(root)) if glob.has_magic(root) else [root]
    if not paths or not fs.exists(paths[0]):
        _skip(skips, "missing_input", spec)
        return []
    units = []
    for path in paths:
        files = sorted(fs.find(path)) if fs.isdir(path) else [path]
        for f in files:
            url = fs.unstrip_protocol(f)
            if is_dataset_file(f):
                units += _dataset_units(url, skips, cfg)
            else:
                _skip(skips, "remote_not_dataset", url)
    return units


def _plan_folder(root: Path, cfg: ReadConfig, skips: Counter, exclude: set[str]) -> list[dict]:
    """A source tree (one document per file), or a dataset: a folder holding JSONL/Parquet shards and no
    source file of the paper's languages (a README or a dataset_info.json may sit beside the shards)."""
    units = list(_walk(root, cfg, skips, exclude))
    shards = [u for u in units if is_dataset_file(u["file"])]
    if shards and not any(language_of(u["path"]) in PAPER_LANGUAGES for u in units):
        logger.info(f"{root}: a dataset folder ({len(shards)} JSONL/Parquet shards)")
        return [unit for u in shards for unit in _dataset_units(u["file"], skips, cfg)]
    return units


def plan_inputs(inputs: list[str], cfg: ReadConfig, world_size: int,
                exclude: list[str] = ()) -> tuple[list[dict], Counter]:
    """Units of reading work and the items skipped while planning (each counted once). An input is a
    folder, a file, a glob (``data/*.parquet``), an fsspec URL of any of these (``s3://bucket/data/``:
    datasets only) or ``hf:<dataset>``."""
    units: list[dict] = []
    skips: Counter = Counter()
    excluded = {os.path.realpath(p) for p in exclude}
    for spec in inputs:
        if spec.startswith("hf:"):
            units += [{"kind": "hf", "name": spec[3:], "shard": i, "shards": world_size} for i in range(world_size)]
            continue
        if is_remote(spec):
            units += _plan_remote(spec, cfg, skips)
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
                units += _dataset_units(path, skips, cfg)
            else:
                safe = safe_name(path.name)
                unit = {"kind": "file", "file": str(path), "repo": safe_name(path.parent.name), "path": safe}
                units.append({**unit, "undecodable_name": True} if safe != path.name else unit)
    return units, skips


_REPO_FIELDS = ("repo_name", "max_stars_repo_name")  # The Stack v2; The Stack v1 and starcoderdata
_PATH_FIELDS = ("max_stars_repo_path",)  # The Stack v1 and starcoderdata


def _first(rec: dict, *keys: str) -> object:
    return next((rec[k] for k in keys if rec.get(k)), None)


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
        self.fetcher = BlobFetcher(cfg.fetch, cfg.max_file_bytes)

    def _skip(self, reason: str, name: object) -> None:
        self.stat_update(f"skipped_{reason}")
        # unknown extensions are the bulk of any tree (build files, images): named at a quieter level
        (logger.info if reason == "unknown_language" else logger.warning)(f"skipped ({reason}): {safe_name(str(name))}")

    def _wanted(self, lang: str | None, name: str) -> bool:
        if lang is None:
            self._skip("unknown_language", name)
            return False
        if lang not in self.languages:
            self.stat_update(f"skipped_language_{lang}")  # not an error: only counted
            return False
        return True

    def _make(self, text: str | None, reason: str | None, *, path: str, repo: str, lang: str | None,
              name: str, source: str) -> Document | None:
        if not self._wanted(lang, name):
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

    def _meta(self, rec: dict, where: str) -> tuple[str, str, str | None, str]:
        """(path, repo, language, name for the log) of a record; The Stack v1/v2 and starcoderdata name
        the repository and path fields differently, so their names are tried after the configured ones."""
        c = self.cfg
        path = str(_first(rec, c.path_field, *_PATH_FIELDS) or where)
        label = rec.get(c.language_field)
        lang = normalize_language(label) if isinstance(label, str) else None
        lang = lang or language_of(path)
        repo = str(_first(rec, c.repo_field, *_REPO_FIELDS) or Path(where.split(":")[0]).stem)
        return path, repo, lang, f"{where} ({path})"

    def _prepare(self, rec: object, where: str, source: str) -> tuple[str | None, object]:
        """(blob id to fetch, its record's metadata), or (None, the finished Document or None)."""
        c, f = self.cfg, self.cfg.fetch
        content = rec.get(c.content_field) if isinstance(rec, dict) else None
        if isinstance(content, str | bytes):
            data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
            self.stat_update("in_bytes", value=len(data), unit="doc")
            path, repo, lang, name = self._meta(rec, where)
            text, reason = decode(data, c.max_file_bytes)
            return None, self._make(text, reason, path=path, repo=repo, lang=lang, name=name, source=source)
        blob = rec.get(f.blob_field) if isinstance(rec, dict) and f.enabled else None
        if not isinstance(blob, str) or not blob:
            self._skip("missing_content", where)
            return None, None
        path, repo, lang, name = self._meta(rec, where)
        if not self._wanted(lang, name):  # before the request: The Stack v2 holds ~600 languages
            return None, None
        size = rec.get(f.size_field)
        if isinstance(size, int) and size > c.max_file_bytes:
            self._skip("too_large", f"{name} ({size} bytes)")
            return None, None
        encoding = rec.get(f.encoding_field)
        return blob, (path, repo, lang, name, encoding if isinstance(encoding, str) else None, source)

    def _fetched(self, got: Fetched, meta: tuple) -> Document | None:
        path, repo, lang, name, encoding, source = meta
        self.fetcher.record(got)  # raises when the task's first fetches all failed
        if got.data is None:
            self._skip(got.reason, f"{name} ({got.detail})")
            return None
        self.stat_update("fetched")
        self.stat_update("in_bytes", value=len(got.data), unit="doc")
        text, reason = decode(got.data, self.cfg.max_file_bytes, encoding)
        return self._make(text, reason, path=path, repo=repo, lang=lang, name=name, source=source)

    def _records(self, rows: Iterable[tuple[object, str]], source: str) -> Iterator[tuple[Document | None, int, bool]]:
        """(document or None, row index, last record of its row) for every record of ``rows`` in order;
        a per-repository row (`-ids`) is one record per file; blob contents are fetched on
        ``read.fetch.threads`` threads, at most 4 x threads records ahead, results kept in order."""
        f = self.cfg.fetch

        def jobs() -> Iterator[tuple[str | None, tuple]]:
            for i, (row, where) in enumerate(rows):
                files = row.get(f.files_field) if isinstance(row, dict) and self.cfg.content_field not in row \
                    and f.blob_field not in row else None
                if isinstance(files, list):
                    base = {k: v for k, v in row.items() if k != f.files_field}
                    for j, rec in enumerate(files):
                        rec = {**base, **rec} if isinstance(rec, dict) else rec
                        blob, payload = self._prepare(rec, f"{where}:{j}", source)
                        yield blob, (payload, i, j == len(files) - 1)
                else:
                    blob, payload = self._prepare(row, where, source)
                    yield blob, (payload, i, True)

        for got, (payload, i, last) in ordered_map(self.fetcher.fetch, jobs(), f.threads, 4 * f.threads):
            yield (self._fetched(got, payload) if got is not None else payload), i, last

    def _jsonl_rows(self, name: str) -> Iterator[tuple[object, str]]:
        try:
            with open_input(name) as raw:
                fh = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        self._skip("malformed_jsonl", f"{name}:{lineno}")
                        continue
                    yield rec, f"{name}:{lineno}"
        except (OSError, EOFError) as err:
            self._skip("unreadable", f"{name} ({err})")

    def _read_jsonl(self, unit: dict) -> Iterator[Document]:
        yield from (doc for doc, _, _ in self._records(self._jsonl_rows(unit["file"]), "jsonl") if doc)

    def _read_parquet(self, unit: dict) -> Iterator[Document]:
        import pyarrow.parquet as pq

        name, group = unit["file"], unit["row_group"]
        try:
            with open_input(name) as fh:
                table = pq.ParquetFile(fh).read_row_group(group)
        except Exception as err:  # corrupt pages raise several pyarrow error types
            self._skip("corrupt_parquet", f"{name} row group {group} ({err})")
            return
        rows = ((rec, f"{name}:{group}:{i}") for i, rec in enumerate(table.to_pylist()))
        yield from (doc for doc, _, _ in self._records(rows, "parquet") if doc)

    def _read_hf(self, unit: dict) -> Iterator[Document]:
        """This task's part of a streamed datasets dataset (a hub name, or a local folder or script): whole
        files per task where the shard count allows (datasets' split_dataset_by_node), else every
        world_size-th record. A failure mid-stream (network) is retried from the last record read, with
        back-off; after ``read.hf_retries`` the task fails (a re-run resumes it) rather than skip the input.
        The first record decides the layout (inline, blob ids, per-repository rows); a dataset without
        text and without blob ids stops at that record, not retried."""
        from datasets import load_dataset
        from datasets.distributed import split_dataset_by_node

        c, name = self.cfg, unit["name"]
        done = 0
        for attempt in range(c.hf_retries + 1):
            try:
                ds = load_dataset(name, c.hf_config, data_dir=c.hf_data_dir, split=c.hf_split, streaming=True)
                ds = split_dataset_by_node(ds, rank=unit["shard"], world_size=unit["shards"])
                start = done
                rows = self._hf_rows(ds.skip(start) if start else ds, f"hf:{name}:{unit['shard']}", start)
                for doc, i, last in self._records(rows, "hf"):
                    if last:  # a row is done when its last file is out (a retry re-reads whole rows)
                        done = start + i + 1
                    if doc is not None:
                        yield doc
                return
            except ReadAbort:
                raise
            except Exception as err:
                if attempt == c.hf_retries:
                    raise RuntimeError(f"input hf:{name} (shard {unit['shard']}): {err!r}; "
                                       f"gave up after {attempt + 1} tries") from err
                self.stat_update("hf_retries")
                logger.warning(f"hf:{name}: {err!r} after {done} records; retry {attempt + 1}/{c.hf_retries}")
                time.sleep(min(60.0, c.hf_retry_wait_s * 2**attempt))

    def _hf_rows(self, ds: Iterable, where: str, start: int) -> Iterator[tuple[object, str]]:
        for i, rec in enumerate(ds, start=start):
            if i == start:
                _record_format(rec, self.cfg, f"{where} (record {i})")
            yield rec, f"{where}:{i}"

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
