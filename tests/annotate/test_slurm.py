"""Annotate on SLURM (tests/support/fake_slurm stands in for the scheduler): the classifier trains as a job, then
scoring and select + report run after it in one chain; a rerun while the jobs are queued
submits nothing (refused, or with executor.wait=true it waits for them); a waiting run returns only once the
scoring array and the finish job (select + report) have written the selection and the manifest, the
pipeline's `done:` file; no --qos is passed when executor.slurm.qos is None."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from arctic_pretrain.annotate.config import ConfigError

from .conftest import make_config

ROOT = Path(__file__).resolve().parents[2]
FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"


def test_slurm_submits_once_and_wait_returns_once_the_selection_is_written(annotated, curated, tmp_path,
                                                                         monkeypatch) -> None:
    from arctic_pretrain.annotate import run
    from arctic_pretrain.annotate.scoring import iter_scores

    local_out, _ = annotated
    out, state = tmp_path / "hq", tmp_path / "slurm-state"
    # same train config: the training data is reused; the classifier trains as a SLURM job of its own
    shutil.copytree(local_out / "training_data", out / "training_data")
    # the venv's bin folder on PATH, as an activated environment has it (slurm_arguments also finds
    # launch_pickled_pipeline next to sys.executable when it is not)
    path = os.pathsep.join([str(FAKE_SLURM), str(Path(sys.executable).parent), os.environ["PATH"]])
    for key, value in {"PATH": path, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "FAKE_SLURM_STATE": str(state),
                       "FAKE_SLURM_PARTITIONS": "cpu", "FAKE_SLURM_IDLE_S": "1"}.items():
        monkeypatch.setenv(key, value)
    slurm = ("executor.kind=slurm", "executor.slurm.partition=cpu", "executor.tasks=2", "executor.workers=-1",
             "executor.slurm.cpus_per_task=1")
    (out / "manifest.json").write_text("{}")  # an earlier run's record: must not pass for this one's
    try:
        assert run(make_config(curated, out, *slurm)) == out  # submits and returns
        assert not (out / "manifest.json").exists()
        submitted = (state / "submissions.jsonl").read_text()
        # a rerun while the jobs are queued: refused without executor.wait; with it, it waits for those jobs
        with pytest.raises(ConfigError, match="still queued or running"):
            run(make_config(curated, out, *slurm))
        assert run(make_config(curated, out, *slurm, "executor.wait=true")) == out
        assert (state / "submissions.jsonl").read_text() == submitted  # nothing submitted twice
        # checked the moment run returns: the finish job's outputs are all there
        manifest = json.loads((out / "manifest.json").read_text())
        selection = json.loads((out / "selection.json").read_text())
    finally:
        pidfile = state / "runner.pid"  # the fake's runner exits when idle; stop it if the test failed midway
        if pidfile.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert selection["languages"] and (out / "all" / "manifest.json").is_file()
    assert (out / "report" / "report.json").is_file()
    assert manifest["outputs"]["scores"]["files"] == len({r["key"] for r in iter_scores(local_out / "scores")}) > 0
    assert {r["key"] for r in iter_scores(out / "scores")} == {r["key"] for r in iter_scores(local_out / "scores")}

    subs = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    main = [s for s in subs if "launch_pickled_pipeline" in Path(s["script"]).read_text()]  # not merge_stats
    by_name = {s["name"]: s for s in main}
    assert [s["name"] for s in main] == ["annotate-train", "annotate-score", "annotate-finish"]  # one chain
    assert len(by_name["annotate-train"]["array"]) == 1 and not by_name["annotate-train"]["dependency"]
    assert len(by_name["annotate-score"]["array"]) == 2 and len(by_name["annotate-finish"]["array"]) == 1
    assert by_name["annotate-score"]["dependency"] == f"afterok:{by_name['annotate-train']['job_id']}"
    assert by_name["annotate-finish"]["dependency"] == f"afterok:{by_name['annotate-score']['job_id']}"
    assert json.loads((out / "model" / "metrics.json").read_text())["validation"]["roc_auc"] > 0.9
    # executor.slurm.qos is None: the cluster's default QOS, no --qos (datatrove's own default is "normal")
    assert all(not any(d.startswith(("--qos", "-q")) for d in s["directives"]) for s in subs), subs[0]["directives"]
    assert all(s["partition"] == "cpu" for s in subs)
    # a failed scoring job cancels the finish job instead of leaving it pending (the shared slurm_arguments)
    assert all("--kill-on-invalid-dep=yes" in s["directives"] for s in main)
