import numpy as np
import pytest

from arctic_pretrain.data.permutation import FeistelPermutation
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from tests.conftest import make_source


def corpus(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, rng.integers(5, 60)).tolist() for _ in range(n)]


@pytest.fixture
def sources(tmp_path):
    return {name: TokenSource(make_source(tmp_path / name, corpus(100 * (i + 1), i), shard_tokens=500))
            for i, name in enumerate(["python", "c", "rust"])}


def rewritten(tmp_path, sources, name, docs=250):
    """``sources`` with ``name`` re-tokenized: another corpus (a re-run selection) in a new folder."""
    return {**sources, name: TokenSource(make_source(tmp_path / f"{name}-v2", corpus(docs, 99), shard_tokens=500))}


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
    assert len(str(state)) < 300 * len(sources)  # counters and identities, not a list of seen samples
    resumed = MixtureSampler(sources, seq_len=16, seed=11)
    resumed.load_state_dict(state)
    assert resumed.draw(300, weights) == expected


def test_batches_carry_document_positions(sources):
    sampler = MixtureSampler(sources, seq_len=64, seed=0)
    batch = sampler.read(sampler.draw(8, {"python": 1.0}))
    assert batch.input_ids.shape == batch.position_ids.shape == (8, 64)
    eos_before = batch.input_ids[:, :-1] == 0
    np.testing.assert_array_equal(batch.position_ids[:, 1:] == 0, eos_before)


WEIGHTS = {"python": 0.5, "c": 0.5}  # rust is never read


def saved_state(sources, draws=500):
    sampler = MixtureSampler(sources, seq_len=16, seed=5)
    sampler.draw(draws, WEIGHTS)
    return sampler.state_dict()


def test_state_records_each_sources_window_count_and_manifest_hash(sources):
    import hashlib

    state = saved_state(sources)
    for name, src in sources.items():
        digest = hashlib.sha256((src.folder / "manifest.json").read_bytes()).hexdigest()
        assert state["sources"][name] == {"windows": src.num_windows(16), "manifest_sha256": digest,
                                          "restarted_at": 0, "restarts": 0}


def test_a_changed_source_is_refused_with_its_name(tmp_path, sources):
    state = saved_state(sources)
    changed = rewritten(tmp_path, sources, "c")
    resumed = MixtureSampler(changed, seq_len=16, seed=5)
    report = resumed.changed_sources(state)
    assert list(report) == ["c"]
    assert report["c"]["windows"] == [sources["c"].num_windows(16), changed["c"].num_windows(16)]
    assert report["c"]["picks"] == state["per_source"]["c"] > 0
    with pytest.raises(ValueError, match=r"c \(\d+ -> \d+ windows, manifest.json sha256 \w+\.\.\. -> "):
        resumed.load_state_dict(state)


def test_a_source_never_read_may_change(tmp_path, sources):
    state = saved_state(sources)
    assert state["per_source"]["rust"] == 0
    resumed = MixtureSampler(rewritten(tmp_path, sources, "rust"), seq_len=16, seed=5)
    assert resumed.changed_sources(state) == {}
    resumed.load_state_dict(state)  # its first epoch has not begun: nothing to repeat or skip
    assert resumed.state_dict()["sources"]["rust"]["restarts"] == 0


