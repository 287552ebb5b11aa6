"""The Stack v2 layout through a real S3-protocol server on loopback (moto's server mode, not a mock of
boto3): blob ids + metadata in Parquet, gzip blobs in a bucket, contents fetched, failures counted."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.curate.config import FetchConfig, ReadConfig, validate
from arctic_pretrain.curate.fetch import ReadAbort
from arctic_pretrain.curate.pipeline import run
from arctic_pretrain.curate.readers import PlanInputs, ReadInputs
from tests.support.s3 import CLEARED, CLIENT_ENV, blob_id, s3_server

from .conftest import make_config, stdlib_file
from .test_readers import _read

SHELL = "#!/bin/sh\nset -eu\nfor f in \"$@\"; do\n  echo \"checking $f\"\n  test -r \"$f\" || exit 1\ndone\n"
LATIN1 = "# Caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9: a file saved in ISO-8859-1\n" + stdlib_file("colorsys.py")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port) for the module, found through AWS_ENDPOINT_URL as
    boto3 and s3fs find a real one; credentials from the environment, no user files read."""
    with s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for key in CLEARED:
            mp.delenv(key, raising=False)
        for key, value in {**CLIENT_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        import boto3

        yield endpoint, boto3.client("s3")


@pytest.fixture(scope="module")
def corpus(s3, tmp_path_factory) -> dict:
    """Stack v2 records (Parquet, 3 rows a row group) for blobs in the `softwareheritage` bucket: four
    present (one in ISO-8859-1), two missing, one not gzip, one undecodable in its src_encoding, one
    language not selected and one too large by its length_bytes; and the same files per repository, in
    the layout of the-stack-v2-train-*-ids. The Parquet files are also uploaded to s3://datasets/."""
    _, client = s3
    client.create_bucket(Bucket="softwareheritage")
    client.create_bucket(Bucket="datasets")
    # (repo, path, language, src_encoding, stored bytes or None (missing), expected text or None)
    files = [
        ("octo/jsonlib", "json/decoder.py", "Python", "UTF-8", "decoder", stdlib_file("json/decoder.py")),
        ("octo/jsonlib", "json/encoder.py", "Python", "UTF-8", "encoder", stdlib_file("json/encoder.py")),
        ("octo/jsonlib", "json/missing.py", "Python", "UTF-8", None, None),
        ("legacy/cafe", "cafe.py", "Python", "ISO-8859-1", "latin1", LATIN1),
        ("legacy/cafe", "broken.py", "Python", "UTF-8", "corrupt", None),
        ("legacy/cafe", "ascii.py", "Python", "ascii", "undecodable", None),
        ("tools/shell", "run.sh", "Shell", "UTF-8", "shell", SHELL),
        ("tools/shell", "gone.go", "Go", "UTF-8", None, None),
        ("tools/shell", "Main.hs", "Haskell", "UTF-8", "haskell", None),
        ("tools/big", "big.py", "Python", "UTF-8", None, None),  # length_bytes says 2 MB: never fetched
    ]
    stored = {"decoder": stdlib_file("json/decoder.py").encode(), "encoder": stdlib_file("json/encoder.py").encode(),
              "latin1": LATIN1.encode("latin-1"), "shell": SHELL.encode(), "haskell": b"main = putStrLn \"hi\"\n",
              "undecodable": "caf\xe9 = 1\n".encode("latin-1"), "corrupt": b"plain bytes, not a gzip stream"}
    rows, expected = [], []
    for i, (repo, path, lang, enc, kind, text) in enumerate(files):
        data = stored.get(kind, f"absent {i}".encode())
        blob = blob_id(data)
        if kind is not None:
            body = data if kind == "corrupt" else gzip.compress(data)
            client.put_object(Bucket="softwareheritage", Key=f"content/{blob}", Body=body, ACL="public-read")
        size = 2_000_000 if path == "big.py" else len(data)
        rows.append({"blob_id": blob, "directory_id": blob_id(repo.encode()), "path": path, "repo_name": repo,
                     "language": lang, "src_encoding": enc, "length_bytes": size, "extension": path.rsplit(".")[-1],
                     "is_vendor": False, "is_generated": False})
        if text is not None:
            expected.append((f"{repo}/{path}", text))
    root = tmp_path_factory.mktemp("stack_v2")
    (root / "flat").mkdir()
    (root / "ids").mkdir()
    flat = root / "flat" / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), flat, row_group_size=3)
    per_repo: dict[str, list] = {}
    for r in rows:
        per_repo.setdefault(r["repo_name"], []).append({k: r[k] for k in (
            "blob_id", "path", "language", "src_encoding", "length_bytes", "is_vendor", "is_generated")})
    ids = root / "ids" / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"repo_name": k, "star_events_count": 3, "files": v, "num_files": len(v)}
                                         for k, v in per_repo.items()]), ids, row_group_size=2)
    client.put_object(Bucket="datasets", Key="the-stack-v2/data/Python/train-00000.parquet", Body=flat.read_bytes())
    client.put_object(Bucket="datasets", Key="the-stack-v2/README.md", Body=b"# dataset card\n")
    return {"flat": flat, "ids": ids, "expected": expected, "root": root}


def _texts(docs) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in docs]


