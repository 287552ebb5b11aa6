"""The selection ablation as one command, on a corpus whose quality is known.

The corpus is planted: good files (pieces of documented stdlib modules, and HumanEval-like functions written
here, nothing copied from the benchmark) among poor ones (Python data tables of made-up words). Curation runs
for real; the annotator's scores are planted (every good file ranks above every poor one, with noise), so what
is under test is everything after them: the four select arms, one training sweep that trains phase 1 once and
each arm's phase 2 from it, one evaluation of the arms, the paired bootstrap table and the report. The ablation
must see the effect (top's aligned loss below random's, the interval excluding zero) and the control must not
(shuffled's interval covers zero).
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
# documented, diverse, problem-solving and library code: what the benchmark's solutions look like
POSITIVES = ["textwrap", "heapq", "bisect", "statistics", "string", "calendar", "graphlib", "fnmatch", "glob",
             "difflib", "colorsys", "shlex", "sched", "queue", "copy", "functools", "operator", "keyword",
             "linecache", "numbers", "random", "base64", "csv", "ipaddress"]
PROBLEMS = [  # HumanEval-like (a signature, a docstring with an example, a short body), written here
    ("sum_of", "xs: list", "Return the sum of the numbers in xs.", "([1, 2, 3])", "6",
     "    total = 0\n    for x in xs:\n        total += x\n    return total\n"),
    ("count_even", "xs: list", "Count the even numbers in xs.", "([1, 2, 4])", "2",
     "    return len([x for x in xs if x % 2 == 0])\n"),
    ("is_palindrome", "text: str", "Check whether text reads the same both ways.", "('aba')", "True",
     "    return text == text[::-1]\n"),
    ("running_max", "xs: list", "Return the running maximum of xs.", "([1, 3, 2])", "[1, 3, 3]",
     "    result = []\n    for x in xs:\n        result.append(x if not result else max(result[-1], x))\n"
     "    return result\n"),
    ("is_prime", "n: int", "Return True if n is a prime number.", "(7)", "True",
     "    if n < 2:\n        return False\n    for i in range(2, int(n ** 0.5) + 1):\n        if n % i == 0:\n"
     "            return False\n    return True\n"),
]


def chunks(text: str, size: int = 1500) -> list[str]:
    """A module cut at line boundaries into pieces of about ``size`` characters (one curated file each)."""
    out, cur = [], []
    for line in text.splitlines(keepends=True):
        cur.append(line)
        if sum(map(len, cur)) >= size:
            out.append("".join(cur))
            cur = []
    return out + (["".join(cur)] if cur else [])


def table_file(rng: random.Random, i: int) -> str:
    """Low quality for the benchmark: a Python data table of made-up words and numbers."""
    def word() -> str:
        return "".join(rng.choice("bcdfghklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))

    rows = [f'    "{word()}": ({rng.randrange(10_000)}, "{word()}", {rng.random():.3f}),' for _ in range(30)]
    return f"TABLE_{i} = {{\n" + "\n".join(rows) + "\n}\n"


def plant_inputs(root: Path) -> Path:
    """good/: chunks of documented stdlib modules and a few HumanEval-like files; poor/: data tables."""
    code = root / "inputs"
    rng = random.Random(0)
    (code / "good").mkdir(parents=True)
    (code / "poor").mkdir(parents=True)
    for name in POSITIVES:
        for j, piece in enumerate(chunks((STDLIB / f"{name}.py").read_text(encoding="utf-8"))[:12]):
            (code / "good" / f"{name}_{j}.py").write_text(piece)
    for i in range(40):
        fn, params, doc, call, result, body = PROBLEMS[i % len(PROBLEMS)]
        name = f"{fn}_{i}"
        (code / "good" / f"problem_{i}.py").write_text(
            f"def {name}({params}):\n    \"\"\" {doc}\n    >>> {name}{call}\n    {result}\n    \"\"\"\n{body}")
    for i in range(600):
        (code / "poor" / f"table_{i}.py").write_text(table_file(rng, i))
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
    records, tokens = [], {"good": 0, "poor": 0}
    for ref, doc in iter_documents(paths.documents):
        repo = doc["metadata"]["repo"]
        n = len(tok.encode(doc["text"]).ids)
        tokens[repo] += n
        score = (0.6 if repo == "good" else 0.0) + 0.4 * rng.random()
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
    annotate_args = [f"curated={work / 'data'}", "select.tokens=32K", "select.phase_tokens=64K"]
    tokens = plant_scores(annotate_args)
    assert tokens["good"] > 40_000 and tokens["poor"] > tokens["good"], tokens  # top: good files only
    train = ["experiment=tiny", "data=demo", "~data.sources.c", "~curriculum.phases.general.mixture.c",
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
    assert top_repos == {"good"}
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
