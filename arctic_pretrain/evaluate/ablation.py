"""The selection ablation's table: each arm against the baseline arm, paired per problem, with bootstrap CIs.

An evaluation with ``arms`` (name -> model) scores every arm on the same problems, so arm and baseline are
compared problem by problem: a paired bootstrap resamples the problems (the same draw for both) and takes
the metric's difference on each resample; the percentile interval of those differences is the confidence
interval. Paired, because most of the variation is between problems (some solutions are hard for every
model), not between arms.

- Benchmark-aligned loss (aligned.py, per problem: loss sum and solution tokens): the metric is the
  token-weighted mean, as results.json reports it, so a resample's value is sum(losses) / sum(tokens).
- pass@k (per problem, the unbiased estimator over its samples): the mean over problems.

Writes ``ablation.json``, ``ablation.md`` and ``ablation.png`` (one panel per metric: every arm's difference
from the baseline with its interval) beside results.json; the run report shows them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from arctic_pretrain.common.io import atomic_write, read_jsonl
from arctic_pretrain.evaluate.results import TITLES, _save, pass_at_k
from arctic_pretrain.evaluate.runner import _safe


def paired_bootstrap(arm: np.ndarray, base: np.ndarray, arm_weight: np.ndarray | None = None,
                     base_weight: np.ndarray | None = None, resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0, chunk: int = 1000) -> dict[str, float]:
    """The difference arm - base of a weighted mean (sum(values) / sum(weights); weights of one: the plain
    mean) over paired problems, with its percentile bootstrap interval: problems are drawn with
    replacement, the same draw for both. Seeded: the same inputs give the same interval."""
    arm, base = np.asarray(arm, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if arm.shape != base.shape or arm.ndim != 1 or not len(arm):
        raise ValueError(f"paired_bootstrap: needs two equal-length, non-empty 1-D arrays, got {arm.shape}, "
                         f"{base.shape}")
    wa = np.ones_like(arm) if arm_weight is None else np.asarray(arm_weight, dtype=np.float64)
    wb = np.ones_like(base) if base_weight is None else np.asarray(base_weight, dtype=np.float64)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, chunk):  # (chunk x problems) indices at a time: memory stays small
        idx = rng.integers(0, len(arm), size=(min(chunk, resamples - start), len(arm)))
        diffs[start:start + len(idx)] = arm[idx].sum(1) / wa[idx].sum(1) - base[idx].sum(1) / wb[idx].sum(1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return {"diff": float(arm.sum() / wa.sum() - base.sum() / wb.sum()), "lo": float(lo), "hi": float(hi),
            "problems": len(arm)}


def _aligned(out_dir: Path, model: str, task: str) -> dict[str, tuple[float, float]]:
    """task_id -> (loss sum, scored tokens) of one model's aligned-loss records."""
    return {r["task_id"]: (r["loss_sum"], r["tokens"]) for r in read_jsonl(out_dir / "aligned" / f"{_safe(model)}-{task}.jsonl")}


def _passes(out_dir: Path, model: str, task: str) -> dict[str, list[bool]]:
    """task_id -> the verdicts of its samples."""
    out: dict[str, list[bool]] = defaultdict(list)
    for r in read_jsonl(out_dir / "samples" / f"{_safe(model)}-{task}.jsonl"):
        out[r["task_id"]].append(bool(r["passed"]))
    return out


def _paired(per_arm: dict[str, dict[str, Any]], metric: str, baseline: str) -> list[str]:
    """The baseline's problems in a stable order; an arm scored on other problems is an error naming it."""
    ids = set(per_arm[baseline])
    for name, values in per_arm.items():
        if set(values) != ids:
            raise ValueError(f"{metric}: arm {name!r} was scored on other problems than {baseline!r} "
                             f"({sorted(set(values) ^ ids)[:5]}...); pairing needs the same problems")
    return sorted(ids)


