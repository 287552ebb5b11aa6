"""Step 4: per language, the top-scored files until that language's share of ``select.tokens`` is met.

Shares default to phase 1's language ratios (the tokens of each ``<curated>/tokens/<language>``
source), so phase 2 keeps phase 1's language mix as the paper does. Files are taken in descending
score, ties broken by their ``DocumentRef`` key, until the language's budget is reached: the last file
taken is the one that crosses it, so a language overshoots by less than one file. A language with
fewer tokens than its budget gives all it has (``exhausted``). The repeat count is what the phase-2
budget (``select.phase_tokens``) implies for the tokens selected: the paper reads 12.5B tokens 4 times.

The scores are never held in memory (the paper scores 10^8-10^9 files): DuckDB reads the score files
twice. The first pass sums each language's tokens in ``BINS`` fine score bins; the bin where the budget
is crossed (``cut_bin``) bounds the second pass, which sorts only the files at or above it (spilling to
disk beyond ``select.memory_limit``) and streams them best first into ``selected/<language>.jsonl``.

``select.mode`` orders the files for a selection ablation, with the same budgets (so the same per-language
mix): ``top`` (the recipe), ``bottom`` (lowest scores first), ``random`` (a seeded uniform order: a hash of
the file's key and ``select.seed``), ``shuffled`` (the scores permuted among each language's files, seeded,
then the top taken: a control that knows the score distribution but not which file earned which score, so
it takes files in its permutation's order, a random selection with another seed). Every mode is one
ordering value in [0, 1] (``order_value``), so the same two streaming passes serve them all.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from arctic_pretrain.annotate.config import SELECT_MODES, AnnotateConfig
from arctic_pretrain.annotate.scoring import open_scores
from arctic_pretrain.common.io import atomic_write, atomic_writer
from arctic_pretrain.common.units import parse_token_count
from arctic_pretrain.data.shards import Manifest

SELECTED_FIELDS = ("key", "file", "offset", "language", "repo", "path", "score", "tokens")
CANDIDATE = "status = 'ok' AND tokens > 0 AND score IS NOT NULL"  # a file the selection may take
BINS = 1 << 14  # threshold-pass score bins: 6e-5 wide, ~60 distinct (6-decimal) scores each
MODES = SELECT_MODES


def order_value(mode: str, seed: int = 0) -> str:
    """SQL: the value in [0, 1] that ``mode`` takes files by, highest first. random/shuffled: the MD5 of the
    file's key with the mode and seed (stable across DuckDB versions, unlike hash())."""
    if mode not in MODES:
        raise ValueError(f"select.mode={mode!r}: must be one of {MODES}")
    if mode in ("random", "shuffled"):
        return f"(md5_number(\"key\" || '|{mode}|{int(seed)}')::DOUBLE / 2.0 ^ 128)"
    return "score" if mode == "top" else "(1.0 - score)"


def score_bin(bins: int, value: str = "score") -> str:
    """SQL: the bin of ``value`` (default the score) among ``bins`` equal bins of [0, 1] (out-of-range values
    in the end bins). Every pass uses this one expression, so a bin bound found by one pass holds in the
    next. NULL for no score (DuckDB's least/greatest skip NULLs, hence the CASE)."""
    return f"CASE WHEN score IS NOT NULL THEN least(greatest(floor({value} * {bins}), 0), {bins - 1})::INTEGER END"


def cut_bin(weights: np.ndarray, budget: int) -> int:
    """The lowest bin that files taken best first reach before their ``weights`` (per bin, bins in
    ascending score) sum to ``budget``: every file taken lies at or above it. 0 when the whole
    language is needed (the budget exceeds its total); ``len(weights)`` (no bin) when ``budget <= 0``."""
    if budget <= 0:
        return len(weights)
    reach = np.cumsum(np.asarray(weights, dtype=np.int64)[::-1])  # weight of the top i+1 bins
    return max(len(weights) - 1 - int(np.searchsorted(reach, budget)), 0)


def language_bins(con, where: str, columns: list[str], bins: int = BINS, extra: tuple[str, ...] = (),
                  dtype=np.int64, value: str = "score") -> dict[tuple, np.ndarray]:
    """(language, *extra) -> (bins + 1, k) array of the k SQL aggregates ``columns`` per score bin (row
    ``bins``: the unscored files), from one pass over the scores matching ``where``, grouped also by the
    ``extra`` columns. Fetched as numpy arrays: at most (groups x bins) rows, whatever the corpus."""
    keys = ["language", *extra]
    sql_type = "BIGINT" if np.issubdtype(dtype, np.integer) else "DOUBLE"
    values = [f"coalesce(({c})::{sql_type}, 0) AS v{i}" for i, c in enumerate(columns)]
    res = con.execute(f"SELECT {', '.join(keys)}, coalesce({score_bin(bins, value)}, -1) AS bin, {', '.join(values)} "
                      f"FROM scores WHERE {where} GROUP BY ALL").fetchnumpy()
    groups = list(zip(*(res[k] for k in keys), strict=True))
    out: dict[tuple, np.ndarray] = {}
    for i, group in enumerate(groups):
        arr = out.setdefault(group, np.zeros((bins + 1, len(columns)), dtype=dtype))
        arr[res["bin"][i]] = [res[f"v{j}"][i] for j in range(len(columns))]
    return out


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


