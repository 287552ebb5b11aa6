"""The selection ablation's statistics: the paired bootstrap on known inputs, and the table built from an
evaluation's per-problem files (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arctic_pretrain.evaluate.ablation import compare_arms, paired_bootstrap, write_ablation


def test_paired_bootstrap_excludes_zero_for_a_real_shift_and_covers_it_for_none():
    rng = np.random.default_rng(1)
    hard = rng.normal(3.0, 1.0, 200)  # per-problem difficulty: far larger than the effect
    shifted = paired_bootstrap(hard - 0.1 + rng.normal(0, 0.05, 200), hard, resamples=10_000, seed=0)
    assert shifted["hi"] < 0 and shifted["lo"] < shifted["diff"] < shifted["hi"]
    assert shifted["diff"] == pytest.approx(-0.1, abs=0.02)
    same = paired_bootstrap(hard + rng.normal(0, 0.05, 200), hard, resamples=10_000, seed=0)
    assert same["lo"] < 0 < same["hi"]
    # pairing is what finds it: unpaired (the baseline's problems shuffled) the same shift is lost in the noise
    unpaired = paired_bootstrap(hard - 0.1, rng.permutation(hard), resamples=10_000, seed=0)
    assert unpaired["lo"] < 0 < unpaired["hi"]
    assert paired_bootstrap(hard - 0.1, hard, seed=7) == paired_bootstrap(hard - 0.1, hard, seed=7)  # seeded


def test_paired_bootstrap_weighted_mean_is_a_ratio_of_sums():
    """Aligned loss: sum(losses) / sum(tokens) per resample, not the mean of per-problem ratios."""
    losses, tokens = np.array([10.0, 1.0]), np.array([10.0, 1.0])
    out = paired_bootstrap(losses * 2, losses, tokens, tokens, resamples=200)
    assert out["diff"] == pytest.approx(1.0) and out["lo"] == pytest.approx(1.0) and out["hi"] == pytest.approx(1.0)
    constant = paired_bootstrap(np.full(5, 0.5), np.zeros(5), resamples=200)
    assert (constant["lo"], constant["hi"]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def _plant(out, arms: dict[str, float], problems: int = 60) -> dict:
    """An evaluation's files for arms whose per-token aligned loss is shifted by the given amounts, and
    greedy verdicts (pass@1) that favour the arm with the lowest shift."""
    rng = np.random.default_rng(0)
    base_loss, tokens = rng.uniform(1, 5, problems), rng.integers(20, 200, problems)
    rows = []
    for arm, shift in arms.items():
        (out / "aligned").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        recs = [{"task_id": f"HumanEval/{i}", "loss_sum": float((base_loss[i] + shift) * tokens[i]),
                 "tokens": int(tokens[i]), "truncated": False} for i in range(problems)]
        (out / "aligned" / f"{arm}-humaneval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        passed = [bool(i % 2) if shift < 0 else i % 10 == 1 for i in range(problems)]
        (out / "samples" / f"{arm}-humaneval.jsonl").write_text(
            "".join(json.dumps({"task_id": f"HumanEval/{i}", "passed": p}) + "\n" for i, p in enumerate(passed)))
        rows.append({"name": arm, "aligned": {"humaneval": {"loss": 1.0}}, "tasks": {"humaneval": {"pass@1": 0.1}}})
    return {"tasks": ["humaneval"], "generation": {"pass_k": [1]}, "models": rows}


def test_an_arm_within_the_controls_distance_is_not_called_better(tmp_path):
    """The control (shuffled: random drawn again) lands 0.3 from random: run-to-run noise the problem
    bootstrap cannot see. Top, 0.2 better than random with a tight interval, is within it; bottom, 0.5
    worse, is beyond it."""
    results = _plant(tmp_path, {"top": -0.2, "random": 0.0, "bottom": 0.5, "shuffled": -0.3})
    aligned = compare_arms(results, tmp_path, "random", resamples=2000)["metrics"][0]
    assert aligned["vs_baseline"]["top"]["hi"] < 0  # alone, the bootstrap would call it better
    assert aligned["vs_baseline"]["shuffled"]["verdict"] == "control: does not cover zero (run-to-run noise)"
    assert aligned["control_noise"] == pytest.approx(0.3)
    assert aligned["vs_baseline"]["top"]["verdict"] == "within the control's noise"
    assert aligned["vs_baseline"]["bottom"]["verdict"] == "worse"


def test_table_pairs_arms_per_problem_and_writes_its_files(tmp_path):
    results = _plant(tmp_path, {"top": -0.2, "random": 0.0, "bottom": 0.3, "shuffled": 0.0})
    table = write_ablation(results, tmp_path, "random", resamples=2000)
    aligned, passes = table["metrics"]
    assert aligned["metric"] == "aligned_loss/humaneval" and passes["metric"] == "pass@1/humaneval"
    assert aligned["vs_baseline"]["top"]["verdict"] == "better" and aligned["vs_baseline"]["top"]["hi"] < 0
    assert aligned["vs_baseline"]["bottom"]["verdict"] == "worse"
    assert aligned["vs_baseline"]["top"]["diff"] == pytest.approx(-0.2)
    assert aligned["vs_baseline"]["shuffled"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "problems": 60,
                                                  "verdict": "control: covers zero"}
    assert passes["values"]["top"] == 0.5 and passes["vs_baseline"]["top"]["lo"] > 0
    assert json.loads((tmp_path / "ablation.json").read_text()) == table
    md = (tmp_path / "ablation.md").read_text()
    assert "| aligned loss: HumanEval | 60 | top | " in md and "(baseline)" in md
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "aligned" / "bottom-humaneval.jsonl").write_text(
        (tmp_path / "aligned" / "top-humaneval.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="arm 'bottom' was scored on other problems"):
        compare_arms(results, tmp_path, "random")
    with pytest.raises(ValueError, match="ablation.baseline='uniform'"):
        compare_arms(results, tmp_path, "uniform")
