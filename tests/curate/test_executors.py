"""The same curation config under datatrove's SLURM and Ray executors, by changing the `executor` group.

SLURM: this machine has no scheduler, so tests/support/fake_slurm (sbatch/squeue/scancel/srun/scontrol)
stands in for it and speaks the protocol datatrove uses: sbatch scripts with #SBATCH directives, job
arrays with SLURM_ARRAY_* variables, srun job steps, --dependency=afterok chains, "Submitted batch job N".
Ray: a real local Ray (skipped where ray is not installed). Both must produce the local executor's outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arctic_pretrain.curate.pipeline import run
from arctic_pretrain.data.shards import Manifest

from .conftest import INCLUDE, STDLIB, make_config, stdlib_file

ROOT = Path(__file__).resolve().parents[2]
FAKE_SLURM = Path(__file__).resolve().parents[1] / "support" / "fake_slurm"
# small: 2 tasks per parallel stage, 2 LSH bands x 2 rows (threshold ~0.71), a 500-token BPE
SMALL = ["executor.tasks=2", "group.buckets=2", "tokenize.train_vocab_size=500", "tokenize.train_sample_mb=1",
         "dedup.num_bands=2", "dedup.rows_per_band=2", "progress=false"]
STAGE_TASKS = {"plan": 1, "curate": 2, "exact": 2, "signatures": 2, "buckets": 2, "clusters": 1, "clean": 2,
               "tokenizer": 1, "tokenize": 2, "finalize": 1}
TIMING_KEYS = ("stage_time_s", "stage_time_share", "config_hash")


def _corpus(root: Path) -> Path:
    """Real code: the json package (Python), a few CPython headers (C), an exact and a near copy."""
    code = root / "code"
    shutil.copytree(STDLIB / "json", code / "json", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (code / "headers").mkdir()
    for h in sorted(INCLUDE.glob("*.h"))[:6]:
        shutil.copy(h, code / "headers" / h.name)
    fork = code / "fork"
    fork.mkdir()
    (fork / "encoder.py").write_text(stdlib_file("json/encoder.py"))
    lines = stdlib_file("json/decoder.py").splitlines()
    (fork / "decoder.py").write_text("\n".join(x + "  # fork" if i % 15 == 0 else x for i, x in enumerate(lines)))
    return code


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The corpus and its curation with the local executor."""
    root = tmp_path_factory.mktemp("executors")
    code = _corpus(root)
    run(make_config([str(code)], root / "local", *SMALL))
    return code, root / "local"


def _cli(*args: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "curate.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def _fake_slurm_env(state: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_STATE": str(state), "FAKE_SLURM_PARTITIONS": "cpu,gpu", "FAKE_SLURM_IDLE_S": "1"}


def _squeue(env: dict, *args: str) -> list[list[str]]:
    proc = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, env=env, check=True)
    return [line.split() for line in proc.stdout.splitlines()]


