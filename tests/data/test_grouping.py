"""Grouping: a repository's files become one document, per language, even across input shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from arctic_pretrain.data.grouping import (
    FILE_SEP,
    REPO_NAME,
    BucketIndex,
    GroupAndTokenize,
    GroupConfig,
    bucket_of,
    repo_document,
    repo_pieces,
)
from arctic_pretrain.data.shards import TokenSource, finalize_source
from arctic_pretrain.data.tokenizer import TokenizeConfig, prepare_tokenizer
from tests.conftest import stdlib_file


def test_repo_document_layout() -> None:
    files = [("a.py", "A = 1\n"), ("b.py", "B = 2\n"), ("c.py", "C = 3\n")]
    with_meta = repo_document("org/r", files, GroupConfig(metadata_probability=1.0), "python")
    assert with_meta.startswith(f"{REPO_NAME}org/r{FILE_SEP}")
    assert sorted(with_meta.split(FILE_SEP)[1:]) == ["a.py\nA = 1\n", "b.py\nB = 2\n", "c.py\nC = 3\n"]
    bare = repo_document("org/r", files, GroupConfig(metadata_probability=0.0), "python")
    assert sorted(bare.split(FILE_SEP)) == ["", "A = 1\n", "B = 2\n", "C = 3\n"]
    # the file order is a seeded shuffle: stable for a seed, different across seeds for some repository
    assert repo_document("org/r", files, GroupConfig(), "python") == repo_document("org/r", files[::-1],
                                                                                     GroupConfig(), "python")
    orders = {repo_document(f"r{i}", files, GroupConfig(metadata_probability=0.0), "python") for i in range(20)}
    assert len(orders) > 1


def test_metadata_probability_is_respected() -> None:
    docs = [repo_document(f"repo{i}", [("x.py", "x\n")], GroupConfig(), "python") for i in range(400)]
    share = sum(d.startswith(REPO_NAME) for d in docs) / len(docs)
    assert 0.4 < share < 0.6


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    docs = tmp_path_factory.mktemp("docs")
    (docs / "python").mkdir()
    texts = [stdlib_file(f"json/{n}.py") for n in ("decoder", "encoder", "scanner", "tool")]
    (docs / "python" / "g0000-r00000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path_factory.mktemp("tok")
    prepare_tokenizer(TokenizeConfig(train_vocab_size=400), docs, out)
    return out


def test_repository_spread_over_shards_becomes_one_document(tmp_path: Path, tokenizer_dir: Path) -> None:
    docs_dir, tokens_dir = tmp_path / "documents", tmp_path / "tokens"
    group = GroupConfig(buckets=1, metadata_probability=1.0)
    files = {("python", "alpha", "a1.py", 0): "def a1():\n    return 1\n",
             ("python", "alpha", "a2.py", 1): "def a2():\n    return 2\n",  # same repo, other input shard
             ("python", "beta", "b.py", 1): "def b():\n    return 3\n",
             ("c", "alpha", "x.c", 0): "int x(void) { return 4; }\n"}
    for (lang, repo, path, rank), text in files.items():
        assert bucket_of(repo, 1) == 0
        folder = docs_dir / lang
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"g0000-r{rank:05d}.jsonl", "a") as fh:
            fh.write(json.dumps({"text": text, "id": f"{repo}/{path}",
                                 "metadata": {"language": lang, "repo": repo, "path": path}}) + "\n")
    step = GroupAndTokenize(str(docs_dir), str(tokens_dir), str(tokenizer_dir), group, TokenizeConfig())
    list(step.run(None, rank=0, world_size=1))
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    decoded = {}
    for lang in ("python", "c"):
        manifest = finalize_source(tokens_dir / lang)
        source = TokenSource(tokens_dir / lang)
        ids, positions = source.read(0, source.num_tokens)
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        decoded[lang] = [tok.decode(ids[s:e].tolist(), skip_special_tokens=False) for s, e in zip(starts[:-1], starts[1:], strict=True)]
        assert manifest.documents == len(decoded[lang])
    assert len(decoded["python"]) == 2 and len(decoded["c"]) == 1  # alpha, beta (python); alpha (c)
    alpha, beta = decoded["python"]  # repositories in name order
    assert alpha.startswith("<repo_name>alpha<file_sep>") and alpha.endswith("<|endoftext|>")
    assert "a1.py\ndef a1():" in alpha and "a2.py\ndef a2():" in alpha and "def b()" not in alpha
    assert beta.startswith("<repo_name>beta<file_sep>b.py\n")
    assert decoded["c"][0].startswith("<repo_name>alpha<file_sep>x.c\nint x(void)")
    assert step.stats["repos_python"].total == 2 and step.stats["tokens_c"].total > 0


# small batches (by files, or by text bytes) make documents span several encode batches
@pytest.mark.parametrize(("batch_size", "batch_bytes"), [(256, 2**23), (2, 2**23), (256, 1000)])
def test_piecewise_encoding_equals_joined_text(tokenizer_dir: Path, batch_size: int, batch_bytes: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("arctic_pretrain.data.grouping.BATCH_TEXT_BYTES", batch_bytes)
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    files = [(f"json/{n}.py", stdlib_file(f"json/{n}.py")) for n in ("decoder", "encoder", "tool")]
    docs = [repo_pieces("org/json", files, GroupConfig(metadata_probability=p), "python") for p in (0.0, 1.0)]

    class Capture:
        """The ShardWriter's streaming interface, recording each document's ids."""

        def __init__(self) -> None:
            self.docs: list[list[int]] = []

        def begin_document(self) -> None:
            self.docs.append([])

        def extend_document(self, ids) -> None:
            self.docs[-1] += [int(i) for i in ids]

        def end_document(self) -> None:
            pass

    writer = Capture()
    step = GroupAndTokenize("", "", str(tokenizer_dir), GroupConfig(), TokenizeConfig(batch_size=batch_size))
    step._encode(writer, iter(docs), tok, "python")
    joined = ["".join(s + t for s, t in d) for d in docs]
    assert writer.docs == [tok.encode(text, add_special_tokens=False).ids for text in joined]
    assert writer.docs[1][0] == tok.token_to_id(REPO_NAME) and writer.docs[0][0] == tok.token_to_id(FILE_SEP)


def test_bucket_index_reads_back_the_same_documents(tmp_path: Path) -> None:
    """The streaming index (locations, texts read back lazily) builds exactly the in-memory documents."""
    names = ("decoder", "encoder", "scanner", "tool")
    shards = [tmp_path / "g0000-r00000.jsonl", tmp_path / "g0000-r00001.jsonl"]
    expected: dict[str, list[tuple[str, str]]] = {}
    for i, name in enumerate(names):
        repo, path, text = f"repo{i % 2}", f"json/{name}.py", stdlib_file(f"json/{name}.py")
        expected.setdefault(repo, []).append((path, text))
        with open(shards[i // 2], "a") as fh:  # each repository spread over both shards
            fh.write(json.dumps({"text": text, "metadata": {"repo": repo, "path": path}}) + "\n")
    index = BucketIndex(shards)
    assert index.docs == 4 and sorted(index.repos) == ["repo0", "repo1"]
    for p in (0.0, 1.0):
        cfg = GroupConfig(metadata_probability=p)
        for repo, files in expected.items():
            assert list(index.pieces(repo, cfg, "python")) == repo_pieces(repo, files, cfg, "python")
    index.close()


def test_tokenizer_loads_by_path(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    info = prepare_tokenizer(TokenizeConfig(tokenizer=str(tokenizer_dir)), tmp_path / "none", tmp_path / "tok")
    assert info.name == str(tokenizer_dir) and info.vocab_size == 400
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").convert_tokens_to_ids("<file_sep>") is not None
