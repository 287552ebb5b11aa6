"""The classifier's training job: a SIGKILL after a checkpoint resumes from it (not from step 0), the frozen
encoder option trains the head only, names that cannot load fail before any job is submitted, and the
training data's positives are decontaminated (dropped and counted) and readable in the instruction layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_pretrain.annotate.config import ConfigError, PositiveSource
from tests.conftest import HUMANEVAL_0_SOLUTION

from .conftest import make_config

ROOT = Path(__file__).resolve().parents[2]
FAKE_SLURM = ROOT / "tests" / "support" / "fake_slurm"
FAST = ("step=train", "model.epochs=2", "model.save_steps=2", "model.max_length=64")


def _train_script(curated: Path, out: Path) -> str:
    return f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from tests.annotate.conftest import make_config
from arctic_pretrain.annotate import run
run(make_config(Path({str(curated)!r}), Path({str(out)!r}), *{FAST!r}))
"""


def test_killed_classifier_training_resumes_from_its_checkpoint(curated, tmp_path) -> None:
    from arctic_pretrain.annotate import run
    from arctic_pretrain.annotate.classifier import complete_checkpoints

    out = tmp_path / "hq"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "ARCTIC_PRETRAIN_FAULTS": "kill_at_step=4"}
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-c", _train_script(curated, out)], env=env, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == -9, log.read_text()[-3000:]  # SIGKILLed right after checkpoint 4 was written
    assert not (out / "model").exists()
    checkpoints = complete_checkpoints(out / "model_checkpoints")
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"] == 4
    data = (out / "training_data" / "manifest.json").stat().st_mtime_ns
    (out / "model_checkpoints" / "checkpoint-6").mkdir()  # a kill while saving: no trainer_state.json yet
    (out / "model_checkpoints" / "checkpoint-6" / "model.safetensors").write_bytes(b"torn")
    run(make_config(curated, out, *FAST))
    metrics = json.loads((out / "model" / "metrics.json").read_text())["train"]
    assert metrics["resumed_from"] == "checkpoint-4" and metrics["start_step"] == 4
    assert metrics["steps"] > 4 and metrics["steps"] % 2 == 0  # finished: every epoch of the same plan
    assert (out / "training_data" / "manifest.json").stat().st_mtime_ns == data  # the same examples, not redrawn
    assert not (out / "model_checkpoints").exists()  # the published model supersedes the checkpoints
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out / "model").config.num_labels == 1