def test_stack_v2_records_fetch_their_contents(corpus, tmp_path: Path) -> None:
    """inputs=[the parquet] and no other key (the default bucket and key template are Software Heritage's;
    the endpoint comes from AWS_ENDPOINT_URL): exactly the documents whose blobs exist, with their
    contents, in input order (two tasks, four row groups, 4 threads); every failure counted by reason."""
    docs, stats = _read([str(corpus["flat"])], tmp_path / "w", ReadConfig(fetch=FetchConfig(threads=4)), world=2)
    assert _texts(docs) == corpus["expected"]
    assert "Café crème" in docs[2].text  # decoded as its src_encoding says
    assert docs[0].metadata == {"language": "python", "repo": "octo/jsonlib", "path": "json/decoder.py",
                                "source": "parquet"}
    assert docs[3].metadata["language"] == "shell"
    assert stats["skipped_missing_blob"] == 2 and stats["skipped_corrupt_gzip"] == 1
    assert stats["skipped_decode_error"] == 1 and stats["skipped_too_large"] == 1
    assert stats["skipped_unknown_language"] == 1  # Haskell: not in the language table
    assert stats["fetched"] == 5  # neither the Haskell file nor the 2 MB one was requested


def test_per_repository_ids_layout_yields_the_same_documents(corpus, tmp_path: Path, monkeypatch) -> None:
    """the-stack-v2-train-*-ids: one row per repository, its files in a list; the endpoint as a config key."""
    url = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    cfg = ReadConfig(fetch=FetchConfig(endpoint_url=url, threads=3))
    docs, stats = _read([str(corpus["ids"])], tmp_path / "w", cfg, world=2)
    assert _texts(docs) == corpus["expected"]
    assert stats["skipped_missing_blob"] == 2 and stats["skipped_corrupt_gzip"] == 1


def test_unsigned_requests_for_a_public_bucket(corpus, tmp_path: Path, monkeypatch) -> None:
    """read.fetch.unsigned=true: no credentials at all (Software Heritage's bucket is public)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    docs, _ = _read([str(corpus["flat"])], tmp_path / "w", ReadConfig(fetch=FetchConfig(unsigned=True)))
    assert _texts(docs) == corpus["expected"]
    with pytest.raises(ReadAbort, match="read.fetch.unsigned=true"):  # signed, and no credentials anywhere
        _read([str(corpus["flat"])], tmp_path / "w2")


def test_curation_over_s3_counts_failures_in_the_report(corpus, tmp_path: Path) -> None:
    """The whole pipeline, its input a folder on S3 (s3fs, through AWS_ENDPOINT_URL): the curated documents
    are the fetched files, report.json counts each failed blob under its reason."""
    cfg = make_config(["s3://datasets/the-stack-v2/"], tmp_path / "out", "executor.tasks=2", "executor.workers=1",
                      "group.buckets=1", "tokenize.train_vocab_size=300", "tokenize.train_sample_mb=1",
                      "progress=false", "read.fetch.threads=4", "dedup.near=false")
    out = run(cfg)
    report = json.loads((out / "report.json").read_text())
    assert {k: report["removals"][k] for k in ("missing_blob", "corrupt_gzip", "decode_error", "too_large")} == \
        {"missing_blob": 2, "corrupt_gzip": 1, "decode_error": 1, "too_large": 1}
    assert report["removals"]["remote_not_dataset"] == 1  # the dataset card beside the shards
    curated = {}
    for f in sorted((out / "documents").rglob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            curated[rec["id"]] = rec["text"]
    assert curated == dict(corpus["expected"])


def test_dataset_without_content_fails_at_once(corpus, tmp_path: Path) -> None:
    """No content field and no blob id: the plan stage stops (no read task starts), naming the field and
    the fix; blob ids with fetching switched off likewise; an hf: dataset stops at its first record."""
    rows = [{"path": f"m{i}.py", "repo_name": "a/b", "language": "Python"} for i in range(50)]
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bare)
    with pytest.raises(ConfigError, match=r"bare\.parquet: records have no `content` field .*read\.content_field="):
        run(make_config([str(bare)], tmp_path / "out", "progress=false"))
    assert not (tmp_path / "out" / "logs" / "curate").exists()  # the read stage never started
    with pytest.raises(ReadAbort, match=r"`blob_id` and no `content`.*read\.fetch\.enabled=true"):
        list(PlanInputs([str(corpus["flat"])], ReadConfig(fetch=FetchConfig(enabled=False)), str(tmp_path / "w"), 1)
             .run())
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "train-00000.parquet")
    cfg = ReadConfig()
    list(PlanInputs([f"hf:{tmp_path / 'hf'}"], cfg, str(tmp_path / "w3"), 1).run())
    reader = ReadInputs(cfg, str(tmp_path / "w3"))
    with pytest.raises(ReadAbort, match=r"record 0\): records have no `content` field"):
        list(reader.run(None, 0, 1))
    assert "skipped_missing_content" not in reader.stats.stats  # it stopped; it did not skip and go on


def test_a_wrong_store_stops_the_task(corpus, tmp_path: Path) -> None:
    """A key template that finds nothing stops after read.fetch.fail_after failures, naming the settings;
    a bucket that does not exist at the first request."""
    cfg = ReadConfig(fetch=FetchConfig(key_template="blobs/{blob_id}", fail_after=3, threads=2))
    with pytest.raises(ReadAbort, match=r"first 3 blob fetches .*missing_blob.*key_template='blobs/\{blob_id\}'"):
        _read([str(corpus["flat"])], tmp_path / "w", cfg)
    with pytest.raises(ReadAbort, match=r"NoSuchBucket.*read\.fetch\.bucket='no-such-bucket'"):
        _read([str(corpus["flat"])], tmp_path / "w2", ReadConfig(fetch=FetchConfig(bucket="no-such-bucket")))


def test_output_dir_on_s3_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"output_dir='s3://bucket/out': must be a local or shared"):
        validate(make_config([str(tmp_path)], "s3://bucket/out"))
