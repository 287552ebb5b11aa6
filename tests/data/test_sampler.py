import numpy as np
import pytest

from arctic_pretrain.data.permutation import FeistelPermutation
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from tests.conftest import make_source


@pytest.fixture
def sources(tmp_path):
    rng = np.random.default_rng(1)
    out = {}
    for i, name in enumerate(["python", "c", "rust"]):
        docs = [rng.integers(1, 1000, rng.integers(5, 60)).tolist() for _ in range(100 * (i + 1))]
        out[name] = TokenSource(make_source(tmp_path / name, docs, shard_tokens=500))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_permutation_is_a_bijection(n):
    perm = FeistelPermutation(n, key=42)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))
    if n > 16:
        assert not np.array_equal(perm, np.arange(n))  # actually shuffled


def test_permutation_depends_on_key():
    assert not np.array_equal(FeistelPermutation(1000, 1)(np.arange(1000)), FeistelPermutation(1000, 2)(np.arange(1000)))


def test_proportions_match_weights(sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=0)
    weights = {"python": 0.6, "c": 0.3, "rust": 0.1}
    picks = np.array([s.source for s in sampler.draw(20000, weights)])
    for i, name in enumerate(sampler.names):
        assert abs((picks == i).mean() - weights[name]) < 0.015, name


def test_zero_weight_source_is_never_drawn(sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=0)
    picks = {s.source for s in sampler.draw(2000, {"python": 1.0, "c": 0.0})}
    assert picks == {sampler.names.index("python")}


def test_epoch_reads_every_window_once(sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=3)
    n = sampler.windows[0]
    windows = [s.window for s in sampler.draw(n, {"python": 1.0})]
    assert sorted(windows) == list(range(n))
    second = sampler.draw(n, {"python": 1.0})
    assert {s.epoch for s in second} == {1}
    assert [s.window for s in second] != windows  # each epoch has its own order


def test_ranks_partition_the_global_batch(sources):
    weights = {"python": 0.5, "c": 0.5}
    ranks = [MixtureSampler(sources, seq_len=16, seed=7) for _ in range(4)]
    single = MixtureSampler(sources, seq_len=16, seed=7)
    for _ in range(5):
        shares = [r.global_batch(16, weights, rank, 4) for rank, r in enumerate(ranks)]
        seen = [(s.source, s.window, s.epoch) for share in shares for s in share]
        assert len(seen) == len(set(seen)) == 16  # no overlap between ranks
        whole = [(s.source, s.window, s.epoch) for s in single.global_batch(16, weights, 0, 1)]
        assert seen == whole  # and together they are exactly the single-rank stream
    assert all(r.state_dict() == single.state_dict() for r in ranks)


def test_restored_state_continues_identically(sources):
    weights = {"python": 0.2, "c": 0.5, "rust": 0.3}
    straight = MixtureSampler(sources, seq_len=16, seed=11)
    straight.draw(777, weights)
    expected = straight.draw(300, weights)

    first = MixtureSampler(sources, seq_len=16, seed=11)
    first.draw(777, weights)
    state = first.state_dict()
    assert len(str(state)) < 300  # counters, not a list of seen samples
    resumed = MixtureSampler(sources, seq_len=16, seed=11)
    resumed.load_state_dict(state)
    assert resumed.draw(300, weights) == expected


def test_batches_carry_document_positions(sources):
    sampler = MixtureSampler(sources, seq_len=64, seed=0)
    batch = sampler.read(sampler.draw(8, {"python": 1.0}))
    assert batch.input_ids.shape == batch.position_ids.shape == (8, 64)
    eos_before = batch.input_ids[:, :-1] == 0
    np.testing.assert_array_equal(batch.position_ids[:, 1:] == 0, eos_before)
