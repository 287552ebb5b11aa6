"""Scores and their presentation: pass@k, results.json, results.md next to the paper's rows, the plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Greedy pass@1 (%) reported by Arctic-SnowCoder (arXiv 2409.02326): HumanEval+, MBPP+, EvoEval, BigCodeBench.
# "phase" ties a row to the run's phase of the same name in the plot.
REFERENCE_ROWS: list[dict[str, Any]] = [
    {"name": "paper: after phase 1", "phase": "general", "tokens": "500B",
     "scores": {"humaneval_plus": 14.0, "mbpp_plus": 27.8, "evoeval": 7.4, "bigcodebench": 10.3}},
    {"name": "paper: after phase 2", "phase": "high_quality", "tokens": "+50B",
     "scores": {"humaneval_plus": 21.3, "mbpp_plus": 34.7, "evoeval": 12.8, "bigcodebench": 12.3}},
    {"name": "paper: Arctic-SnowCoder-1.3B", "phase": "synthetic", "tokens": "+5B",
     "scores": {"humaneval_plus": 28.0, "mbpp_plus": 42.9, "evoeval": 18.0, "bigcodebench": 19.4}},
    {"name": "paper: StarCoder2-3B", "tokens": "3.3T+",
     "scores": {"humaneval_plus": 27.4, "mbpp_plus": 49.2, "evoeval": 19.0, "bigcodebench": 21.4}},
    {"name": "paper: DeepSeek-Coder-1.3B", "tokens": "2T",
     "scores": {"humaneval_plus": 28.7, "mbpp_plus": 48.1, "evoeval": 19.2, "bigcodebench": 22.2}},
    {"name": "paper: Phi-1.5-1.3B", "tokens": "150B",
     "scores": {"humaneval_plus": 31.7, "mbpp_plus": 43.7, "evoeval": 20.6, "bigcodebench": 14.3}},
    {"name": "paper: StarCoderBase-3B", "tokens": "1T",
     "scores": {"humaneval_plus": 17.7, "mbpp_plus": 36.8, "evoeval": 11.6, "bigcodebench": 5.9}},
]
TITLES = {"humaneval": "HumanEval", "humaneval_plus": "HumanEval+", "mbpp_plus": "MBPP+", "evoeval": "EvoEval",
          "bigcodebench": "BigCodeBench", "humaneval_infill": "HumanEval infill (EM)"}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k), computed stably (Chen et al. 2021)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(passed: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems, from each problem's per-sample verdicts."""
    out = {}
    for k in ks:
        per = [pass_at_k(len(p), sum(p), k) for p in passed]
        out[f"pass@{k}"] = sum(per) / len(per) if per else 0.0
    return out


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "skipped" in entry:
        return "skipped"
    return f"{100 * entry['exact_match' if 'exact_match' in entry else 'pass@1']:.1f}"


