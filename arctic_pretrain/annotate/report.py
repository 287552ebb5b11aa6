"""Step 5: the report a person reads before training on the selection.

    report/scores.png     score histograms per language, the selection threshold marked; a last panel
                          per diagnostic benchmark overlays its two groups (its tasks, phase-1 files)
    report/report.json    per language: files, threshold, files per score bin (report.bins equal bins of
                          [0, 1]), top and bottom files by path; the diagnostic, per benchmark:
                          ROC-AUC of ranking its tasks (HumanEval's canonical solutions, MBPP's...) above
                          random phase-1 files, and the two groups' score histograms (the paper's
                          diagnostic, on HumanEval; diagnosis only, never for training: the positives
                          are decontaminated against every one of them)
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


def benchmark_texts(cfg: AnnotateConfig) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each loadable decontamination benchmark's tasks as code (its fields joined: prompt + solution,
    or MBPP's text + code), and why each optional one that did not load was skipped."""
    from arctic_pretrain.text.decontamination import benchmark_records

    texts: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for b in cfg.decontamination.benchmarks:
        try:
            records = benchmark_records(b)
        except Exception as err:  # a required one already failed the positives' decontamination
            skipped[b.name] = f"{type(err).__name__}: {err}"
            continue
        joined = []
        for rec in records:
            parts = [v for v in (rec.get(f) for f in b.fields) if isinstance(v, str) and v.strip()]
            joined.append("".join(p if p.endswith("\n") else p + "\n" for p in parts))
        texts[b.name] = [t for t in joined if t.strip()]
    return texts, skipped


def benchmark_diagnostic(cfg: AnnotateConfig, model_dir: Path, documents_dir: Path, bins: int = 40) -> dict:
    """Per benchmark: ROC-AUC of the annotator at ranking its tasks (prompt + solution) above random
    phase-1 files, the paper's diagnostic (it used HumanEval) over every benchmark the positives are
    decontaminated against, so a score is never measured on what the annotator trained on; and both
    groups' score histograms (``bins`` equal bins of [0, 1]): they show at a glance whether it separates."""
    from sklearn.metrics import roc_auc_score

    from arctic_pretrain.annotate.encoder import Scorer
    from arctic_pretrain.annotate.training_data import sample_negatives

    texts, skipped = benchmark_texts(cfg)
    drawn = [rec.get("text", "") for _, rec in sample_negatives(documents_dir, cfg.report.humaneval_negatives,
                                                                 cfg.data.seed + 1)]
    drawn = [t for t in drawn if t.strip()]
    scorer = Scorer.load(model_dir, batch_size=cfg.score.batch_size)
    phase1 = list(scorer.score_texts(drawn))
    out: dict = {name: {"skipped": why} for name, why in skipped.items()}
    for name, tasks in texts.items():
        scores = list(scorer.score_texts(tasks))
        out[name] = {"roc_auc": float(roc_auc_score([1] * len(tasks) + [0] * len(phase1), scores + phase1)),
                     "tasks": len(tasks), "phase1_files": len(phase1),
                     "mean_score_benchmark": float(np.mean(scores)), "mean_score_phase1": float(np.mean(phase1)),
                     "histograms": {"benchmark": np.histogram(scores, bins=bins, range=(0, 1))[0].tolist(),
                                    "phase1": np.histogram(phase1, bins=bins, range=(0, 1))[0].tolist()}}
    return out


def plot_histograms(counts: dict[str, np.ndarray], thresholds: dict[str, float | None], path: Path,
                    diagnostic: dict | None = None) -> None:
    """One panel per language: files per score bin (``counts``: equal bins of [0, 1]), the threshold marked;
    and one panel per diagnostic benchmark with its two groups' histograms, each as a share of its files
    (164 HumanEval solutions against a few hundred phase-1 files), overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(counts)
    shown = {name: d for name, d in (diagnostic or {}).items() if "histograms" in d}
    panels = len(langs) + len(shown)
    cols = min(3, max(1, panels))
    rows = math.ceil(panels / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, lang in zip(axes.flat, langs, strict=False):
        edges = np.linspace(0, 1, len(counts[lang]) + 1)
        ax.hist(edges[:-1], bins=edges, weights=counts[lang], color="#4c72b0")
        if thresholds.get(lang) is not None:
            ax.axvline(thresholds[lang], color="#c44e52", linestyle="--", label=f"threshold {thresholds[lang]:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{lang} ({int(counts[lang].sum())} files)")
        ax.set_xlabel("annotator score")
    for ax, (bench, d) in zip(list(axes.flat)[len(langs):], shown.items(), strict=False):
        for (name, label), color in zip((("benchmark", f"{bench} tasks"), ("phase1", "random phase-1 files")),
                                        ("#55a868", "#4c72b0"), strict=True):
            h = np.asarray(d["histograms"][name], dtype=float)
            edges = np.linspace(0, 1, len(h) + 1)
            ax.hist(edges[:-1], bins=edges, weights=h / max(h.sum(), 1), color=color, alpha=0.6, label=label)
        ax.set_title(f"{bench} diagnostic (ROC-AUC {d['roc_auc']:.3f})")
        ax.set_xlabel("annotator score")
        ax.set_ylabel("share of files")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[panels:]:
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
            report["diagnostic"] = benchmark_diagnostic(self.cfg, self.out / "model", self.curated / "documents",
                                                        bins)
        thresholds = {lang: v["threshold"] for lang, v in selection["languages"].items()}
        plot_histograms(coarse, thresholds, folder / "scores.png", report.get("diagnostic"))
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
    for name, d in report.get("diagnostic", {}).items():
        if "skipped" in d:
            lines += [f"{name} diagnostic skipped: {d['skipped']}", ""]
        else:
            lines += [f"{name} diagnostic: ROC-AUC {d['roc_auc']:.3f} at ranking its {d['tasks']} tasks (prompt + "
                      f"solution) above {d['phase1_files']} random phase-1 files (mean score {d['mean_score_benchmark']:.3f}"
                      f" against {d['mean_score_phase1']:.3f}); diagnosis only, never for training: the positives "
                      "are decontaminated against it.", ""]
    lines += ["![scores](scores.png)", "", f"Scored files by status: {report['scored']}", ""]
    for lang, info in report["languages"].items():
        lines += [f"## {lang}", "",
                  f"{info['files']} files, mean score {info['mean_score']:.3f}, threshold {info['threshold']}, "
                  f"selected tokens {info['tokens']} (share {info['share']}, repeats {info['repeats']})", ""]
        for name in ("top", "bottom"):
            lines += [f"{name}:", ""] + [f"- {r['score']:.4f} `{r['repo']}/{r['path']}`" for r in info[name]] + [""]
    return "\n".join(lines)
