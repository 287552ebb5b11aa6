"""Exact and near dedup through real datatrove executors: copies go, the first copy stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

from arctic_pretrain.text.dedup import (
    CodeMinhashSignature,
    DedupConfig,
    ExactDedupFilter,
    ExactDedupFind,
    ExactHashes,
    KeepFirstCluster,
    NearDedupFilter,
    code_shingles,
    code_token_hashes,
    minhash_config,
)
from tests.conftest import stdlib_file


class ListReader(PipelineStep):
    """Rank r yields docs[r]."""

    name = "list"

    def __init__(self, docs: list[list[Document]]) -> None:
        super().__init__()
        self.docs = docs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for d in self.docs[rank]:
            yield Document(d.text, d.id, metadata=dict(d.metadata))


def _edit(text: str, every: int) -> str:
    """A near copy: change one line in ``every`` (a fork with a few local edits)."""
    lines = text.splitlines()
    return "\n".join(line + "  # patched" if i % every == 0 else line for i, line in enumerate(lines)) + "\n"


def test_code_tokens_split_identifiers_and_operators() -> None:
    assert code_token_hashes("a_b += 12;").size == 4  # a_b, +=, 12, ;
    assert np.array_equal(code_token_hashes("foo(bar)"), code_token_hashes("foo ( bar )\n"))
    x = code_token_hashes("x = x + xy")
    assert x[0] == x[2] and len(set(x.tolist())) == 4
    assert code_token_hashes("").size == 0 and code_token_hashes(" \n\t").size == 0


def test_signature_estimates_jaccard() -> None:
    cfg = DedupConfig()
    step = CodeMinhashSignature("/tmp/unused-sigs", cfg)
    a = stdlib_file("json/decoder.py")
    for every in (3, 10, 40):
        b = _edit(a, every)
        sa, sb = code_shingles(a, 5), code_shingles(b, 5)
        jaccard = np.intersect1d(sa, sb).size / np.union1d(sa, sb).size
        agree = float((step.signature(sa) == step.signature(sb)).mean())
        assert abs(agree - jaccard) < 0.1, (every, agree, jaccard)


def test_near_and_exact_dedup_pipeline(tmp_path: Path) -> None:
    decoder, encoder, scanner = (stdlib_file(f"json/{n}.py") for n in ("decoder", "encoder", "scanner"))
    tool = stdlib_file("json/tool.py")
    meta = {"language": "python"}
    docs = [
        [Document(decoder, "orig/decoder.py", metadata=meta), Document(encoder, "orig/encoder.py", metadata=meta),
         Document(scanner, "orig/scanner.py", metadata=meta)],
        [Document(tool, "other/tool.py", metadata=meta), Document(_edit(decoder, 15), "fork/decoder.py", metadata=meta),
         Document(encoder, "copy/encoder.py", metadata=meta), Document(_edit(decoder, 12), "fork2/decoder.py",
                                                                      metadata=meta)],
    ]
    cfg = DedupConfig()
    mh = minhash_config(cfg)
    exact, sigs, buckets, remove = (str(tmp_path / n) for n in ("exact", "sigs", "buckets", "remove"))

    def run(name: str, pipeline: list, tasks: int) -> None:
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(tmp_path / "logs" / name)).run()

    run("hash", [ListReader(docs), ExactHashes(exact, 2)], 2)
    run("find", [ExactDedupFind(exact, 2, 2)], 2)
    run("sig", [ListReader(docs), ExactDedupFilter(exact), CodeMinhashSignature(sigs, cfg)], 2)
    run("buckets", [MinhashDedupBuckets(sigs, buckets, config=mh)], cfg.num_bands)
    run("cluster", [KeepFirstCluster(buckets, remove, config=mh)], 1)
    kept: list[str] = []

    class Collect(PipelineStep):
        name = "collect"

        def run(self, data, rank=0, world_size=1):
            for d in data:
                kept.append(d.id)
                yield d

    run("filter", [ListReader(docs), ExactDedupFilter(exact), NearDedupFilter(remove), Collect()], 2)
    assert sorted(kept) == ["orig/decoder.py", "orig/encoder.py", "orig/scanner.py", "other/tool.py"]


def test_exact_dedup_disabled_keeps_copies(tmp_path: Path) -> None:
    step = ExactDedupFilter(str(tmp_path), enabled=False)
    (tmp_path / "shard-0000").mkdir()
    np.save(tmp_path / "shard-0000" / "00000.remove.npy", np.array([0], dtype=np.uint64))
    assert len(list(step.run(iter([Document("a", "1")]), rank=0))) == 1
    assert list(ExactDedupFilter(str(tmp_path)).run(iter([Document("a", "1")]), rank=0)) == []


def test_cluster_keeps_the_first_copy_in_input_order(tmp_path: Path) -> None:
    """The pipeline's cluster step on pairs where a 3-copy cluster forms around rank 1 before rank 0's
    copy joins it: datatrove's union-by-size kept (1, 0); the first copy (0, 0) must stay."""
    import struct

    from arctic_pretrain.curate.pipeline import build_stages
    from tests.curate.conftest import make_config

    cfg = make_config(["/x"], tmp_path, "dedup.num_bands=2", "dedup.rows_per_band=2")
    step = next(s for s in build_stages(cfg) if s.name == "clusters").pipeline[0]
    buckets = tmp_path / "work" / "minhash" / "buckets"
    buckets.mkdir(parents=True)
    pairs = [[(1, 0, 1, 1), (1, 1, 1, 2)], [(0, 0, 1, 2), (0, 3, 2, 5)]]
    for band, rows in enumerate(pairs):
        (buckets / f"{band:05d}_00.dups").write_bytes(b"".join(struct.pack("<4I", *r) for r in rows))
    list(step.run(None, 0, 1))
    removed = {int(f.name[:6]): np.frombuffer(f.read_bytes(), dtype="<u4").tolist()
               for f in (tmp_path / "work" / "minhash" / "remove").glob("*.remove")}
    assert removed == {1: [0, 1, 2], 2: [5]}  # kept: (0, 0) and (0, 3)