def test_an_accepted_change_starts_a_fresh_permutation_at_the_recorded_point(tmp_path, sources):
    state = saved_state(sources)
    picks = state["per_source"]["c"]
    changed = rewritten(tmp_path, sources, "c")
    resumed = MixtureSampler(changed, seq_len=16, seed=5, accept_changed=["c"])
    resumed.load_state_dict(state)
    after = resumed.state_dict()
    assert after["sources"]["c"]["restarted_at"] == picks and after["sources"]["c"]["restarts"] == 1
    assert after["sources"]["c"]["windows"] == changed["c"].num_windows(16)  # the new identity, from now on
    n = changed["c"].num_windows(16)
    fresh = resumed.draw(n, {"c": 1.0})
    assert sorted(s.window for s in fresh) == list(range(n))  # one whole epoch of the new data, from its start
    assert {s.epoch for s in fresh} == {0}
    straight = MixtureSampler(changed, seq_len=16, seed=5)
    assert [s.window for s in fresh] != [s.window for s in straight.draw(n, {"c": 1.0})]  # a new order
    # the unchanged sources continue exactly where they were
    python_next = MixtureSampler(sources, seq_len=16, seed=5)
    python_next.load_state_dict(state)
    assert resumed.draw(50, {"python": 1.0}) == python_next.draw(50, {"python": 1.0})
    # and the restarted stream itself resumes identically from its own checkpoint (nothing changed since)
    again = MixtureSampler(changed, seq_len=16, seed=5)
    again.load_state_dict(resumed.state_dict())
    assert again.draw(40, WEIGHTS) == resumed.draw(40, WEIGHTS)


def test_a_state_saved_before_identities_loads_as_unknown(tmp_path, sources):
    state = saved_state(sources)
    del state["sources"]
    resumed = MixtureSampler(rewritten(tmp_path, sources, "c"), seq_len=16, seed=5)
    assert not MixtureSampler.records_identity(state) and resumed.changed_sources(state) == {}
    resumed.load_state_dict(state)
    assert resumed.state_dict()["per_source"] == state["per_source"]


# ---- a sequence length per phase (curriculum.phases.<name>.seq_len) ------------------------------------------


def test_the_runs_own_length_draws_and_saves_as_a_one_length_run(sources):
    """Naming training.seq_len explicitly is today's stream, bit for bit, and its state has no `lengths`."""
    plain, named = MixtureSampler(sources, seq_len=16, seed=4), MixtureSampler(sources, seq_len=16, seed=4)
    assert [(s.source, s.window, s.epoch) for s in plain.draw(300, WEIGHTS)] == \
        [(s.source, s.window, s.epoch) for s in named.draw(300, WEIGHTS, seq_len=16)]
    assert plain.state_dict() == named.state_dict() and "lengths" not in named.state_dict()


def test_a_longer_window_is_consecutive_windows_of_the_runs_length(sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=2)
    long = sampler.draw(20, {"python": 1.0}, seq_len=48)
    batch = sampler.read(long)
    assert batch.input_ids.shape == batch.position_ids.shape == (20, 48)
    python = sources["python"]
    for row, s in enumerate(long):
        parts = [python.window(3 * s.window + k, 16) for k in range(3)]
        np.testing.assert_array_equal(batch.input_ids[row], np.concatenate([ids for ids, _ in parts]))
        # positions restart at documents only, not at the 16-token seams inside the long window
        np.testing.assert_array_equal(batch.position_ids[row][1:] == 0, batch.input_ids[row][:-1] == 0)


def test_a_long_epoch_reads_every_long_window_once_outside_the_heldout_tail(sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=3, heldout_windows=5)
    trainable = (sources["python"].num_windows(16) - 5) * 16
    n = trainable // 40
    windows = [s.window for s in sampler.draw(n, {"python": 1.0}, seq_len=40)]
    assert sorted(windows) == list(range(n))  # a whole epoch of 40-token windows, each once
    assert (max(windows) + 1) * 40 <= trainable  # none reaches the held-out windows


