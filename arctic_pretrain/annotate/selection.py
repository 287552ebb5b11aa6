"""Step 4: per language, the top-scored files until that language's share of ``select.tokens`` is met.

Shares default to phase 1's language ratios (the tokens of each ``<curated>/tokens/<language>``
source), so phase 2 keeps phase 1's language mix as the paper does. Files are taken in descending
score, ties broken by their ``DocumentRef`` key, until the language's budget is reached: the last file
taken is the one that crosses it, so a language overshoots by less than one file. A language with
fewer tokens than its budget gives all it has (``exhausted``). The repeat count is what the phase-2
budget (``select.phase_tokens``) implies for the tokens selected: the paper reads 12.5B tokens 4 times.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from arctic_pretrain.annotate.config import AnnotateConfig
from arctic_pretrain.annotate.scoring import iter_scores
from arctic_pretrain.common.io import atomic_write
from arctic_pretrain.common.units import parse_token_count
from arctic_pretrain.data.shards import Manifest

SELECTED_FIELDS = ("key", "file", "offset", "language", "repo", "path", "score", "tokens")


def phase1_shares(curated: Path, languages: list[str]) -> dict[str, float]:
    """Each language's fraction of phase 1's tokens (its ``tokens/<language>`` source)."""
    tokens = {}
    for lang in languages:
        folder = curated / "tokens" / lang
        tokens[lang] = Manifest.read(folder).tokens if (folder / "manifest.json").is_file() else 0
    total = sum(tokens.values())
    if not total:
        raise ValueError(f"{curated / 'tokens'}: no phase-1 token sources for {languages}; set select.shares")
    return {lang: n / total for lang, n in tokens.items()}


def take_top(files: list[dict], budget: int) -> list[dict]:
    """Files in descending score (ties: by key) until their tokens reach ``budget``."""
    ranked = sorted(files, key=lambda r: (-r["score"], r["key"]))
    taken, total = [], 0
    for rec in ranked:
        if total >= budget:
            break
        taken.append(rec)
        total += rec["tokens"]
    return taken


class SelectTop:
    """Write ``selected/<language>.jsonl`` (highest score first) and ``selection.json``."""

    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path, metrics: dict) -> None:
        self.cfg, self.curated, self.out, self.metrics = cfg, curated, out, metrics

    def run(self) -> dict:
        sel = self.cfg.select
        by_lang: dict[str, list[dict]] = defaultdict(list)
        for rec in iter_scores(self.out / "scores"):
            if rec["status"] == "ok" and rec["tokens"] > 0:
                by_lang[rec["language"]].append(rec)
        languages = sorted(sel.languages or (set(by_lang) | set(sel.shares)))
        if sel.shares:
            raw = {lang: float(sel.shares.get(lang, 0.0)) for lang in languages}
        else:
            raw = phase1_shares(self.curated, languages)
        norm = sum(raw.values())
        shares = {lang: v / norm for lang, v in raw.items()}
        target, phase = parse_token_count(sel.tokens), parse_token_count(sel.phase_tokens)
        folder = self.out / "selected"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.jsonl"):
            if stale.stem not in languages:
                stale.unlink()
        result = {}
        for lang in languages:
            budget = round(target * shares[lang])
            taken = take_top(by_lang.get(lang, []), budget) if budget > 0 else []
            tokens = sum(r["tokens"] for r in taken)
            available = sum(r["tokens"] for r in by_lang.get(lang, []))
            atomic_write(folder / f"{lang}.jsonl",
                         "".join(json.dumps({k: r[k] for k in SELECTED_FIELDS}) + "\n" for r in taken))
            result[lang] = {
                "threshold": taken[-1]["score"] if taken else None, "files": len(taken), "tokens": tokens,
                "share": round(shares[lang], 6), "budget": budget,
                "repeats": round(phase * shares[lang] / tokens, 3) if tokens else None,
                "candidates": len(by_lang.get(lang, [])), "candidate_tokens": available,
                "exhausted": tokens < budget}
        selection = {
            "curated": str(self.curated), "languages": result,
            "tokens": {"target": target, "selected": sum(v["tokens"] for v in result.values()),
                       "phase_tokens": phase},
            "shares_from": "select.shares" if sel.shares else "phase-1 token ratios (tokens/<language>)",
            "encoder": self.cfg.model.encoder,
            "positives": {p.name: p.source for p in self.cfg.positives},
            "metrics": self.metrics}
        atomic_write(self.out / "selection.json", json.dumps(selection, indent=2))
        return selection


def link_python(all_dir: Path, python_dir: Path) -> None:
    """``python/``: the Python shards of ``all/`` as a source of their own (hard links, no copy)."""
    python_dir.mkdir(parents=True, exist_ok=True)
    for f in python_dir.iterdir():
        f.unlink()
    for f in sorted(all_dir.glob("python-*")):
        if f.name.endswith((".bin", ".idx.npy", ".part.json")):
            try:
                os.link(f, python_dir / f.name)
            except OSError:  # another filesystem or no hard links: copy
                import shutil

                shutil.copy2(f, python_dir / f.name)
