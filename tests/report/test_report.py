"""The run report renders from a finished run, and a real headless Chromium shows a non-blank page."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_cache):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    proc = run_cli(["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}",
                    "evaluation.interval=10", "evaluation.aligned_limit=8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_in_loop_aligned_loss_lines_at_the_interval_and_phase_ends(finished_run):
    """launch/train.py attaches evaluate's callback: metrics.jsonl lines at steps 10, 20 and the phase ends."""
    from arctic_pretrain.train.metrics import read_metrics

    rows = [r for r in read_metrics(finished_run) if r.get("event") == "aligned_eval"]
    assert [(r["step"], r["phase"]) for r in rows] == [(10, "general"), (16, "general"), (20, "high_quality"),
                                                       (24, "high_quality"), (28, "synthetic")]
    assert all(0 < r["aligned_loss/humaneval"] < 20 for r in rows)


def test_report_has_every_section_and_embeds_its_figures(finished_run):
    proc = run_cli(["launch/report.py", f"run={finished_run}"])
    assert proc.returncode == 0, proc.stderr
    page = (finished_run / "report.html").read_text()
    for title in ("Training", "Curation", "Annotator selection", "Synthesis", "Evaluation", "Benchmark-aligned loss",
                  "Provenance"):
        assert f"<h2>{title}" in page, title
    assert page.count("data:image/png;base64,") >= 4  # loss, lr/throughput, curriculum, aligned loss: self-contained
    assert 'alt="benchmark-aligned loss along training"' in page
    assert "src=\"http" not in page and "<script" not in page
    assert "Arctic-SnowCoder-1.3B" in page  # the paper's rows beside the run's
    assert "no curation report" in page  # the demo corpus has none: said, not hidden
    assert "recorded at training start" in page  # the code's commit, from the run's history.jsonl


def test_report_shows_each_phase_export_evaluated(finished_run, tmp_path):
    results = {"models": [{"name": phase, "step": step, "consumed_tokens": step * 1024,
                           "tasks": {"humaneval": {"pass@1": rate, "problems": 2}},
                           "aligned": {"humaneval": {"loss": loss, "documents": 2}}}
                          for phase, step, rate, loss in (("general", 16, 0.0, 2.5), ("synthetic", 28, 0.5, 1.25))]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "report.html"
    assert run_cli(["launch/report.py", f"run={finished_run}", f"out={out}", f"eval={tmp_path}"]).returncode == 0
    page = out.read_text()
    assert "<td>synthetic</td><td>28</td>" in page and "<td>50</td>" in page  # pass@1 in percent
    assert "<th>aligned loss: humaneval</th>" in page and "<td>1.25</td>" in page
    assert 'alt="benchmark-aligned loss by phase"' in page


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = run_cli(["launch/report.py", f"run={tmp_path}"])
    assert proc.returncode == 2 and "not a training run directory" in proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_report_screenshot_is_not_blank(finished_run, tmp_path):
    import matplotlib.image as mpimg

    html = finished_run / "report.html"
    if not html.is_file():
        assert run_cli(["launch/report.py", f"run={finished_run}"]).returncode == 0
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2400",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = mpimg.imread(shot)[..., :3]
    ink = (pixels.mean(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert ink > 0.03, f"screenshot is nearly blank ({ink:.3%} ink)"
    colour = (pixels.max(axis=2) - pixels.min(axis=2) > 0.2).mean()  # the plots' coloured lines and bars
    assert colour > 0.002, f"no figure colours in the screenshot ({colour:.3%})"
