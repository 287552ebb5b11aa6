"""Fill-in-the-middle at read time: off is today's batches, on transforms every file, is a pure function of the
sample, and undoes to the original text (real repository documents, the project's real tokenizer)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from arctic_pretrain.data.demo import build_demo
from arctic_pretrain.data.fim import FimSettings, FimTokens, FimTransform, file_spans, unpermute
from arctic_pretrain.data.grouping import GroupConfig, repo_document
from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo, TokenSource
from arctic_pretrain.train.config import DataConfig
from tests.conftest import stdlib_file

FILES = ["json/decoder.py", "json/encoder.py", "json/scanner.py", "string.py", "colorsys.py", "bisect.py",
         "keyword.py", "glob.py", "fnmatch.py", "heapq.py", "textwrap.py", "copy.py"]
PSM_ONLY, SPM_ONLY = 0.0, 1.0


@pytest.fixture(scope="module")
def tokenizer(demo_cache):
    """The demo's BPE with StarCoder2's special tokens (data/tokenizer.py), as the runner loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_demo(demo_cache, 2, DataConfig.demo_vocab_size) / "tokenizer")


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return FimTokens.from_vocab(tokenizer.get_vocab(), tokenizer.eos_token_id)


def repositories() -> list[str]:
    """Repository documents in StarCoder2's layout (data/grouping.py), with and without their metadata."""
    docs = []
    for r in range(6):
        files = [(f"pkg/{name}", stdlib_file(name)[:1500 + 300 * r]) for name in FILES[r:r + 4]]
        docs.append(repo_document(f"user/repo{r}", files, GroupConfig(seed=r, metadata_probability=0.5), "python"))
    assert any(d.startswith("<repo_name>") for d in docs) and any(d.startswith("<file_sep>") for d in docs)
    return docs