class SelectTop:
    """Write ``selected/<language>.jsonl`` (highest score first) and ``selection.json``."""

    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path, metrics: dict, scores: Path | None = None) -> None:
        self.cfg, self.curated, self.out, self.metrics = cfg, curated, out, metrics
        self.scores = scores or out / "scores"  # an ablation arm writes elsewhere, from the annotation's scores

    def run(self) -> dict:
        sel = self.cfg.select
        value = order_value(sel.mode, sel.seed)
        with open_scores(self.scores, sel.memory_limit, self.out) as con:
            logger.info(f"select ({sel.mode}): pass 1, tokens per bin and language")
            hist = {g[0]: h[:BINS] for g, h in language_bins(con, CANDIDATE, ["count(*)", "sum(tokens)"],
                                                             value=value).items()}
            languages = sorted(sel.languages or (set(hist) | set(sel.shares)))
            if sel.shares:
                raw = {lang: float(sel.shares.get(lang, 0.0)) for lang in languages}
            else:
                raw = phase1_shares(self.curated, languages)
            norm = sum(raw.values())
            shares = {lang: v / norm for lang, v in raw.items()}
            target, phase = parse_token_count(sel.tokens), parse_token_count(sel.phase_tokens)
            budgets = {lang: round(target * shares[lang]) for lang in languages}
            cuts = {lang: cut_bin(hist[lang][:, 1], budgets[lang]) for lang in languages if lang in hist}
            folder = self.out / "selected"
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.jsonl"):
                if stale.stem not in languages:
                    stale.unlink()
            taken = self._write_top(con, folder, languages, budgets, cuts, hist, value)
        result = {}
        for lang in languages:
            files, tokens, last = taken[lang]
            counts = hist[lang].sum(axis=0).tolist() if lang in hist else [0, 0]
            result[lang] = {
                "threshold": last, "files": files, "tokens": tokens,
                "share": round(shares[lang], 6), "budget": budgets[lang],
                "repeats": round(phase * shares[lang] / tokens, 3) if tokens else None,
                "candidates": counts[0], "candidate_tokens": counts[1],
                "exhausted": tokens < budgets[lang]}
        selection = {
            "curated": str(self.curated), "mode": sel.mode, "seed": sel.seed, "languages": result,
            "tokens": {"target": target, "selected": sum(v["tokens"] for v in result.values()),
                       "phase_tokens": phase},
            "shares_from": "select.shares" if sel.shares else "phase-1 token ratios (tokens/<language>)",
            "encoder": self.cfg.model.encoder,
            "positives": {p.name: p.source for p in self.cfg.positives},
            "metrics": self.metrics}
        atomic_write(self.out / "selection.json", json.dumps(selection, indent=2))
        return selection

    @staticmethod
    def _write_top(con, folder: Path, languages: list[str], budgets: dict[str, int], cuts: dict[str, int],
                   hist: dict[str, np.ndarray], value: str = "score") -> dict[str, tuple[int, int, float | None]]:
        """Pass 2: the files at or above each language's cut bin, best first by ``value`` (ties: by key),
        written until the budget is crossed. Returns language -> (files, tokens, score of the last file taken)."""
        con.execute("CREATE TEMP TABLE cuts (language VARCHAR, lo INTEGER)")
        if cuts:
            con.executemany("INSERT INTO cuts VALUES (?, ?)", [[lang, lo] for lang, lo in cuts.items()])
        rows = sum(int(hist[lang][lo:, 0].sum()) for lang, lo in cuts.items())
        logger.info(f"select: pass 2, sorting the {rows} files at or above the cut bins")
        fields = ", ".join(f'scores."{f}"' for f in SELECTED_FIELDS)
        query = (f"SELECT {fields} FROM scores JOIN cuts USING (language) "
                 f'WHERE {CANDIDATE} AND {score_bin(BINS, value)} >= cuts.lo ORDER BY language, {value} DESC, "key"')
        taken = {lang: [0, 0, None] for lang in languages}
        with ExitStack() as stack:
            out = {lang: stack.enter_context(atomic_writer(folder / f"{lang}.jsonl")) for lang in languages}
            progress = stack.enter_context(tqdm(total=rows, desc="select", unit="file", mininterval=5))
            for batch in con.sql(query).to_arrow_reader(8192):
                progress.update(batch.num_rows)
                for rec in batch.to_pylist():
                    state = taken[rec["language"]]
                    if state[1] < budgets[rec["language"]]:
                        out[rec["language"]].write(json.dumps(rec) + "\n")
                        state[0], state[1], state[2] = state[0] + 1, state[1] + rec["tokens"], rec["score"]
        return {lang: tuple(v) for lang, v in taken.items()}


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
