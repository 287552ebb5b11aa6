"""The background prefetcher hands out exactly what reading synchronously gives, in order."""

import threading
import time

import numpy as np
import pytest
import torch

from arctic_pretrain.data.prefetch import Prefetcher
from arctic_pretrain.data.sampler import MixtureSampler, Sample
from arctic_pretrain.data.shards import TokenSource
from tests.conftest import make_source


@pytest.fixture
def sampler(tmp_path) -> MixtureSampler:
    rng = np.random.default_rng(0)
    sources = {}
    for name in ("a", "b"):
        docs = [rng.integers(1, 500, rng.integers(3, 40)).tolist() for _ in range(120)]
        sources[name] = TokenSource(make_source(tmp_path / name, docs, vocab=500))
    return MixtureSampler(sources, seq_len=16, seed=3)


def test_same_order_and_content_as_synchronous_reads(sampler):
    steps = [sampler.global_batch(8, {"a": 0.7, "b": 0.3}, rank=0, world=1) for _ in range(3)]
    with Prefetcher(sampler.read, "cpu", depth=2) as prefetch:
        for samples in steps:  # the step loop's pattern: submit a step, then take its micro-batches
            assert prefetch.submit(samples, micro_batch=3) == 3  # 3 + 3 + 2
            for start in range(0, 8, 3):
                want = sampler.read(samples[start:start + 3])
                got = prefetch.get(timeout=30)
                assert np.array_equal(got.input_ids.numpy(), want.input_ids)
                assert np.array_equal(got.position_ids.numpy(), want.position_ids)
                assert np.array_equal(got.source_ids.numpy(), want.source_ids)
                assert got.input_ids.dtype == torch.int64


def test_reads_run_ahead_but_bounded(sampler):
    samples = sampler.global_batch(10, {"a": 1.0}, 0, 1)
    calls = []

    def read(batch):
        calls.append(len(batch))
        return sampler.read(batch)

    with Prefetcher(read, "cpu", depth=2) as prefetch:
        prefetch.submit(samples, micro_batch=1)
        deadline = time.monotonic() + 30
        while len(calls) < 3 and time.monotonic() < deadline:  # 2 queued + 1 waiting to be queued
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(calls) == 3  # read ahead of any get(), and no further than depth + 1
        prefetch.get(timeout=30)
        deadline = time.monotonic() + 30
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 4


def test_a_failed_read_is_raised_by_get(sampler):
    good = sampler.global_batch(4, {"a": 1.0}, 0, 1)
    bad = [Sample(source=0, window=10**9, epoch=0)]  # a window past the source's end: the real reader fails
    with Prefetcher(sampler.read, "cpu", depth=4) as prefetch:
        prefetch.submit(good + bad, micro_batch=2)
        assert prefetch.get(timeout=30).input_ids.shape == (2, 16)
        assert prefetch.get(timeout=30).input_ids.shape == (2, 16)
        with pytest.raises(RuntimeError, match="reading a micro-batch failed") as info:
            prefetch.get(timeout=30)
        assert info.value.__cause__ is not None
        with pytest.raises(RuntimeError, match="closed"):
            prefetch.submit(good, 2)  # a failed prefetcher is closed, not silently reused


def test_close_stops_a_blocked_worker(sampler):
    samples = sampler.global_batch(20, {"a": 1.0}, 0, 1)
    before = threading.active_count()
    prefetch = Prefetcher(sampler.read, "cpu", depth=1)
    prefetch.submit(samples, micro_batch=1)  # the worker fills the queue and blocks
    prefetch.get(timeout=30)
    time.sleep(0.1)
    prefetch.close()
    assert not prefetch._thread.is_alive()
    assert threading.active_count() == before
    prefetch.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        prefetch.submit(samples, 1)


def test_get_without_submit_fails_fast(sampler):
    with Prefetcher(sampler.read, "cpu") as prefetch, pytest.raises(RuntimeError, match="without a submitted"):
        prefetch.get()


@pytest.mark.gpu
def test_pinned_non_blocking_copies_on_gpu(sampler):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    samples = sampler.global_batch(8, {"a": 0.5, "b": 0.5}, 0, 1)
    with Prefetcher(sampler.read, "cuda", depth=2) as prefetch:
        prefetch.submit(samples, 4)
        for start in (0, 4):
            got = prefetch.get(timeout=60)
            assert got.input_ids.is_cuda
            want = sampler.read(samples[start:start + 4])
            assert np.array_equal((got.input_ids * 1).cpu().numpy(), want.input_ids)  # a compute-stream use
            assert np.array_equal(got.position_ids.cpu().numpy(), want.position_ids)


def test_a_token_source_opened_from_two_threads_at_once(sampler):
    """The prefetcher's thread and the main thread (held-out loss) may open the same shard together."""
    folder = sampler.sources[0].folder
    reference = TokenSource(folder)
    want = [reference.window(w, 16) for w in range(reference.num_windows(16))]
    for _ in range(5):
        fresh, errors, barrier = TokenSource(folder), [], threading.Barrier(4)

        def read_all(source=fresh, errors=errors, barrier=barrier):
            barrier.wait()
            try:
                for w, (ids, pos) in enumerate(want):
                    got = source.window(w, 16)
                    assert np.array_equal(got[0], ids) and np.array_equal(got[1], pos)
            except Exception as error:  # collected, asserted below
                errors.append(error)

        threads = [threading.Thread(target=read_all) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
