"""Seeds: the phase-2 selection's top files, per-language quotas, and an OSS-Instruct line window of each.

The annotate stage's output folder holds ``selection.json`` (``curated``: the curated root;
``languages.<lang>.tokens``: the selection's size) and ``selected/<lang>.jsonl`` (one line per selected
file, highest score first). A seed is one such file; its id hashes the file's identity, and its window
(1-15 consecutive lines from a random start, as OSS-Instruct) comes from an RNG keyed by (seed, file),
so a restart, another worker count or another order sees the same ids and the same windows.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.data.documents import DocumentRef, read_document
from arctic_pretrain.synthesize.config import SeedingConfig


@dataclass
class Seed:
    id: str
    language: str
    key: str  # the curated file's DocumentRef key
    repo: str | None
    path: str | None
    score: float | None
    start_line: int  # 0-based first line of the window
    snippet: str  # the window the prompt shows
    file_text: str = ""  # the whole seed file: the seed-copy check compares against it (not stored)

    def record(self) -> dict:
        return {"id": self.id, "language": self.language, "key": self.key, "repo": self.repo, "path": self.path,
                "score": self.score, "start_line": self.start_line, "lines": self.snippet.count("\n") + 1,
                "text": self.snippet}


def seed_id(key: str) -> str:
    """Stable id of the seed cut from curated file ``key``."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def worker_of(sid: str, num_workers: int) -> int:
    return int(sid, 16) % num_workers


def window(text: str, key: str, cfg: SeedingConfig) -> tuple[int, str]:
    """(start line, snippet): ``min_lines..max_lines`` consecutive lines from a seeded random start;
    a few draws are tried so that a window of blank lines is not shown."""
    lines = text.splitlines()
    rng = random.Random(f"{cfg.seed}:{key}")
    start, snippet = 0, ""
    for _ in range(8):
        n = rng.randint(cfg.min_lines, cfg.max_lines)
        start = rng.randrange(max(1, len(lines) - n + 1))
        snippet = "\n".join(lines[start:start + n])
        if snippet.strip():
            break
    return start, snippet


@dataclass
class Selection:
    """The annotate stage's output as the synthesizer sees it."""

    folder: Path
    curated: Path
    languages: dict[str, dict]

    @classmethod
    def read(cls, folder: str | Path) -> Selection:
        folder = Path(folder)
        path = folder / "selection.json"
        try:
            raw = json.loads(path.read_text())
            curated, languages = Path(raw["curated"]), dict(raw["languages"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"seeds={str(folder)!r}: {path} is not an annotate selection ({err})") from None
        return cls(folder, curated, languages)

    def quotas(self, cfg: SeedingConfig) -> dict[str, int]:
        """Seeds per language: pinned shares first, the rest in the selection's token ratios."""
        langs = [lang for lang in self.languages if cfg.languages is None or lang in cfg.languages]
        if not langs:
            raise ConfigError(f"seeding.languages={cfg.languages}: none of them is in the selection "
                              f"({sorted(self.languages)})")
        for lang in cfg.shares:
            if lang not in self.languages:
                raise ConfigError(f"seeding.shares.{lang}: language not in the selection ({sorted(self.languages)})")
        pinned = {lang: cfg.shares[lang] for lang in langs if lang in cfg.shares}
        rest = [lang for lang in langs if lang not in pinned]
        free = max(0.0, 1.0 - sum(pinned.values()))
        tokens = {lang: float(self.languages[lang].get("tokens") or 0) for lang in rest}
        total = sum(tokens.values())
        shares = dict(pinned)
        for lang in rest:
            shares[lang] = free * (tokens[lang] / total if total else 1.0 / len(rest))
        if not rest and pinned:  # only pinned languages: they take all seeds in their ratios
            norm = sum(pinned.values()) or 1.0
            shares = {lang: v / norm for lang, v in pinned.items()}
        return {lang: round(cfg.num_seeds * share) for lang, share in shares.items() if round(cfg.num_seeds * share)}

    def available(self, cfg: SeedingConfig) -> dict[str, int]:
        """Seeds per language that the selection can give: the quota, or fewer selected files."""
        out = {}
        for lang, quota in self.quotas(cfg).items():
            path = self.folder / "selected" / f"{lang}.jsonl"
            with open(path, "rb") as fh:
                out[lang] = min(quota, sum(1 for line in fh if line.strip()))
        return out

    def seeds(self, cfg: SeedingConfig, skip: Container[str] = (), worker: int = 0, num_workers: int = 1,
              counts: dict | None = None) -> Iterator[Seed]:
        """Seeds of ``worker`` in selection order (language by language, best first), without those in
        ``skip``; a file's text is read only when its seed is yielded (lazy: millions never sit in memory)."""
        documents = self.curated / "documents"
        for lang, quota in self.quotas(cfg).items():
            path = self.folder / "selected" / f"{lang}.jsonl"
            if not path.is_file():
                raise ConfigError(f"seeds={str(self.folder)!r}: {path} is missing (selection.json lists {lang})")
            taken = 0
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if taken >= quota:
                        break
                    if not line.strip():
                        continue
                    taken += 1
                    row = json.loads(line)
                    ref = DocumentRef(row["file"], int(row["offset"]))
                    sid = seed_id(ref.key)
                    if worker_of(sid, num_workers) != worker or sid in skip:
                        continue
                    text = read_document(documents, ref)["text"]
                    start, snippet = window(text, ref.key, cfg)
                    yield Seed(sid, lang, ref.key, row.get("repo"), row.get("path"), row.get("score"), start,
                               snippet, text)
            if counts is not None:
                counts[lang] = {"quota": quota, "selected": taken}
