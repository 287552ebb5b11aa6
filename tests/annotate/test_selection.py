"""Select and report over the score files out of core (DuckDB, a score histogram then a threshold pass)
against a brute-force selection held in memory: a random corpus with many ties, several languages,
unscored files, a language without files and one whose budget exceeds what it has."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from arctic_pretrain.annotate.config import ConfigError, validate
from arctic_pretrain.annotate.report import WriteReport
from arctic_pretrain.annotate.selection import BINS, SELECTED_FIELDS, SelectTop, cut_bin
from tests.annotate.conftest import make_config

SHARES = {"python": 0.5, "c": 0.3, "rust": 0.15, "go": 0.05}  # go has no files at all


def write_corpus(scores: Path, seed: int = 0, n: int = 3000) -> list[dict]:
    """Score records in the ScoreFiles format over three shards (plus a partial one, not yet scores):
    scores from a coarse grid (ties by the hundred, bin edges 0.0, 0.5 and 1.0 among them), keys in
    an order unrelated to the shards', non-ASCII names."""
    rng = random.Random(seed)
    names = ["a", "b", "é", "日本", "z😀", "Z"]
    records = []
    for i in range(n):
        lang = rng.choices(["python", "c", "rust"], weights=[6, 3, 1])[0]
        file = f"{lang}/{rng.choice(names)}{rng.randrange(40)}.jsonl"
        offset = rng.randrange(10**6)
        status = rng.choices(["ok", "empty", "unreadable"], weights=[95, 4, 1])[0]
        score = round(rng.choice([0.0, 0.5, 1.0, rng.randrange(21) / 20, rng.random()]), 6) if status == "ok" else None
        tokens = rng.choice([0, 1, 7, 300, 2500]) if status == "ok" else 0
        records.append({"key": f"{file}:{offset}", "file": file, "offset": offset, "language": lang,
                        "repo": f"{rng.choice(names)}/r{i % 50}", "path": f"src/{rng.choice(names)}{i}.x",
                        "score": score, "tokens": tokens, "status": status})
    scores.mkdir(parents=True)
    for rank in range(3):
        (scores / f"{rank:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[rank::3]))
    (scores / "00003.partial.jsonl").write_text(json.dumps({**records[0], "key": "partial:0"}) + "\n")
    return records


def order(mode: str, seed: int = 0):
    """The brute force's sort key per select.mode: highest value first, ties by key (MD5 read little-endian,
    as DuckDB's md5_number does)."""
    def md5(rec: dict) -> float:
        return int.from_bytes(hashlib.md5(f"{rec['key']}|{mode}|{seed}".encode()).digest(), "little") / 2.0 ** 128

    value = {"top": lambda r: r["score"], "bottom": lambda r: 1.0 - r["score"]}.get(mode, md5)
    return lambda r: (-value(r), r["key"])


def brute_force(records: list[dict], tokens: int, phase: int, mode: str = "top",
                seed: int = 0) -> tuple[dict, dict[str, str]]:
    """The selection with every record in memory, sorted whole: (selection languages, selected files)."""
    norm = sum(SHARES.values())
    languages, files = {}, {}
    for lang in sorted(SHARES):
        share = SHARES[lang] / norm
        budget = round(tokens * share)
        cands = [r for r in records if r["language"] == lang and r["status"] == "ok" and r["tokens"] > 0]
        taken, total = [], 0
        for rec in sorted(cands, key=order(mode, seed)):
            if total >= budget:
                break
            taken.append(rec)
            total += rec["tokens"]
        files[lang] = "".join(json.dumps({k: r[k] for k in SELECTED_FIELDS}) + "\n" for r in taken)
        languages[lang] = {"threshold": taken[-1]["score"] if taken else None, "files": len(taken), "tokens": total,
                           "share": round(share, 6), "budget": budget,
                           "repeats": round(phase * share / total, 3) if total else None,
                           "candidates": len(cands), "candidate_tokens": sum(r["tokens"] for r in cands),
                           "exhausted": total < budget}
    return languages, files


@pytest.mark.parametrize("target", ["300K", "1200K"])
def test_streamed_selection_equals_brute_force(tmp_path, target) -> None:
    """300K: every language cut inside a bin of ties; 1200K: rust's budget exceeds what rust has."""
    out = tmp_path / "out"
    records = write_corpus(out / "scores")
    cfg = make_config(tmp_path / "curated", out, f"select.tokens={target}", "select.phase_tokens=2M",
                      *(f"select.shares.{k}={v}" for k, v in SHARES.items()))
    selection = SelectTop(cfg, tmp_path / "curated", out, {"validation": {}}).run()
    languages, files = brute_force(records, int(target[:-1]) * 1000, 2_000_000)
    assert selection["languages"] == languages
    assert json.loads((out / "selection.json").read_text())["languages"] == languages
    for lang, text in files.items():
        assert (out / "selected" / f"{lang}.jsonl").read_text() == text
    assert languages["go"]["exhausted"] and languages["go"]["files"] == 0 and languages["go"]["candidates"] == 0
    assert languages["python"]["files"] > 1 and not languages["python"]["exhausted"]
    assert languages["rust"]["exhausted"] == (target == "1200K")
    assert not list((out / "selected").glob(".*")) and not list(out.glob(".duckdb-*"))  # no temporary left


@pytest.mark.parametrize("mode", ["bottom", "random", "shuffled"])
def test_ablation_modes_equal_brute_force_with_the_same_budgets(tmp_path, mode) -> None:
    """The ablation arms' orders, streamed the same way: each equals its brute force, with the top
    selection's per-language budgets (the same mix); random and shuffled differ from each other and from
    top, and a seed changes them."""
    out = tmp_path / "out"
    records = write_corpus(out / "scores")
    shares = [f"select.shares.{k}={v}" for k, v in SHARES.items()]
    cfg = make_config(tmp_path / "curated", out, "select.tokens=300K", "select.phase_tokens=2M",
                      f"select.mode={mode}", "select.seed=3", *shares)
    selection = SelectTop(cfg, tmp_path / "curated", out, {}).run()
    languages, files = brute_force(records, 300_000, 2_000_000, mode, seed=3)
    assert selection["languages"] == languages and selection["mode"] == mode
    for lang, text in files.items():
        assert (out / "selected" / f"{lang}.jsonl").read_text() == text
    top, _ = brute_force(records, 300_000, 2_000_000)
    assert {k: v["budget"] for k, v in languages.items()} == {k: v["budget"] for k, v in top.items()}
    assert files != brute_force(records, 300_000, 2_000_000)[1]
    if mode != "bottom":
        other = "shuffled" if mode == "random" else "random"
        assert files != brute_force(records, 300_000, 2_000_000, other, seed=3)[1]
        assert files != brute_force(records, 300_000, 2_000_000, mode, seed=4)[1]
    with pytest.raises(ConfigError, match="select.mode"):
        validate(make_config(tmp_path / "curated", out, "select.mode=best"))
    with pytest.raises(ConfigError, match="select.output_dir"):
        validate(make_config(tmp_path / "curated", out, "select.output_dir=/x"))


def test_report_from_bins_equals_brute_force(tmp_path) -> None:
    out = tmp_path / "out"
    records = write_corpus(out / "scores", seed=1)
    cfg = make_config(tmp_path / "curated", out, "select.tokens=300K", "report.humaneval=false",
                      "report.examples=7", "report.bins=20", *(f"select.shares.{k}={v}" for k, v in SHARES.items()))
    SelectTop(cfg, tmp_path / "curated", out, {"validation": {}}).run()
    report = WriteReport(cfg, tmp_path / "curated", out).run()
    assert (out / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    statuses = {s: sum(r["status"] == s for r in records) for s in ("empty", "ok", "unreadable")}
    assert report["scored"] == statuses
    for lang in ("python", "c", "rust"):
        recs = [r for r in records if r["language"] == lang and r["score"] is not None]
        ranked = sorted(recs, key=lambda r: (-r["score"], r["key"]))
        row = [{k: r[k] for k in ("repo", "path", "score", "key")} for r in ranked]
        info = report["languages"][lang]
        assert info["top"] == row[:7] and info["bottom"] == row[::-1][:7]
        assert info["files"] == len(recs) and info["mean_score"] == pytest.approx(np.mean([r["score"] for r in recs]))
        bins = Counter(min(int(r["score"] * 20), 19) for r in recs)  # [i/20, (i+1)/20), 1.0 in the last bin
        assert info["histogram"] == [bins[i] for i in range(20)]
    assert set(report["languages"]) == {"python", "c", "rust"}


def test_cut_bin_boundaries() -> None:
    w = np.zeros(10, dtype=np.int64)
    w[[2, 5, 9]] = [4, 6, 3]  # tokens per bin, ascending score
    assert cut_bin(w, 3) == 9  # met exactly by the top bin
    assert cut_bin(w, 4) == 5  # crossed inside bin 5 (a file of bin 5 crosses it)
    assert cut_bin(w, 9) == 5 and cut_bin(w, 10) == 2  # 9 = 3 + 6 exactly; one more needs bin 2
    assert cut_bin(w, 13) == 2  # the whole language, exactly
    assert cut_bin(w, 14) == 0 and cut_bin(w, 10**12) == 0  # more than it has: everything (exhausted)
    assert cut_bin(w, 0) == 10 and cut_bin(w, -5) == 10  # no budget: no bin
    assert cut_bin(np.zeros(BINS, dtype=np.int64), 1) == 0  # a language with no files: nothing to cut


def test_bad_score_file_is_named(tmp_path) -> None:
    out = tmp_path / "out"
    write_corpus(out / "scores")
    with open(out / "scores" / "00001.jsonl", "a") as fh:
        fh.write('{"key": "torn", "score": 0.\n')
    cfg = make_config(tmp_path / "curated", out, *(f"select.shares.{k}={v}" for k, v in SHARES.items()))
    with pytest.raises(ValueError, match="00001.jsonl"):
        SelectTop(cfg, tmp_path / "curated", out, {}).run()
    with pytest.raises(ConfigError, match="select.memory_limit"):
        validate(make_config(tmp_path / "curated", out, "select.memory_limit=lots"))
    with pytest.raises(ValueError, match="memory size"):  # past validate (a caller of SelectTop itself)
        SelectTop(make_config(tmp_path / "curated", out, "select.memory_limit=lots"), tmp_path / "curated", out,
                  {}).run()
