"""The embedded demo corpus: real code from this machine's Python installation and C headers.

Nobody here wrote it, it needs no network, and it is big enough (hundreds of MB) for a tiny model
to learn from. A byte-level BPE tokenizer is trained on it and four token sources are written:

    python, c      phase-1 ("general") sources, one per language
    high_quality   STAND-IN until the annotator stage exists: documented stdlib modules
    synthetic      STAND-IN until the synthesis stage exists: test files (the stdlib's test/ package, then
                   site-packages' tests: official python Docker images delete the stdlib's test/ folders)

The result is cached, keyed by its settings and by what its content comes from (the Python build and the
installed distributions' versions), and built under a lock, so concurrent ranks build it once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from arctic_pretrain.common.locks import exclusive
from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo
from arctic_pretrain.data.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

READY = "READY.json"
_MAX_FILE_BYTES = 200_000


def _files(root: Path, suffixes: tuple[str, ...], keep=lambda p: True) -> Iterator[Path]:
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages", "idlelib"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(suffixes) and keep(path) and not path.is_symlink():
                yield path


def _read(paths: Iterator[Path], budget_bytes: int) -> list[str]:
    texts, total = [], 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data.strip() or len(data) > _MAX_FILE_BYTES or b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        texts.append(text)
        total += len(data)
        if total >= budget_bytes:
            break
    return texts


def demo_texts(megabytes: float) -> dict[str, list[str]]:
    """Collect the demo sources' documents (one file each) from this machine."""
    budget = int(megabytes * 2**20)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    is_test = lambda p: "test" in p.parts or p.name.startswith("test_")  # noqa: E731

    def documented(p: Path) -> bool:
        try:
            head = p.read_text(errors="ignore")[:400].lstrip()
        except OSError:
            return False
        return head.startswith(('"""', "r'''", 'r"""', "'''")) and not is_test(p)

    python_files = _read(_chain(_files(stdlib, (".py",), lambda p: not is_test(p)),
                                _files(site, (".py",), lambda p: not is_test(p))), budget)
    c_roots = [Path(sysconfig.get_paths()["include"]), Path("/usr/include")]
    c_files = _read(_chain(*(_files(r, (".h", ".c")) for r in c_roots)), budget)
    sources = {
        "python": python_files,
        "c": c_files,
        "high_quality": _read(_files(stdlib, (".py",), documented), budget // 3),
        "synthetic": _read(_chain(_files(stdlib / "test", (".py",)), _files(site, (".py",), is_test)), budget // 6),
    }
    empty = [name for name, texts in sources.items() if not texts]
    if empty:
        raise RuntimeError(f"demo corpus: found no files for {empty} under {stdlib} and {c_roots}")
    return sources


def _chain(*iterators: Iterator[Path]) -> Iterator[Path]:
    for it in iterators:
        yield from it


def content_fingerprint() -> str:
    """What the corpus is read from: this Python build, its stdlib path, and every installed distribution's
    name and version (site-packages is most of the python source). A pip install changes the corpus, so the key."""
    import hashlib
    from importlib.metadata import distributions

    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    parts = [sys.version, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], *dists]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def demo_key(megabytes: float, vocab_size: int) -> str:
    """The cache folder's name: the settings plus the content fingerprint."""
    return (f"py{sys.version_info.major}{sys.version_info.minor}-{megabytes:g}MB-v{vocab_size}-"
            f"{content_fingerprint()}")


def build_demo(root: Path, megabytes: float, vocab_size: int) -> Path:
    """Build (or reuse) the demo corpus under ``root``; returns the folder holding the sources."""
    from tokenizers import Tokenizer

    version = demo_key(megabytes, vocab_size)
    folder = root / version
    if (folder / READY).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / f"{version}.lock"):
        if (folder / READY).is_file():
            return folder
        log.info("building the demo corpus in %s (once; cached for later runs)", folder)
        tmp = root / f"{version}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        sources = demo_texts(megabytes)
        train_sample = sources["python"][: len(sources["python"]) // 2] + sources["c"][: len(sources["c"]) // 2]
        info = train_tokenizer(train_sample, vocab_size, tmp / "tokenizer")
        info = TokenizerInfo(str(folder / "tokenizer"), info.vocab_size, info.eos_id, info.sha256)
        tokenizer = Tokenizer.from_file(str(tmp / "tokenizer" / "tokenizer.json"))
        counts = {}
        for name, texts in sources.items():
            with ShardWriter(tmp / name, info, prefix="demo", shard_tokens=2**20) as writer:
                for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
                    writer.add_document(enc.ids)
            counts[name] = {"documents": len(texts), "tokens": sum(e.tokens for e in writer.entries)}
        (tmp / READY).write_text(json.dumps({"sources": counts, "tokenizer": info.name}, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        log.info("demo corpus ready: %s", counts)
    return folder


def _repo_of(base: Path, path: Path, prefix: str) -> str:
    parts = path.relative_to(base).parts
    return f"{prefix}-{parts[0]}" if len(parts) > 1 else prefix


def write_demo_inputs(out: str | Path, megabytes: float) -> Path:
    """Raw inputs for the demo recipe (launch/pipeline.py experiment=demo): about ``megabytes`` each of this
    machine's Python sources and C headers, copied as ``out/<repository>/<path>`` (a repository per top-level
    package or header folder), so curation sees real repositories. Written once, published by rename."""
    out = Path(out)
    ready = out.with_name(out.name + ".ready.json")  # beside the inputs, not inside them (curation reads all)
    if ready.is_file() and out.is_dir():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    budget = int(megabytes * 2**20)
    stdlib, site = Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])
    include = Path(sysconfig.get_paths()["include"])
    is_test = lambda p: "test" in p.parts or p.name.startswith("test_")  # noqa: E731
    groups = [
        [(stdlib, p, "cpython") for p in _files(stdlib, (".py",), lambda p: not is_test(p))]
        + [(site, p, "site") for p in _files(site, (".py",), lambda p: not is_test(p))],
        [(r, p, name) for r, name in ((include, "python-include"), (Path("/usr/include"), "usr-include"))
         for p in _files(r, (".h", ".c"))],
    ]
    counts = {}
    for label, group in zip(("python", "c"), groups, strict=True):
        total = files = 0
        for base, path, prefix in group:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if not data.strip() or len(data) > _MAX_FILE_BYTES or b"\0" in data:
                continue
            dest = tmp / _repo_of(base, path, prefix) / path.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            total, files = total + len(data), files + 1
            if total >= budget:
                break
        counts[label] = {"files": files, "bytes": total}
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    ready.write_text(json.dumps({"inputs": counts, "python": sys.version}, indent=2))
    return out