def test_exact_dedup_is_sharded_and_keeps_the_first_copy(tmp_path: Path) -> None:
    """Each find task holds only its hash shard; across shards the first copy in (rank, index) order stays."""
    texts = [f"def f{i}():\n    return {i}\n" for i in range(40)]
    docs = [[Document(t, f"r0/{i}") for i, t in enumerate(texts[:20])],
            [Document(t, f"r1/{i}") for i, t in enumerate(texts[10:] + texts[:5])]]
    exact = str(tmp_path / "exact")
    for rank in range(2):
        list(ExactHashes(exact, 4).run(iter(docs[rank]), rank, 2))
    sizes = []
    for shard in range(4):
        step = ExactDedupFind(exact, 2, 4)
        list(step.run(None, shard, 4))
        sizes.append(step.stats["documents"].total)
    assert sum(sizes) == 20 + 35 and min(sizes) > 0 and max(sizes) < 55  # spread over 4 shards
    kept = [d.id for rank in range(2) for d in ExactDedupFilter(exact).run(iter(docs[rank]), rank, 2)]
    assert kept == [f"r0/{i}" for i in range(20)] + [f"r1/{i}" for i in range(10, 30)]


def test_three_versions_of_a_module_keep_the_first(tmp_path: Path) -> None:
    """The issue's case (three CPython versions' wave.py, where datatrove's cluster kept the middle one), built
    here: a module and two successive forks of it, each a few edits from the one before, in that input order."""
    versions = [stdlib_file("wave.py")]
    for every in (9, 7):
        versions.append(_edit(versions[-1], every))
    docs = [[Document(text, f"py{i}/wave.py", metadata={}) for i, text in enumerate(versions)]]
    cfg = DedupConfig()
    mh = minhash_config(cfg)
    sigs, buckets, remove = (str(tmp_path / n) for n in ("sigs", "buckets", "remove"))
    for name, pipeline, tasks in (("sig", [ListReader(docs), CodeMinhashSignature(sigs, cfg)], 1),
                                  ("buckets", [MinhashDedupBuckets(sigs, buckets, config=mh)], cfg.num_bands),
                                  ("cluster", [KeepFirstCluster(buckets, remove, config=mh)], 1)):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(tmp_path / "logs" / name)).run()
    kept = [d.id for d in NearDedupFilter(remove).run(ListReader(docs).run(), 0, 1)]
    assert kept == ["py0/wave.py"]
