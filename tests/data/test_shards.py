import json

import numpy as np
import pytest

from arctic_pretrain.data.shards import Manifest, ShardWriter, TokenizerInfo, TokenSource, token_dtype
from tests.conftest import make_source


def test_dtype_follows_vocabulary():
    assert token_dtype(64_000) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(100_000) == np.uint32


def test_stream_round_trips_across_shards(tmp_path, random_docs):
    src = TokenSource(make_source(tmp_path / "s", random_docs))
    assert len(src.manifest.shards) > 3  # small shards: windows must cross shard boundaries
    expected = np.concatenate([np.append(d, 0) for d in random_docs])
    assert src.num_tokens == expected.size == src.manifest.tokens
    ids, _ = src.read(0, src.num_tokens)
    np.testing.assert_array_equal(ids, expected)
    # positions restart at each document start (after each EOS), including across shards
    starts = np.cumsum([0] + [len(d) + 1 for d in random_docs])[:-1]
    for start in (0, 37, 100, 333):
        ids, pos = src.read(start, 50)
        np.testing.assert_array_equal(ids, expected[start:start + 50])
        doc_start = np.maximum.accumulate(np.where(np.isin(np.arange(start, start + 50), starts),
                                                   np.arange(start, start + 50), start))
        np.testing.assert_array_equal(pos, np.arange(start, start + 50) - doc_start)


def test_reader_is_memory_mapped(tmp_path, random_docs):
    src = TokenSource(make_source(tmp_path / "s", random_docs))
    src.read(0, 10)
    assert isinstance(src._tokens[0], np.memmap)


def test_manifest_names_the_tokenizer_and_counts(tmp_path, random_docs):
    make_source(tmp_path / "s", random_docs)
    raw = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert raw["tokenizer"]["name"] == "test-tokenizer"
    assert raw["documents"] == len(random_docs)
    assert raw["dtype"] == "uint16"


def test_killed_writer_leaves_no_source(tmp_path):
    folder = tmp_path / "s"
    with pytest.raises(RuntimeError), ShardWriter(folder, TokenizerInfo("t", 100, 0), shard_tokens=10) as w:
        w.add_documents([[1, 2, 3]] * 10)
        raise RuntimeError("killed")
    assert not (folder / "manifest.json").exists()
    assert not list(folder.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TokenSource(folder)


def test_bad_manifest_is_named(tmp_path, random_docs):
    folder = make_source(tmp_path / "s", random_docs)
    (folder / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="manifest.json: invalid manifest"):
        Manifest.read(folder)


def test_out_of_vocabulary_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="out of range"), ShardWriter(tmp_path, TokenizerInfo("t", 10, 0)) as w:
        w.add_document([1, 2, 10])


def test_parallel_writers_join_into_one_manifest(tmp_path):
    from arctic_pretrain.data.shards import finalize_source

    info = TokenizerInfo("t", 100, 0)
    for worker in range(3):
        w = ShardWriter(tmp_path, info, prefix=f"w{worker}")
        w.add_documents([[worker + 1] * 5] * 4)
        w.close(finalize=False)
    manifest = finalize_source(tmp_path)
    assert manifest.documents == 12 and manifest.tokens == 12 * 6
    assert TokenSource(tmp_path).num_tokens == 72