def _wait_queue_empty(env: dict, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _squeue(env, "--format=%i %j %T"):
        assert time.monotonic() < deadline, _squeue(env, "--format=%i %j %T")
        time.sleep(0.5)


@pytest.fixture
def fake_slurm(tmp_path: Path):
    state = tmp_path / "slurm-state"
    yield _fake_slurm_env(state)
    pidfile = state / "runner.pid"  # the fake's runner exits when idle; stop it if a test failed midway
    if pidfile.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def _documents(out: Path) -> dict[str, str]:
    return {r["id"]: r["text"] for f in sorted((out / "documents").glob("*/*.jsonl"))
            for r in map(json.loads, f.read_text().splitlines())}


def _assert_same_outputs(out: Path, ref: Path) -> None:
    assert _documents(out) == _documents(ref) and len(_documents(ref)) > 5
    langs = sorted(p.name for p in (ref / "tokens").iterdir())
    assert langs == ["c", "python"] and sorted(p.name for p in (out / "tokens").iterdir()) == langs
    for lang in langs:
        a, b = Manifest.read(out / "tokens" / lang), Manifest.read(ref / "tokens" / lang)
        assert (a.tokens, a.documents) == (b.tokens, b.documents) and b.tokens > 0
        shards = sorted(p.name for p in (ref / "tokens" / lang).iterdir() if p.suffix in (".bin", ".npy"))
        for name in shards:
            assert (out / "tokens" / lang / name).read_bytes() == (ref / "tokens" / lang / name).read_bytes(), name
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (ref / "tokenizer" / "tokenizer.json").read_bytes()
    report, expected = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    for r in (report, expected):
        for key in TIMING_KEYS:
            r.pop(key)
        for row in r["funnel"]:
            row.pop("time_s")
    assert report == expected
    assert expected["removals"]["exact_duplicate"] >= 1 and expected["removals"]["near_duplicate"] >= 1


def test_slurm_executor_matches_local(reference, fake_slurm, tmp_path: Path) -> None:
    code, ref = reference
    env, out = fake_slurm, tmp_path / "slurm"
    args = [f"inputs=[{code}]", f"output_dir={out}", "executor=slurm", "executor.slurm.partition=cpu", *SMALL]
    submit = _cli(*args, env=env, cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr[-3000:]
    assert "submitted 10 SLURM jobs" in submit.stdout and str(out / "report.json") in submit.stdout
    # the chain is still queued: a second submission to the same folder is refused, nothing is resubmitted
    again = _cli(*args, env=env, cwd=tmp_path)
    assert again.returncode == 2 and "still queued or running" in again.stderr, again.stderr[-3000:]
    _wait_queue_empty(env)
    _assert_same_outputs(out, ref)

    # what was submitted: one array job per stage, each after the previous one (afterok), on the partition
    state = Path(env["FAKE_SLURM_STATE"])
    subs = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    main = [s for s in subs if "launch_pickled_pipeline" in Path(s["script"]).read_text()]
    merge = [s for s in subs if "merge_stats" in Path(s["script"]).read_text()]
    assert len(subs) == len(main) + len(merge) == 20
    assert [s["name"] for s in main] == [f"curate-{stage}" for stage in STAGE_TASKS]
    assert [len(s["array"]) for s in main] == list(STAGE_TASKS.values())
    assert all(s["partition"] == "cpu" and s["array_limit"] is None for s in subs)
    assert all("--kill-on-invalid-dep=yes" in s["directives"] and "--time=24:00:00" in s["directives"] for s in subs)
    assert main[0]["dependency"] == ""
    for before, after in zip(main, main[1:], strict=False):
        assert after["dependency"] == f"afterok:{before['job_id']}"
    for stage_job, stats_job in zip(main, merge, strict=True):
        assert stats_job["dependency"] == f"afterok:{stage_job['job_id']}"
    jobs = {s["job_id"]: json.loads((state / "jobs" / f"{s['job_id']}.json").read_text()) for s in main}
    for before, after in zip(main, main[1:], strict=False):  # the dependency held when the jobs ran
        ended = max(t["end"] for t in jobs[before["job_id"]]["tasks"].values())
        assert min(t["start"] for t in jobs[after["job_id"]]["tasks"].values()) >= ended
    assert json.loads((out / "logs" / "slurm_jobs.json").read_text())["jobs"] == {
        stage: str(s["job_id"]) for stage, s in zip(STAGE_TASKS, main, strict=True)}
    for stage, s in zip(STAGE_TASKS, main, strict=True):  # every array task wrote its SLURM log
        logs = out / "logs" / stage / "slurm_logs"
        for idx in s["array"]:
            assert f"Processing done for rank={idx}" in (logs / f"{s['job_id']}_{idx}.out").read_text()

    # a finished run has nothing left to submit
    rerun = _cli(*args, env=env, cwd=tmp_path)
    assert rerun.returncode == 0 and "nothing to submit" in rerun.stdout, rerun.stderr[-3000:]
    waited = _cli(*args, "executor.wait=true", env=env, cwd=tmp_path)  # checks every stage's markers
    assert waited.returncode == 0 and f"curated: {out}/report.json" in waited.stdout, waited.stderr[-3000:]
    assert len((state / "submissions.jsonl").read_text().splitlines()) == 20


def test_slurm_failed_stage_cancels_the_rest(fake_slurm, tmp_path: Path) -> None:
    """Every file is filtered out, so the tokenizer job fails (nothing to train on): the jobs after it are
    cancelled (afterok can never be satisfied) and executor.wait=true reports the failed stage."""
    repo = tmp_path / "code" / "repo"
    repo.mkdir(parents=True)
    (repo / "gen.py").write_text("# This file is generated automatically. DO NOT EDIT.\n" + stdlib_file("json/tool.py"))
    env = fake_slurm
    proc = _cli(f"inputs=[{tmp_path / 'code'}]", f"output_dir={tmp_path / 'out'}", "executor=slurm",
                "executor.slurm.partition=gpu", "executor.wait=true", "dedup.near=false", *SMALL, env=env,
                cwd=tmp_path)
    assert proc.returncode == 1 and "stage tokenizer" in proc.stderr and "(tokenizer) ended FAILED" in proc.stderr, \
        proc.stderr[-3000:]
    _wait_queue_empty(env)
    states: dict[str, str] = {}
    for _, name, state in _squeue(env, "--states=all", "--format=%i %j %T"):
        states.setdefault(name, state)  # a stage's array job, not its merge_stats job (submitted after it)
    assert states["curate-clean"] == "COMPLETED" and states["curate-tokenizer"] == "FAILED"
    assert states["curate-tokenize"] == states["curate-finalize"] == "CANCELLED"
    assert not (tmp_path / "out" / "report.json").exists()


def test_ray_executor_matches_local(reference, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray executor test needs `pip install -e .[ray]`")
    code, ref = reference
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, not a cluster
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    proc = _cli(f"inputs=[{code}]", f"output_dir={tmp_path / 'ray'}", "executor=ray", *SMALL, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_outputs(tmp_path / "ray", ref)
    print(f"ray run: {time.perf_counter() - start:.1f}s")
