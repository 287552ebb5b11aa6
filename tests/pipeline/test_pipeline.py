"""The whole recipe as one command, at test size: curate -> annotate -> train phases 1-2 -> synthesize with
the run's own phase-2 export -> train phase 3 -> evaluate -> report, every step a real command."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_kernel_sandbox, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    require_kernel_sandbox()  # its evaluate step runs model code, which needs the kernel's confinement
    work = tmp_path_factory.mktemp("recipe") / "tiny"
    proc = run_cli(["launch/pipeline.py", "experiment=tiny", f"workdir={work}"], timeout=1800,
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return work, proc


def test_every_step_ran_and_wrote_its_outputs(recipe):
    work, proc = recipe
    summary = json.loads((work / "pipeline.json").read_text())
    steps = ["curate", "annotate", "train_phases_1_2", "synthesize", "train", "evaluate"]
    assert list(summary["stages"]) == steps
    assert {s["status"] for s in summary["stages"].values()} == {"done"}
    data = work / "data"
    assert json.loads((data / "report.json").read_text())["tokens"] > 0
    selection = json.loads((data / "high_quality" / "selection.json").read_text())
    assert selection["languages"] and (data / "high_quality" / "all" / "manifest.json").is_file()
    synthesis = json.loads((data / "synthetic" / "synthesis.json").read_text())
    assert synthesis["kept"] > 0 and (data / "synthetic" / "manifest.json").is_file()
    assert "everything is under" in proc.stdout


def test_phase_3_trains_on_the_synthesized_source_in_the_same_run(recipe):
    work, _ = recipe
    rows = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in rows if "event" not in r]
    assert phases[0] == "general" and phases[-1] == "synthetic"
    steps = [r["step"] for r in rows if "event" not in r]
    assert steps == sorted(set(steps))  # one run, resumed: no step trained twice
    assert any("loss/synthetic" in r for r in rows)  # the synthesized documents were read
    for phase in ("general", "high_quality", "synthetic"):
        assert (work / "train" / "export" / phase / "arctic_export.json").is_file()
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["models"]  # one row per phase export
    assert (work / "report.html").is_file()


def test_a_rerun_skips_complete_steps(recipe):
    work, _ = recipe
    proc = run_cli(["launch/pipeline.py", "experiment=tiny", f"workdir={work}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((work / "pipeline.json").read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"skipped (complete)"}


def test_a_failing_step_stops_the_pipeline_naming_it(tmp_path):
    proc = run_cli(["launch/pipeline.py", "experiment=tiny", f"workdir={tmp_path / 'w'}", "demo_inputs_mb=0.05",
                    f"stages.curate.args=['inputs=[/nonexistent/input]','output_dir={tmp_path / 'w' / 'data'}']"],
                   timeout=600)
    assert proc.returncode == 1
    assert "stage 'curate' failed" in proc.stderr and "logs/curate.log" in proc.stderr
    assert not (tmp_path / "w" / "data" / "high_quality").exists()  # nothing after it ran
