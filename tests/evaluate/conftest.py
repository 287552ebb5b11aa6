"""Eval fixtures: a tiny real model (BPE tokenizer + LlamaForCausalLM), a run directory of phase exports,
small benchmark files in the real evalplus / BigCodeBench formats, and fake backends at the generation seam."""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from arctic_pretrain.generation.backends import SamplingParams

PHASES = ("general", "high_quality", "synthetic")


def _python_texts(limit_bytes: int = 400_000) -> list[str]:
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="ignore")
        texts.append(text)
        total += len(text)
        if total > limit_bytes:
            break
    return texts


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """An HF folder AutoModelForCausalLM/AutoTokenizer load: trained BPE + a random 2-layer Llama."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from arctic_pretrain.data.demo import train_tokenizer

    train_tokenizer(_python_texts(), vocab_size=512, out_dir=folder)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A training run directory as the trainer leaves it: export/<phase>/ with arctic_export.json."""
    run = tmp_path_factory.mktemp("run")
    for i, phase in enumerate(PHASES[:2]):  # two finished phases; written out of order on purpose
        folder = build_tiny_model(run / "export" / phase, seed=i)
        meta = {"phase": phase, "phase_index": i, "step": 10 * (i + 1), "consumed_tokens": 81920 * (i + 1),
                "seq_len": 256}
        (folder / "arctic_export.json").write_text(json.dumps(meta))
    # the run's config names its token sources (made with the exports' tokenizer): evaluation scores their tails
    import numpy as np

    from tests.conftest import make_source

    rng = np.random.default_rng(0)
    source = make_source(run / "tokens" / "python", [rng.integers(1, 500, 100).tolist() for _ in range(40)], vocab=512)
    (run / "config.yaml").write_text(json.dumps({"data": {"sources": {"python": {"path": str(source)}}},
                                                 "evaluation": {"enabled": True}}))  # JSON is YAML
    return run


@pytest.fixture(scope="session")
def evalplus_files(tmp_path_factory) -> dict[str, Path]:
    return write_benchmark_files(tmp_path_factory.mktemp("bench-data"))


def write_benchmark_files(root: Path) -> dict[str, Path]:
    """Two-problem HumanEval+ / MBPP+ / BigCodeBench files and an EvoEval folder in the benchmarks' own
    formats under ``root``: task name -> path (what data.<task> or the *_OVERRIDE_PATH variables take)."""
    he = [
        {"task_id": "HumanEval/0", "entry_point": "add", "contract": "", "atol": 0,
         "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
         "canonical_solution": "    return a + b\n", "base_input": [[1, 2], [3, 4]], "plus_input": [[10**9, 7], [-5, 5]]},
        {"task_id": "HumanEval/1", "entry_point": "mean", "contract": "", "atol": 1e-6,
         "prompt": 'def mean(xs: list) -> float:\n    """Arithmetic mean."""\n',
         "canonical_solution": "    return sum(xs) / len(xs)\n", "base_input": [[[1.0, 2.0]]],
         "plus_input": [[[0.1, 0.2, 0.3]], [[1e10, 1.0]]]},
    ]
    mbpp = [
        {"task_id": "Mbpp/2", "entry_point": "similar_elements", "contract": "", "atol": 0,
         "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n'
                   'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
         "canonical_solution": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
         "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2], [3]]]},
    ]
    bcb = [
        {"task_id": "BigCodeBench/0", "entry_point": "task_func", "libs": "['math']",
         "complete_prompt": 'import math\n\ndef task_func(x):\n    """Square root of x."""\n',
         "canonical_solution": "    return math.sqrt(x)\n",
         "test": "import unittest\n\nclass TestCases(unittest.TestCase):\n    def test_four(self):\n"
                 "        self.assertEqual(task_func(4), 2.0)\n    def test_zero(self):\n"
                 "        self.assertEqual(task_func(0), 0.0)\n"},
    ]
    evo = [  # EvoEval release format: arguments as strings, solution joined to the prompt with a newline
        {"task_id": "EvoEval/0", "entry_point": "count_vowels",
         "prompt": 'def count_vowels(s: str, y_is_vowel: bool) -> int:\n    """Count vowels; y too if asked."""',
         "canonical_solution": "    return sum(c in ('aeiouy' if y_is_vowel else 'aeiou') for c in s.lower())\n",
         "inputs": ["'Yay', True", "'Yay', False", "'', True"]},
        {"task_id": "EvoEval/1", "entry_point": "halves",
         "prompt": 'def halves(xs: list) -> list:\n    """Every number halved."""',
         "canonical_solution": "    return [x / 2 for x in xs]\n", "inputs": ["[1, 3]", "[]"]},
    ]
    (root / "evoeval").mkdir(parents=True)
    (root / "evoeval" / "EvoEval_difficult.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evo))
    out = {"evoeval": root / "evoeval"}
    for name, rows in (("humaneval_plus", he), ("mbpp_plus", mbpp), ("bigcodebench", bcb)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = path
    return out


class ScriptedBackend:
    """A fake model at the generation seam: the completion is a function of the prompt."""

    name = "scripted"

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.calls = 0

    def generate(self, prompts: Sequence[str], stop: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[str]]:
        self.calls += 1
        if progress:
            progress(len(prompts))
        return [[self.answer(p) for _ in range(params.n)] for p in prompts]


def canonical_answer(problems: dict[str, dict], prompt_key: str = "prompt") -> Callable[[str], str]:
    """Completion that turns the (possibly stripped) prompt back into prompt + canonical solution."""
    by_stripped = {p[prompt_key].rstrip(): p for p in problems.values()}

    def answer(prompt: str) -> str:
        p = by_stripped[prompt.rstrip()]
        return p[prompt_key][len(prompt):] + p["canonical_solution"]

    return answer