def compare_arms(results: dict[str, Any], out_dir: Path, baseline: str, resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0, control: str = "shuffled") -> dict[str, Any]:
    """The ablation table from an evaluation's results.json and per-problem files (aligned/, samples/).
    ``control``: the arm that is a second draw of the baseline (shuffled scores: another random order);
    where its interval misses zero, other arms must clear its far end to count as better or worse."""
    arms = [row["name"] for row in results["models"]]
    if baseline not in arms:
        raise ValueError(f"ablation.baseline={baseline!r}: not one of the arms {arms}")
    metrics = []
    for task in results["tasks"]:
        rows = {row["name"]: row for row in results["models"]}
        if all("loss" in (rows[a].get("aligned") or {}).get(task, {}) for a in arms):
            per = {a: _aligned(out_dir, a, task) for a in arms}
            ids = _paired(per, f"aligned_loss/{task}", baseline)
            arrays = {a: np.array([per[a][i] for i in ids]) for a in arms}  # (problems, 2): loss sum, tokens
            metrics.append({"metric": f"aligned_loss/{task}", "lower_is_better": True, "problems": len(ids),
                            "values": {a: float(v[:, 0].sum() / v[:, 1].sum()) for a, v in arrays.items()},
                            "vs_baseline": {a: paired_bootstrap(v[:, 0], arrays[baseline][:, 0], v[:, 1],
                                                                arrays[baseline][:, 1], resamples, confidence, seed)
                                            for a, v in arrays.items() if a != baseline}})
        if all("pass@1" in rows[a]["tasks"].get(task, {}) for a in arms):
            per = {a: _passes(out_dir, a, task) for a in arms}
            ids = _paired(per, f"pass/{task}", baseline)
            for k in results.get("generation", {}).get("pass_k", [1]):
                if any(len(per[a][i]) < k for a in arms for i in ids):
                    continue
                values = {a: np.array([pass_at_k(len(per[a][i]), sum(per[a][i]), k) for i in ids]) for a in arms}
                metrics.append({"metric": f"pass@{k}/{task}", "lower_is_better": False, "problems": len(ids),
                                "values": {a: float(v.mean()) for a, v in values.items()},
                                "vs_baseline": {a: paired_bootstrap(v, values[baseline], resamples=resamples,
                                                                    confidence=confidence, seed=seed)
                                                for a, v in values.items() if a != baseline}})
    for m in metrics:
        # the control is the baseline's kind of selection drawn again: how far it lands from the baseline is
        # the run-to-run noise the problem bootstrap cannot see (one training run per arm), so an arm counts
        # only beyond the far end of the control's interval
        ctl = m["vs_baseline"].get(control) if control != baseline else None
        noise = max(abs(ctl["lo"]), abs(ctl["hi"])) if ctl and not (ctl["lo"] <= 0 <= ctl["hi"]) else 0.0
        m["control_noise"] = noise
        for arm, cmp in m["vs_baseline"].items():
            if arm == control:
                cmp["verdict"] = ("control: covers zero" if cmp["lo"] <= 0 <= cmp["hi"] else
                                  "control: does not cover zero (run-to-run noise)")
                continue
            lo, hi = (cmp["lo"], cmp["hi"]) if m["lower_is_better"] else (-cmp["hi"], -cmp["lo"])  # lower: better
            better, worse = hi < -noise, lo > noise
            cmp["verdict"] = ("better" if better else "worse" if worse else
                              "within the control's noise" if hi < 0 or lo > 0 else "no difference shown")
    return {"baseline": baseline, "control": control if control in arms else None, "arms": arms,
            "resamples": resamples, "confidence": confidence, "seed": seed, "pairing": "per problem",
            "metrics": metrics}


def markdown(table: dict[str, Any]) -> str:
    pct = f"{100 * table['confidence']:g}%"
    lines = [f"Selection ablation: each arm against `{table['baseline']}`, paired per problem; {pct} intervals "
             f"from {table['resamples']} bootstrap resamples of the problems (seed {table['seed']}). Aligned loss: "
             "nats per reference-solution token, lower is better; pass@k: higher is better."
             + (f" `{table['control']}` is the control (a second draw of the baseline): where its interval misses "
                "zero, that distance is run-to-run noise the problem bootstrap does not see, and an arm counts as "
                "better or worse only beyond it." if table.get("control") else ""), "",
             f"| metric | problems | arm | value | difference vs {table['baseline']} | {pct} interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for m in table["metrics"]:
        task = m["metric"].split("/", 1)[1]
        label = f"{m['metric'].split('/')[0].replace('_', ' ')}: {TITLES.get(task, task)}"
        for arm in table["arms"]:
            value = f"{m['values'][arm]:.4f}"
            if arm == table["baseline"]:
                lines.append(f"| {label} | {m['problems']} | {arm} | {value} | (baseline) | | |")
                continue
            c = m["vs_baseline"][arm]
            lines.append(f"| {label} | {m['problems']} | {arm} | {value} | {c['diff']:+.4f} | "
                         f"[{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> Path | None:
    """One panel per metric: each arm's difference from the baseline with its interval, zero marked, and
    the control's noise band shaded where the control missed zero."""
    metrics = table["metrics"]
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in table["arms"] if a != table["baseline"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.5 * len(others) + 2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        for y, arm in enumerate(others):
            c = m["vs_baseline"][arm]
            color = {"better": "C2", "worse": "C3"}.get(c["verdict"], "C7")
            ax.errorbar(c["diff"], y, xerr=[[c["diff"] - c["lo"]], [c["hi"] - c["diff"]]], fmt="o", color=color,
                        capsize=4)
        ax.axvline(0, color="black", lw=0.8)
        if m.get("control_noise"):  # what an arm must clear: the control's distance from the baseline
            ax.axvspan(-m["control_noise"], m["control_noise"], color="C7", alpha=0.12, label="control's noise")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_yticks(range(len(others)), others)
        ax.invert_yaxis()
        better = "lower" if m["lower_is_better"] else "higher"
        ax.set(title=f"{m['metric']} ({better} is better)", xlabel=f"difference vs {table['baseline']}")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"selection ablation: {100 * table['confidence']:g}% paired bootstrap intervals", fontsize=10)
    return _save(fig, path)


def write_ablation(results: dict[str, Any], out_dir: Path, baseline: str, resamples: int = 10_000,
                   confidence: float = 0.95, seed: int = 0, control: str = "shuffled") -> dict[str, Any]:
    """ablation.json, ablation.md and ablation.png in ``out_dir``; returns the table."""
    table = compare_arms(results, out_dir, baseline, resamples, confidence, seed, control)
    atomic_write(out_dir / "ablation.md", markdown(table))
    plot(table, out_dir / "ablation.png")
    atomic_write(out_dir / "ablation.json", json.dumps(table, indent=2, allow_nan=False) + "\n")  # last
    return table


__all__ = ["compare_arms", "markdown", "paired_bootstrap", "plot", "write_ablation"]