def markdown_table(results: dict[str, Any], reference: bool = True) -> str:
    """Rows: the run's phases and baselines, then the paper's; columns: tasks; cells: pass@1 in %."""
    tasks = results["tasks"]
    lines = ["| model | tokens | " + " | ".join(TITLES[t] for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    skipped: dict[tuple[str, str], list[str]] = {}
    for row in results["models"]:
        tokens = _tokens(row.get("consumed_tokens"))
        lines.append(f"| {row['name']} | {tokens} | " + " | ".join(_cell(row["tasks"].get(t)) for t in tasks) + " |")
        for t in tasks:
            entry = row["tasks"].get(t, {})
            if "skipped" in entry:
                skipped.setdefault((t, entry["skipped"]), []).append(row["name"])
    n_rows = len(results["models"])
    notes = [f"- {TITLES[t]} ({'all rows' if len(names) == n_rows else ', '.join(names)}): {reason}"
             for (t, reason), names in skipped.items()]
    if reference:
        for ref in REFERENCE_ROWS:
            cells = [f"{ref['scores'][t]:.1f}" if t in ref["scores"] else "–" for t in tasks]
            lines.append(f"| {ref['name']} | {ref['tokens']} | " + " | ".join(cells) + " |")
    gen = results.get("generation", {})
    mode = "sampled" if gen.get("do_sample") else "greedy"
    source = (f"completions from {gen['samples']}" if gen.get("samples") else
              f"{mode} decoding, n={gen.get('n_samples', 1)} per problem")
    head = [f"pass@1 (%), {source}" + (f", first {results['limit']} problems per task" if results.get("limit") else "")
            + ".", ""]
    counts = sorted({f"- {TITLES[t]}: {e['problems']} problems"
                     + (f", {e['lines']} masked lines" if "lines" in e else "") for row in results["models"]
                     for t, e in row["tasks"].items() if "problems" in e})
    tail = []
    if "humaneval_infill" in tasks:
        tail += ["", "HumanEval infill (EM): single-line infilling (InCoder/SantaCoder): one line of a canonical "
                 "solution masked, written by the model given the code before and after it (PSM prompt); exact "
                 "match (%) after stripping whitespace, not pass@1."]
    if notes:
        tail += ["", "Skipped:", *notes]
    if counts:
        tail += ["", "Problems evaluated:", *counts]
    if reference:
        tail += ["", "Paper rows: Arctic-SnowCoder (arXiv 2409.02326), greedy pass@1; the paper reports no plain "
                 "HumanEval column. Tokens: consumed so far for this run's phases, as the paper lists them for its rows."]
    return "\n".join(head + lines + tail + aligned_table(results)) + "\n"


def aligned_tasks(results: dict[str, Any]) -> list[str]:
    """Tasks with a benchmark-aligned loss for at least one model, in the run's task order."""
    return [t for t in results["tasks"]
            if any("loss" in (row.get("aligned") or {}).get(t, {}) for row in results["models"])]


def aligned_table(results: dict[str, Any]) -> list[str]:
    """Lines of the benchmark-aligned loss table (empty when no model has one)."""
    tasks = aligned_tasks(results)
    if not tasks:
        return []
    sources = list(dict.fromkeys(s for row in results["models"] for s in row.get("heldout") or {}))
    heads = [TITLES[t] for t in tasks] + [f"held-out: {s}" for s in sources]
    lines = ["", "Benchmark-aligned loss: mean per-token loss (nats) of each benchmark's reference solutions given "
             "their prompts, prompt tokens not counted; lower is better."
             + (" Held-out: the loss on the last windows of the run's token sources, for comparison." if sources
                else ""), "",
             "| model | tokens | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    counts = set()
    for row in results["models"]:
        held_cells = [f"{row['heldout'][s]:.3f}" if s in (row.get("heldout") or {}) else "" for s in sources]
        cells = []
        for t in tasks:
            entry = (row.get("aligned") or {}).get(t, {})
            cells.append(f"{entry['loss']:.3f}" if "loss" in entry else ("skipped" if "skipped" in entry else ""))
            if "documents" in entry:
                counts.add(f"- {TITLES[t]}: {entry['documents']} problems, {entry['tokens']} solution tokens, "
                           f"{entry['truncated']} truncated to {entry['max_tokens']} tokens")
        lines.append(f"| {row['name']} | {_tokens(row.get('consumed_tokens'))} | " + " | ".join(cells + held_cells)
                     + " |")
    held = results.get("aligned", {}).get("heldout")
    if held:
        counts.add(f"- held-out: the last {held['windows']} windows of each source, "
                   + ("never trained on (the run held them out)" if held["held_out"] else
                      "which this run trained on (evaluation.enabled was false): a corpus loss, not a held-out one"))
    return lines + ["", "Scored:", *sorted(counts)]


def _tokens(n: int | None) -> str:
    if not n:
        return ""
    from arctic_pretrain.common.units import format_token_count

    return format_token_count(int(n))


def plot(results: dict[str, Any], path: Path, reference: bool = True) -> Path | None:
    """pass@1 (%) by phase, one line per task, the paper's phase rows as hollow markers of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["models"]
    if not rows:
        return None
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    for i, task in enumerate(results["tasks"]):
        color = f"C{i}"
        ys = [100 * r["tasks"][task]["pass@1"] if "pass@1" in r["tasks"].get(task, {}) else math.nan for r in rows]
        if not all(math.isnan(y) for y in ys):
            ax.plot(range(len(rows)), ys, marker="o", color=color, label=TITLES[task])
        if reference:
            for ref in REFERENCE_ROWS:
                if task in ref["scores"] and ref.get("phase") in names:
                    ax.plot(names.index(ref["phase"]), ref["scores"][task], marker="D", mfc="none", color=color,
                            linestyle="none", label=f"{TITLES[task]} (paper)" if ref["phase"] == "general" else None)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("pass@1 by phase")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_aligned(results: dict[str, Any], path: Path) -> Path | None:
    """Benchmark-aligned loss by phase (one line per benchmark): the curve that moves before pass@1 does."""
    tasks = aligned_tasks(results)
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["models"]
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    for i, task in enumerate(tasks):
        ys = [(r.get("aligned") or {}).get(task, {}).get("loss", math.nan) for r in rows]
        ax.plot(range(len(rows)), ys, marker="o", color=f"C{i}", label=TITLES[task])
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("loss on reference solutions (nats/token)")
    ax.set_title("benchmark-aligned loss by phase")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def write_outputs(results: dict[str, Any], output_dir: Path, reference: bool = True) -> dict[str, Path]:
    """results.json, results.md, pass_at_1.png and aligned_loss.png in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "md": output_dir / "results.md"}
    payload = {**results, "reference": REFERENCE_ROWS if reference else []}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["md"].write_text(markdown_table(results, reference))
    png = plot(results, output_dir / "pass_at_1.png", reference)
    if png:
        paths["png"] = png
    aligned_png = plot_aligned(results, output_dir / "aligned_loss.png")
    if aligned_png:
        paths["aligned_png"] = aligned_png
    return paths


def _save(fig, path: Path) -> Path:
    """Lay out, write (folders made) and close a chart; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
