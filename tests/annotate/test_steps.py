"""The annotator's steps one by one: byte-slice sharding, resume after a kill, odd inputs, config errors,
executors (the decontamination of positives: test_classifier_job.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_pretrain.annotate.config import ConfigError, ScoreConfig, validate
from arctic_pretrain.annotate.scoring import ScoreFiles, iter_scores, task_lines
from arctic_pretrain.data.documents import iter_documents

from .conftest import make_config

ROOT = Path(__file__).resolve().parents[2]


def test_byte_slices_cover_every_line_once(curated) -> None:
    refs = sorted(ref.key for ref, _ in iter_documents(curated / "documents"))
    for world in (1, 2, 3, 7, 50):
        got = [ref.key for rank in range(world) for ref, _ in task_lines(curated / "documents", rank, world)]
        assert sorted(got) == refs and len(got) == len(set(got))


def _score_script(curated: Path, out: Path, scores: Path) -> str:
    return f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from arctic_pretrain.annotate.config import ScoreConfig
from arctic_pretrain.annotate.scoring import ScoreFiles
step = ScoreFiles({str(curated / 'documents')!r}, {str(scores)!r}, {str(out / 'model')!r},
                  {str(curated / 'tokenizer')!r}, ScoreConfig(batch_size=4, buffer_chunks=4), threads=1)
list(step.run(None, 0, 1))
"""


def test_killed_scoring_resumes_with_every_file_scored_once(annotated, curated, tmp_path) -> None:
    out, _ = annotated
    scores = tmp_path / "scores"
    partial = scores / "00000.partial.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _score_script(curated, out, scores)],
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_text().count("\n") >= 6:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "scoring finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = partial.read_text().count("\n")
    with open(partial, "a") as fh:  # a kill in the middle of a write: a torn line
        fh.write('{"key": "python/g0000-r00000.jsonl:12", "sco')
    step = ScoreFiles(str(curated / "documents"), str(scores), str(out / "model"), str(curated / "tokenizer"),
                      ScoreConfig(batch_size=16, buffer_chunks=64), threads=1)
    list(step.run(None, 0, 1))
    assert not partial.exists() and (scores / "00000.jsonl").is_file()
    assert step.stats["resumed"].total == before
    keys = [r["key"] for r in iter_scores(scores)]
    assert len(keys) == len(set(keys)) == sum(1 for _ in iter_documents(curated / "documents"))
    reference = {r["key"]: r["score"] for r in iter_scores(out / "scores")}
    assert all(r["score"] == pytest.approx(reference[r["key"]], abs=1e-4) for r in iter_scores(scores))


def test_empty_unreadable_and_undecodable_files_are_counted(annotated, curated, tmp_path) -> None:
    out, _ = annotated
    docs = tmp_path / "documents" / "python"
    docs.mkdir(parents=True)
    good = next(iter_documents(curated / "documents"))[1]
    lines = [json.dumps({"text": "", "id": "empty", "metadata": {"language": "python", "repo": "r", "path": "e.py"}}),
             "{not json",
             json.dumps({"text": "x = '\udcff'\n" * 50, "id": "bad", "metadata": {"language": "python", "repo": "r",
                                                                             "path": "b.py"}}),
             json.dumps(good)]
    (docs / "g0000-r00000.jsonl").write_text("\n".join(lines) + "\n")
    step = ScoreFiles(str(tmp_path / "documents"), str(tmp_path / "scores"), str(out / "model"),
                      str(curated / "tokenizer"), ScoreConfig(batch_size=4, buffer_chunks=8), threads=1)
    list(step.run(None, 0, 1))
    records = list(iter_scores(tmp_path / "scores"))
    assert [r["status"] for r in records] == ["empty", "unreadable", "ok", "ok"]
    assert records[0]["score"] is None and records[1]["score"] is None and records[2]["score"] is not None
    assert step.stats["empty"].total == 1 and step.stats["unreadable"].total == 1
    assert step.stats["undecodable"].total == 1


def test_config_errors_name_the_key(curated, tmp_path) -> None:
    for override, key in [("select.tokens=-5", "select.tokens"), ("model.max_length=8", "model.max_length"),
                          ("step=everything", "step"), ("executor.kind=pbs", "executor.kind"),
                          ("score.buffer_chunks=2", "score.buffer_chunks"), ("model.finetune=lora", "model.finetune")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(make_config(curated, tmp_path, override))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for args, needle in [([f"curated={curated}", "+select.tokenz=5"], "select.tokenz"),
                         ([f"curated={tmp_path / 'nowhere'}"], "curated="),
                         ([f"curated={curated}", "+select.shares.python=-1"], "select.shares.python")]:
        proc = subprocess.run([sys.executable, str(ROOT / "launch" / "annotate.py"), *args,
                               f"output_dir={tmp_path / 'o'}"], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    # a misspelt key without `+` is refused by Hydra itself while composing (exit 1), naming it too
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "annotate.py"), f"curated={curated}",
                           "select.tokenz=5"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "select.tokenz" in proc.stderr


def test_executors_build(curated, tmp_path) -> None:
    from arctic_pretrain.annotate.pipeline import Annotate

    cfg = make_config(curated, tmp_path, "executor.kind=slurm", "executor.slurm.partition=gpu", "executor.tasks=8",
                      "executor.workers=-1")
    annotate = Annotate(cfg)
    score = annotate.score_executor()
    finish = annotate.finish_executor(score)
    assert type(score).__name__ == "SlurmPipelineExecutor" and score.world_size == 8
    assert finish.depends is score and finish.world_size == 1
    local = Annotate(make_config(curated, tmp_path, "executor.tasks=3", "executor.workers=2")).score_executor()
    assert type(local).__name__ == "LocalPipelineExecutor" and local.world_size == 3 and local.workers == 2