@pytest.fixture(scope="module")
def repo_source(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("fim") / "repos"
    info = TokenizerInfo("demo", len(tokenizer), tokenizer.eos_token_id)
    with ShardWriter(folder, info, shard_tokens=2000) as w:
        for doc in repositories():
            w.add_document(tokenizer(doc, add_special_tokens=False)["input_ids"])
    return TokenSource(folder)


def sampler(source, tokens=None, seed=5, seq_len=256):
    s = MixtureSampler({"repos": source}, seq_len=seq_len, seed=seed)
    if tokens is not None:
        s.fim = FimTransform(tokens)
    return s


def with_fim(samples, settings):
    return [replace(s, fim=settings) for s in samples]


def eligible(ids, positions, tokens, shrink):
    return [(b, e) for b, e in file_spans(ids, positions, tokens)
            if e - b >= 2 + shrink and ids[b] != tokens.repo_name]


def test_rate_zero_reads_todays_batches_bit_for_bit(repo_source, tokens):
    today, off = sampler(repo_source), sampler(repo_source, tokens)
    for _ in range(3):
        a = today.read(today.draw(8, {"repos": 1.0}))
        b = off.read(with_fim(off.draw(8, {"repos": 1.0}), FimSettings(rate=0.0)))
        for x, y in zip((a.input_ids, a.position_ids, a.source_ids), (b.input_ids, b.position_ids, b.source_ids),
                        strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    assert today.state_dict() == off.state_dict()


@pytest.mark.parametrize("truncate", [True, False])
def test_rate_one_transforms_every_file(repo_source, tokens, truncate):
    plain, fim = sampler(repo_source), sampler(repo_source, tokens)
    settings = FimSettings(rate=1.0, spm_rate=0.5, truncate_or_pad=truncate)
    samples = plain.draw(repo_source.num_windows(256), {"repos": 1.0})
    before, after = plain.read(samples), fim.read(with_fim(samples, settings))
    assert after.input_ids.shape == before.input_ids.shape  # the window keeps its length
    files = transformed = 0
    for ids, pos, new_ids, new_pos in zip(before.input_ids, before.position_ids, after.input_ids,
                                          after.position_ids, strict=True):
        spans = eligible(ids, pos, tokens, 3 if truncate else 0)
        files += len(spans)
        if truncate:  # every eligible file begins with <fim_prefix> where it began; nothing else moved
            assert [int(new_ids[b]) for b, _ in spans] == [tokens.prefix] * len(spans)
            assert int((new_ids == tokens.prefix).sum()) == len(spans)
            assert np.array_equal(new_pos, pos)
            keep = np.isin(ids, tokens.separators)
            assert np.array_equal(new_ids[keep], ids[keep])
            transformed += len(spans)
        else:  # files grow by 3 tokens; those that still start inside the window are all transformed
            starts = [b + 3 * k for k, (b, _) in enumerate(spans) if b + 3 * k < ids.size]
            assert [int(new_ids[b]) for b in starts] == [tokens.prefix] * len(starts)
            transformed += len(starts)
            eos = np.flatnonzero(new_ids == tokens.eos)
            assert all(new_pos[i + 1] == 0 for i in eos if i + 1 < ids.size)  # documents still start fresh
    assert files > 20 and transformed >= files - len(samples)


def test_a_resumed_or_recreated_reader_reads_the_same_fim_windows(repo_source, tokens):
    settings = FimSettings(rate=0.5, spm_rate=0.5, truncate_or_pad=False)
    straight = sampler(repo_source, tokens)
    straight.draw(30, {"repos": 1.0})
    state = straight.state_dict()
    expected = straight.read(with_fim(straight.draw(12, {"repos": 1.0}), settings)).input_ids

    resumed = sampler(repo_source, tokens, seed=999)  # the seed comes from the checkpoint
    np.random.seed(1)  # process RNG state plays no part
    resumed.load_state_dict(state)
    samples = with_fim(resumed.draw(12, {"repos": 1.0}), settings)
    assert np.array_equal(resumed.read(samples).input_ids, expected)
    # each window alone, in another order (another rank's share, another micro-batch) reads the same
    for i in (11, 3, 0):
        assert np.array_equal(sampler(repo_source, tokens, seed=5).read([samples[i]]).input_ids[0], expected[i])
    # and the split points do depend on the seed: another run reads other FIM windows
    other = sampler(repo_source, tokens, seed=6).read(samples).input_ids
    assert not np.array_equal(other, expected)


def test_decoding_an_undone_fim_window_gives_the_original_text(tmp_path, tokenizer, tokens):
    docs = repositories()
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    info = TokenizerInfo("demo", len(tokenizer), tokenizer.eos_token_id)
    with ShardWriter(tmp_path / "one", info) as w:
        for doc in ids + [ids[0]]:  # the last one: where the last window's growth is cut
            w.add_document(doc)
    source = TokenSource(tmp_path / "one")
    orders = set()
    for spm in (PSM_ONLY, 0.5, SPM_ONLY):
        start = 0
        for doc, doc_ids in zip(docs, ids, strict=True):
            window_ids, pos = source.read(start, len(doc_ids) + 40)
            start += len(doc_ids) + 1
            out, _ = FimTransform(tokens)(window_ids, pos, FimSettings(1.0, spm, truncate_or_pad=False), key=start)
            orders |= {"spm" if out[i + 1] == tokens.suffix else "psm" for i in np.flatnonzero(out == tokens.prefix)}
            assert int((out == tokens.prefix).sum()) >= 4  # the document's files were transformed
            undone = unpermute(out, tokens)
            first = int(np.flatnonzero(undone == tokens.eos)[0])  # the repository document, whole
            assert tokenizer.decode(undone[:first]) == doc
            assert tokenizer.decode(out[:first]) != doc
    assert orders == {"psm", "spm"}


def test_truncation_costs_each_file_its_last_three_tokens(repo_source, tokens):
    plain = sampler(repo_source)
    samples = plain.draw(10, {"repos": 1.0})
    before = plain.read(samples).input_ids
    after = sampler(repo_source, tokens).read(with_fim(samples, FimSettings(1.0, 0.5, True))).input_ids
    pos = plain.read(samples).position_ids
    for ids, new_ids, p in zip(before, after, pos, strict=True):
        undone = unpermute(new_ids, tokens)
        assert undone.size == ids.size - 3 * int((new_ids == tokens.prefix).sum())
        expected = np.concatenate([ids[b:e - 3] for b, e in eligible(ids, p, tokens, 3)])
        got = np.concatenate([undone[b - 3 * k:e - 3 * (k + 1)] for k, (b, e) in enumerate(eligible(ids, p, tokens, 3))])
        assert np.array_equal(got, expected)


def test_a_tokenizer_without_fim_tokens_is_named(tokenizer):
    vocab = {k: v for k, v in tokenizer.get_vocab().items() if k != "<fim_middle>"}
    with pytest.raises(ValueError, match=r"my-tok: has no <fim_middle> token"):
        FimTokens.from_vocab(vocab, 0, where="my-tok")


def test_the_run_finds_its_fim_tokens_or_names_the_tokenizer(demo_cache, tokens, tmp_path):
    from arctic_pretrain.common.config import ConfigError
    from arctic_pretrain.train.validate import fim_tokens
    from tests.train.test_configs import load

    folder = str(build_demo(demo_cache, 2, DataConfig.demo_vocab_size) / "tokenizer")
    assert fim_tokens(load("experiment=tiny"), folder, 0) is None  # FIM off: no tokenizer needed
    cfg = load("experiment=tiny", "+fim=starcoder2")
    assert fim_tokens(cfg, folder, 0) == tokens
    with pytest.raises(ConfigError, match=r"tokenizer \(unset: the sources' manifest tokenizer.name\)=.*nowhere"):
        fim_tokens(cfg, str(tmp_path / "nowhere"), 0)