def test_the_runs_stream_continues_across_a_long_phase(sources):
    """short -> long -> short: the short stream picks up where it stopped (no window read twice in its epoch),
    the long one has its own order, and the whole walk resumes exactly from a state saved in the long phase."""
    one = {"python": 1.0}
    straight = MixtureSampler(sources, seq_len=16, seed=8)
    expected_short = [s.window for s in straight.draw(150, one)]

    sampler = MixtureSampler(sources, seq_len=16, seed=8)
    first = sampler.draw(100, one)
    long = sampler.draw(30, one, seq_len=32)
    state = sampler.state_dict()
    assert state["lengths"] == {"32": {"python": {"picks": 30, "restarted_at": 0, "restarts": 0},
                                       "c": {"picks": 0, "restarted_at": 0, "restarts": 0},
                                       "rust": {"picks": 0, "restarted_at": 0, "restarts": 0}}}
    assert state["per_source"]["python"] == 100  # the run's own stream, as a one-length run records it
    later_long = sampler.draw(20, one, seq_len=32)
    later_short = sampler.draw(50, one)
    assert [s.window for s in first + later_short] == expected_short
    assert {s.seq_len for s in long} == {32} and [s.window for s in long] != [s.window for s in first[:30]]

    resumed = MixtureSampler(sources, seq_len=16, seed=8)
    resumed.load_state_dict(state)  # saved mid long phase
    assert resumed.draw(20, one, seq_len=32) == later_long
    assert resumed.draw(50, one) == later_short
    assert resumed.state_dict() == sampler.state_dict()


@pytest.mark.parametrize("seq_len", [None, 32])
def test_ranks_partition_a_long_phase_and_a_world_size_change_re_cuts_it(sources, seq_len):
    """4 ranks, then the same state continued by 2: each step's shares are the single-rank stream's."""
    single = MixtureSampler(sources, seq_len=16, seed=7)
    ranks = [MixtureSampler(sources, seq_len=16, seed=7) for _ in range(4)]
    for _ in range(3):
        whole = single.global_batch(16, WEIGHTS, 0, 1, seq_len)
        assert [s for rank, r in enumerate(ranks) for s in r.global_batch(16, WEIGHTS, rank, 4, seq_len)] == whole
    two = [MixtureSampler(sources, seq_len=16, seed=7) for _ in range(2)]
    for r in two:
        r.load_state_dict(ranks[0].state_dict())
    whole = single.global_batch(16, WEIGHTS, 0, 1, seq_len)
    assert [s for rank, r in enumerate(two) for s in r.global_batch(16, WEIGHTS, rank, 2, seq_len)] == whole


def test_a_branch_at_another_length_keeps_the_saved_stream(sources):
    """init_from a run at seq_len 16 into one at 32: no refusal; the 16-token stream is kept (and continues,
    keys unchanged, when a phase reads at 16 again); the 32-token stream starts fresh."""
    one = {"python": 1.0}
    saved = MixtureSampler(sources, seq_len=16, seed=6)
    saved.draw(200, one)
    state = saved.state_dict()
    branch = MixtureSampler(sources, seq_len=32, seed=6)
    branch.load_state_dict(state)
    assert {s.seq_len for s in branch.draw(10, one)} == {32}
    assert [s.window for s in branch.draw(40, one, seq_len=16)] == [s.window for s in saved.draw(40, one)]
    after = branch.state_dict()
    assert after["seq_len"] == 16 and after["per_source"]["python"] == 240
    assert after["lengths"]["32"]["python"]["picks"] == 10


def test_an_accepted_change_restarts_every_length_of_the_source(tmp_path, sources):
    sampler = MixtureSampler(sources, seq_len=16, seed=5)
    sampler.draw(100, WEIGHTS)
    sampler.draw(50, WEIGHTS, seq_len=32)
    state = sampler.state_dict()
    changed = rewritten(tmp_path, sources, "c")
    resumed = MixtureSampler(changed, seq_len=16, seed=5, accept_changed=["c"])
    resumed.load_state_dict(state)
    after = resumed.state_dict()
    picks32 = state["lengths"]["32"]["c"]["picks"]
    assert after["lengths"]["32"]["c"] == {"picks": picks32, "restarted_at": picks32, "restarts": 1}
    assert after["sources"]["c"]["restarts"] == 1
    n = changed["c"].num_tokens // 32
    fresh = resumed.draw(n, {"c": 1.0}, seq_len=32)
    assert sorted(s.window for s in fresh) == list(range(n)) and {s.epoch for s in fresh} == {0}