def test_frozen_encoder_trains_only_the_linear_head(annotated, tmp_path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from arctic_pretrain.annotate.classifier import TrainClassifier
    from arctic_pretrain.annotate.encoder import resolve_encoder

    done, cfg = annotated
    head = make_config(Path(cfg.curated), tmp_path, "model.finetune=head", "model.epochs=1", "model.max_length=64",
                       "model.learning_rate=1e-2")
    metrics = TrainClassifier(head, done / "training_data", tmp_path / "model", config_hash="h").run()
    assert metrics["train"]["finetune"] == "head" and metrics["train"]["steps"] >= 1
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").state_dict()
    base = AutoModelForSequenceClassification.from_pretrained(resolve_encoder(head.model.encoder), num_labels=1)
    for name, value in base.state_dict().items():
        if name.startswith("bert."):
            assert torch.equal(value, trained[name]), name  # the encoder (pooler included) did not move
    assert not torch.equal(base.state_dict()["classifier.weight"], trained["classifier.weight"])


@pytest.mark.parametrize(("override", "key", "value"), [
    ("model.encoder=/nonexistent/encoder", "model.encoder", "/nonexistent/encoder"),
    ("model.encoder=nobody/no-such-encoder", "model.encoder", "nobody/no-such-encoder"),
    ("positives.0.source=hf:nobody/no-such-dataset", "positives[0].source", "hf:nobody/no-such-dataset"),
    ("positives.0.source=/nonexistent/positives.jsonl", "positives[0].source", "/nonexistent/positives.jsonl"),
])
def test_a_name_that_cannot_load_fails_before_any_job_is_submitted(curated, tmp_path, monkeypatch, override, key,
                                                                   value) -> None:
    from arctic_pretrain.annotate import run

    state = tmp_path / "slurm-state"
    for name, setting in {"PATH": os.pathsep.join([str(FAKE_SLURM), os.environ["PATH"]]), "HF_HUB_OFFLINE": "1",
                          "FAKE_SLURM_STATE": str(state), "FAKE_SLURM_PARTITIONS": "gpu"}.items():
        monkeypatch.setenv(name, setting)
    cfg = make_config(curated, tmp_path / "hq", "executor.kind=slurm", "executor.slurm.partition=gpu")
    if override.startswith("positives"):
        cfg.positives[0].source = override.split("=", 1)[1]
    else:
        cfg = make_config(curated, tmp_path / "hq", "executor.kind=slurm", "executor.slurm.partition=gpu", override)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert f"{key}={value!r}" in str(err.value)
    assert not (state / "submissions.jsonl").exists()  # nothing reached the scheduler
    assert not (tmp_path / "hq" / "training_data").exists()


def test_a_contaminated_positive_is_dropped_and_counted(curated, tmp_path) -> None:
    from arctic_pretrain.annotate.training_data import BuildTrainingData, load_split

    positives = tmp_path / "positives.jsonl"
    rows = [{"content": "def has_close_elements(numbers, threshold):\n" + HUMANEVAL_0_SOLUTION, "id": "planted"}]
    rows += [{"content": Path(f).read_text(), "id": Path(f).name} for f in sorted(Path(__file__).parent.glob("*.py"))]
    positives.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_config(curated, tmp_path / "out")
    cfg.positives[0].source = str(positives)
    manifest = BuildTrainingData(cfg, curated, tmp_path / "out").run()
    decont = manifest["decontamination"]
    assert manifest["dropped"]["contaminated"] == 1 and decont["dropped"] == {"stdlib_documented": 1}
    assert decont["matches"][0]["task_id"] == "HumanEval/0" and decont["matches"][0]["id"] == "planted"
    # HumanEval and MBPP(+) by default; where evalplus's files are not on the machine they are named as
    # unavailable, not silently absent
    assert [b.name for b in cfg.decontamination.benchmarks] == ["humaneval", "mbpp", "mbpp_plus", "humaneval_plus"]
    assert "humaneval" in decont["benchmarks"]
    assert set(decont["benchmarks"]) | set(decont["unavailable"]) == {"humaneval", "mbpp", "mbpp_plus", "humaneval_plus"}
    ids = set(load_split(tmp_path / "out" / "training_data", "train")["id"]) | \
        set(load_split(tmp_path / "out" / "training_data", "validation")["id"])
    assert "planted" not in ids and manifest["positives_read"]["stdlib_documented"] == len(rows)


def test_instruction_positives_read_by_field_name_in_their_hub_layouts(tmp_path) -> None:
    """Magicoder-OSS-Instruct-75K (problem, solution, ...) as a JSONL file; self-oss-instruct-sc2
    (instruction, response, ...) as a hub snapshot folder of parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from arctic_pretrain.annotate.training_data import load_positives

    magicoder = tmp_path / "magicoder.jsonl"
    magicoder.write_text(json.dumps({"lang": "python", "raw_index": 7, "index": 0, "seed": "x = 1",
                                     "openai_fingerprint": "fp", "problem": "Write add.",
                                     "solution": "def add(a, b):\n    return a + b"}) + "\n")
    snapshot = tmp_path / "sc2" / "data"
    snapshot.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"fingerprint": None, "sha1": "s", "seed": "def f(): pass", "id": 3,
                                          "concepts": ["c"], "prompt": "p", "instruction": "Write f.",
                                          "response": "def f():\n    return 1"}]),
                   snapshot / "train-00000-of-00001.parquet")
    got = load_positives(PositiveSource(name="m", source=str(magicoder), fields=["problem", "solution"]), 0)
    assert [e.text for e in got] == ["Write add.\n\ndef add(a, b):\n    return a + b"]
    got = load_positives(PositiveSource(name="s", source=str(tmp_path / "sc2"), fields=["instruction", "response"],
                                        suffixes=[".parquet"]), 0)
    assert [e.text for e in got] == ["Write f.\n\ndef f():\n    return 1"] and got[0].id == "3"
    with pytest.raises(ValueError, match=r"positives\[s\].fields=\['problem'\]"):
        load_positives(PositiveSource(name="s", source=str(tmp_path / "sc2"), fields=["problem"],
                                      suffixes=[".parquet"]), 0)
