"""The selection ablation as one command, on a corpus whose quality is known.

The corpus is planted: HumanEval-like files (documented functions solving small, well-known problems, with
doctest examples; generated, so nothing is copied from the benchmark) among ordinary library code (this
Python's stdlib modules). Curation runs for real; the annotator's scores are planted (the positives rank
above the negatives, with noise), so what is under test is everything after them: the four select arms,
one training sweep that trains phase 1 once and each arm's phase 2 from it, one evaluation of the arms,
the paired bootstrap table and the report. The ablation must see the effect (top's aligned loss below
random's, the interval excluding zero) and the control must not (shuffled's interval covers zero).
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_cli

STDLIB = Path(sysconfig.get_paths()["stdlib"])
NEGATIVES = ["json", "email", "http", "urllib", "xml/dom", "concurrent/futures", "importlib", "logging"]
WORDS = ["value", "item", "number", "word", "entry", "count", "total", "score", "element", "digit", "token",
         "point", "weight", "price", "level", "size", "index", "key", "node", "step"]
# (name, parameters, docstring, doctest call -> result, body): the style of HumanEval's problems
PROBLEMS = [
    ("sum_of_{w}s", "{w}s: list", "Return the sum of all {w}s in the list.", "([1, 2, 3])", "6",
     "    total = 0\n    for {w} in {w}s:\n        total += {w}\n    return total\n"),
    ("largest_{w}", "{w}s: list", "Return the largest {w} in a non-empty list.", "([4, 9, 2])", "9",
     "    best = {w}s[0]\n    for {w} in {w}s[1:]:\n        if {w} > best:\n            best = {w}\n    return best\n"),
    ("count_even_{w}s", "{w}s: list", "Count how many {w}s are even.", "([1, 2, 4])", "2",
     "    return len([{w} for {w} in {w}s if {w} % 2 == 0])\n"),
    ("reverse_{w}", "{w}: str", "Return the string {w} reversed.", "('abc')", "'cba'",
     "    return {w}[::-1]\n"),
    ("is_palindrome_{w}", "{w}: str", "Check whether {w} reads the same forwards and backwards.", "('aba')",
     "True", "    return {w} == {w}[::-1]\n"),
    ("unique_{w}s", "{w}s: list", "Return the sorted unique {w}s of the list.", "([3, 1, 3])", "[1, 3]",
     "    return sorted(set({w}s))\n"),
    ("running_{w}_max", "{w}s: list", "Return the running maximum of the {w}s.", "([1, 3, 2])", "[1, 3, 3]",
     "    result = []\n    best = None\n    for {w} in {w}s:\n        best = {w} if best is None else max(best, {w})\n"
     "        result.append(best)\n    return result\n"),
    ("factorial_of_{w}", "{w}: int", "Return {w} factorial.", "(4)", "24",
     "    result = 1\n    for i in range(2, {w} + 1):\n        result *= i\n    return result\n"),
    ("fib_{w}", "{w}: int", "Return the {w}-th Fibonacci number.", "(7)", "13",
     "    a, b = 0, 1\n    for _ in range({w}):\n        a, b = b, a + b\n    return a\n"),
    ("is_prime_{w}", "{w}: int", "Return True if {w} is a prime number.", "(7)", "True",
     "    if {w} < 2:\n        return False\n    for i in range(2, int({w} ** 0.5) + 1):\n"
     "        if {w} % i == 0:\n            return False\n    return True\n"),
    ("count_vowels_in_{w}", "{w}: str", "Count the vowels in the string {w}.", "('hello')", "2",
     "    return sum(1 for c in {w}.lower() if c in 'aeiou')\n"),
    ("{w}_pairs_sum_to_zero", "{w}s: list", "Return True if two distinct {w}s sum to zero.", "([1, -1, 3])",
     "True", "    for i, a in enumerate({w}s):\n        for b in {w}s[i + 1:]:\n            if a + b == 0:\n"
     "                return True\n    return False\n"),
    ("mean_of_{w}s", "{w}s: list", "Return the mean of the {w}s.", "([1.0, 3.0])", "2.0",
     "    return sum({w}s) / len({w}s)\n"),
    ("digits_of_{w}", "{w}: int", "Return the sum of the digits of {w}.", "(123)", "6",
     "    return sum(int(d) for d in str(abs({w})))\n"),
    ("common_{w}s", "a: list, b: list", "Return the sorted {w}s found in both lists.", "([1, 2], [2, 3])", "[2]",
     "    return sorted(set(a) & set(b))\n"),
    ("below_threshold_{w}", "{w}s: list, t: int", "Return True if every {w} is below the threshold t.",
     "([1, 2], 5)", "True", "    return all({w} < t for {w} in {w}s)\n"),
]


def problem_file(rng: random.Random) -> str:
    """A file of four documented problem-solving functions, names and words drawn at random."""
    parts = ["from typing import List\n"]
    for name, params, doc, call, result, body in rng.sample(PROBLEMS, 4):
        w = rng.choice(WORDS)
        fn = name.format(w=w) + f"_{rng.randrange(1000)}"
        parts.append(f"\ndef {fn}({params.format(w=w)}):\n    \"\"\" {doc.format(w=w)}\n    >>> {fn}{call}\n"
                     f"    {result}\n    \"\"\"\n{body.format(w=w)}")
    return "".join(parts)


def plant_inputs(root: Path) -> Path:
    code = root / "inputs"
    rng = random.Random(0)
    for i in range(160):
        (code / "problems" / f"p{i:03d}.py").parent.mkdir(parents=True, exist_ok=True)
        (code / "problems" / f"p{i:03d}.py").write_text(problem_file(rng))
    for pkg in NEGATIVES:
        for path in sorted((STDLIB / pkg).glob("*.py"))[:12]:
            target = code / "library" / f"{pkg.replace('/', '_')}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text(encoding="utf-8")[:6000])
    return code


def curate(code: Path, data: Path) -> None:
    from arctic_pretrain.curate.config import CurateConfig
    from arctic_pretrain.curate.pipeline import run

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CurateConfig), OmegaConf.from_dotlist([
        f"inputs=[{code}]", f"output_dir={data}", "executor.tasks=1", "executor.workers=1", "group.buckets=1",
        "tokenize.train_vocab_size=1024", "read.languages=[python]", "progress=false", "read.repo_depth=1"])))
    run(cfg)


def plant_scores(annotate_args: list[str]) -> dict[str, int]:
    """The annotator's outputs the select arms read, for the config these args compose (as launch/annotate.py
    would): scores where every problem file ranks above every library file (plus noise), model metrics."""
    from tokenizers import Tokenizer

    from arctic_pretrain.annotate.config import AnnotateConfig
    from arctic_pretrain.annotate.pipeline import Paths, stage_hashes
    from arctic_pretrain.common.config import to_object
    from arctic_pretrain.data.documents import iter_documents

    proc = run_cli(["launch/annotate.py", *annotate_args, "--cfg", "job"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = to_object(OmegaConf.merge(OmegaConf.structured(AnnotateConfig), OmegaConf.create(proc.stdout)),
                    AnnotateConfig)
    paths = Paths(cfg)
    tok = Tokenizer.from_file(str(paths.curated / "tokenizer" / "tokenizer.json"))
    rng = random.Random(1)
    records, tokens = [], {"problems": 0, "library": 0}
    for ref, doc in iter_documents(paths.documents):
        repo = doc["metadata"]["repo"]
        n = len(tok.encode(doc["text"]).ids)
        tokens[repo] += n
        score = (0.7 if repo == "problems" else 0.0) + 0.3 * rng.random()
        records.append({"key": ref.key, "file": ref.file, "offset": ref.offset, "language": "python", "repo": repo,
                        "path": doc["metadata"]["path"], "score": round(score, 6), "tokens": n, "status": "ok"})
    paths.scores.mkdir(parents=True)
    (paths.scores / "00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (paths.scores / "manifest.json").write_text(json.dumps({"config_hash": stage_hashes(cfg, paths)["score"]}))
    paths.model.mkdir(parents=True)
    (paths.model / "metrics.json").write_text(json.dumps({"planted": True}))
    return tokens


@pytest.mark.slow
def test_ablation_detects_planted_quality_and_the_control_does_not(tmp_path):
    from arctic_pretrain.evaluate.sandbox import kernel_isolation, kernel_refusal

    kernel = kernel_isolation()
    if not kernel["confined"]:  # pass@k runs model-written code
        pytest.skip(kernel_refusal(kernel))
    work = tmp_path / "w"
    curate(plant_inputs(tmp_path), work / "data")
    annotate_args = [f"curated={work / 'data'}", "select.tokens=24K", "select.phase_tokens=64K"]
    tokens = plant_scores(annotate_args)
    assert tokens["problems"] > 30_000 and tokens["library"] > 2 * tokens["problems"], tokens  # top: problems only
    train = ["experiment=tiny", "data=demo", "~data.sources.c", "curriculum.phases.general.mixture={python: 1}",
             "curriculum.phases.general.tokens=48K", "curriculum.phases.high_quality.tokens=64K",
             "training.deterministic=true"]
    proc = run_cli(["launch/pipeline.py", "experiment=ablate_selection", f"workdir={work}", "demo_inputs_mb=null",
                    "stages.curate.enabled=false", "stages.annotate.enabled=false",
                    f"stages.annotate.args={json.dumps(annotate_args)}",
                    f"stages.train_arms.overrides={json.dumps(train)}",
                    'stages.evaluate_arms.overrides=["limit=2","generation.max_new_tokens=16"]'], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    arms = ("top", "random", "bottom", "shuffled")
    selections = {a: json.loads((work / "data" / "arms" / a / "selection.json").read_text()) for a in arms}
    assert len({s["languages"]["python"]["budget"] for s in selections.values()}) == 1  # one budget, one mix
    top_repos = {json.loads(line)["repo"] for line in (work / "data/arms/top/selected/python.jsonl").open()}
    assert top_repos == {"problems"}
    sweep = work / "ablation" / "train"
    prefixes = list(sweep.glob("prefix.general.*/PREFIX_DONE.json"))
    assert len(prefixes) == 1  # phase 1 trained once for the four arms
    done = json.loads(prefixes[0].read_text())
    for arm in arms:
        variant = json.loads((sweep / f"high_quality.path={arm}" / "variant.json").read_text())
        assert variant["branch"]["checkpoint"] == done["checkpoint"]

    table = json.loads((work / "ablation" / "eval" / "ablation.json").read_text())
    aligned = next(m for m in table["metrics"] if m["metric"] == "aligned_loss/humaneval")
    assert aligned["problems"] == 164
    top, shuffled = aligned["vs_baseline"]["top"], aligned["vs_baseline"]["shuffled"]
    assert top["hi"] < 0 and top["verdict"] == "better", aligned  # the effect, detected
    assert shuffled["lo"] < 0 < shuffled["hi"], aligned  # the control: no effect shown
    assert aligned["vs_baseline"]["bottom"]["diff"] > 0, aligned
    assert any(m["metric"] == "pass@1/humaneval" for m in table["metrics"])
    page = (work / "report.html").read_text()
    assert "Selection ablation" in page and 'alt="selection ablation"' in page
