"""Resume users can trust: SIGKILL anywhere, world-size changes, branching, guards, signals.

Real `deepspeed` runs on CPU in fp32 with the tiny model. Kills are real SIGKILLs, injected at exact
points through the test-only ARCTIC_PRETRAIN_FAULTS environment (rank 0 kills itself; the launcher takes
the rest down).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from arctic_pretrain.train.export import consolidated_state_dict
from arctic_pretrain.train.metrics import read_metrics
from tests.conftest import ROOT
from tests.train.conftest import launch, leftover_shm

pytestmark = pytest.mark.slow


def losses(run_dir):
    return [(r["step"], r["consumed_tokens"], r["loss"]) for r in read_metrics(run_dir)]


def first_difference(run_dir, reference) -> str:
    """Where a rerun left the reference: the step, its loss and grad norm in both (empty when equal)."""
    got, ref = read_metrics(run_dir), read_metrics(reference)
    for a, b in zip(got, ref, strict=False):
        if (a["step"], a["consumed_tokens"], a["loss"]) != (b["step"], b["consumed_tokens"], b["loss"]):
            return (f"first difference at step {a['step']}: loss {a['loss']!r} vs {b['loss']!r}, grad_norm "
                    f"{a['grad_norm']!r} vs {b['grad_norm']!r}; launch logs in {run_dir.parent}")
    return "" if len(got) == len(ref) else f"{len(got)} metric lines vs {len(ref)}"


@pytest.fixture
def reference(two_rank_run):
    """The uninterrupted 28-step 2-rank run every resume is compared with (tests/train/conftest.py)."""
    return two_rank_run


def latest(run_dir) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("step,point,survivor", [
    (10, "after_step", "step_00000008"),         # mid-phase
    (16, "phase_transition", "step_00000016"),   # phase-end checkpoint published, export not yet written
    (12, "during_save", "step_00000008"),        # checkpoint files written, not yet published
])
def test_sigkill_then_rerun_is_bit_exact(tmp_path, demo_cache, reference, step, point, survivor):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, demo_cache, faults=f"kill_at_step={step},kill_point={point}", expect_ok=False)
    assert proc.returncode != 0
    assert latest(run_dir) == survivor
    if point == "during_save":
        assert (run_dir / "checkpoints" / "step_00000012").is_dir()  # written ...
        assert not (run_dir / "checkpoints" / "step_00000012" / "COMPLETE").exists()  # ... never published
    launch(run_dir, demo_cache)  # the same command again
    assert losses(run_dir) == losses(reference), first_difference(run_dir, reference)  # to the last bit
    assert leftover_shm(run_dir) == []  # not even from the killed launch
    for phase in ("general", "high_quality", "synthetic"):
        assert (run_dir / "export" / phase / "model.safetensors").is_file()


def test_pruning_keeps_phase_ends(reference):
    tags = sorted(p.parent.name for p in (reference / "checkpoints").glob("*/COMPLETE"))
    # keep_last=3 interval checkpoints (12, 20, 28 are phase ends or interval...), all phase ends
    states = {t: json.loads((reference / "checkpoints" / t / "trainer_state.json").read_text()) for t in tags}
    assert {s["phase_end"] for s in states.values() if s["phase_end"]} == {"general", "high_quality", "synthetic"}
    # interval checkpoints 4, 8, 12, 20 (16, 24, 28 are phase ends): the last keep_last=3 of them stay
    assert sorted(t for t, s in states.items() if not s["phase_end"]) == [
        "step_00000008", "step_00000012", "step_00000020"]


def continue_on_one_rank(run_dir, demo_cache, reference, stage) -> None:
    """Resume a 2-rank run on 1 rank to step 12: the same samples in the same order as the reference."""
    proc = launch(run_dir, demo_cache, f"deepspeed={stage}", "max_steps=12", ranks=1)
    assert "saved by 2 ranks, now 1" in proc.stdout + proc.stderr
    got, ref = losses(run_dir), losses(reference)[:12]
    assert [r[:2] for r in got] == [r[:2] for r in ref]  # same steps, same token accounting
    for (_, _, a), (_, _, b) in zip(got, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-3)  # only the reduction order (and ZeRO-3 partitioning) differs
    state = json.loads((run_dir / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    ref_state = json.loads((reference / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert state["sampler"] == ref_state["sampler"]  # no sample skipped or read twice across the change


# ZeRO-1 and ZeRO-3 here; ZeRO-2 in test_one_ranks_signal_stops_every_rank (its 2-rank run is that test's).
@pytest.mark.parametrize("stage", ["zero1", "zero3"])
def test_two_ranks_to_one(tmp_path, demo_cache, reference, stage, request):
    run_dir = tmp_path / "run"
    if stage == "zero3":  # the session's 2-rank ZeRO-3 run (also exported by test_export.py), copied
        shutil.copytree(request.getfixturevalue("zero3_two_rank_run"), run_dir)
    else:
        launch(run_dir, demo_cache, f"deepspeed={stage}", "max_steps=8")
    continue_on_one_rank(run_dir, demo_cache, reference, stage)


def test_one_ranks_signal_stops_every_rank_then_zero2_resumes_on_one_rank(tmp_path, demo_cache, reference):
    """SIGUSR1 reaches rank 1 only (rank 0, which writes metrics and publishes checkpoints, never sees it):
    the step's all-reduce carries it, so both ranks finish step 6, save it and exit 0. The ZeRO-2 checkpoint
    saved by 2 ranks then continues on 1 rank (the world-size change for ZeRO-2)."""
    run_dir = tmp_path / "run"
    proc = launch(run_dir, demo_cache, "deepspeed=zero2", faults="signal_at_step=6,signal_rank=1")
    assert "stop signal received: saved step 6" in proc.stdout + proc.stderr
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 7))
    assert latest(run_dir) == "step_00000006"
    continue_on_one_rank(run_dir, demo_cache, reference, "zero2")


def test_one_rank_to_two(tmp_path, demo_cache, reference):
    run_dir = tmp_path / "run"
    launch(run_dir, demo_cache, "max_steps=8", ranks=1)
    launch(run_dir, demo_cache, "max_steps=12")
    got, ref = losses(run_dir), losses(reference)[:12]
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    assert got[-1][2] == pytest.approx(ref[-1][2], rel=2e-4)


def test_branch_from_a_phase_end(tmp_path, demo_cache, reference):
    run_dir = tmp_path / "branch"
    launch(run_dir, demo_cache, f"init_from={reference / 'checkpoints' / 'step_00000016'}",
           "curriculum.phases.high_quality.tokens=16K", "init_reset_optimizer=true", ranks=1)
    rows = read_metrics(run_dir)
    assert rows[0]["step"] == 17 and rows[0]["phase"] == "high_quality"
    assert rows[-1]["step"] == 16 + 16 + 4  # the longer phase-2 budget moved the boundary
    state = json.loads((run_dir / "checkpoints" / latest(run_dir) / "trainer_state.json").read_text())
    assert state["init_from"].endswith("step_00000016")
    # init_reset_optimizer: AdamW starts afresh at the branch (its step count too), the source's state is 16 steps
    assert adam_steps(reference / "checkpoints" / "step_00000016") == {16}
    assert adam_steps(run_dir / "checkpoints" / "step_00000020") == {4}


def adam_steps(tag_dir) -> set[int]:
    """The AdamW step counts stored in a checkpoint's optimizer states (every parameter's)."""
    found: set[int] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            if "exp_avg" in x and "step" in x:
                found.add(int(x["step"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    for f in sorted(tag_dir.rglob("*optim_states.pt")):
        walk(torch.load(f, map_location="cpu", weights_only=False))
    assert found, f"no AdamW state in {tag_dir}"
    return found


def test_branch_mid_phase_restarts_schedule(tmp_path, demo_cache, reference):
    run_dir = tmp_path / "branch"
    launch(run_dir, demo_cache, f"init_from={reference}/checkpoints/step_00000008", "init_reset_schedule=true",
           "max_steps=10", ranks=1)
    rows = read_metrics(run_dir)
    ref = {r["step"]: r for r in read_metrics(reference)}
    assert rows[0]["step"] == 9
    assert rows[0]["lr"] == pytest.approx(3e-3 / 8)  # warmup begins again (capped at the 8 steps left)
    assert ref[9]["lr"] == pytest.approx(3e-3 * 9 / 10)


def test_nan_step_is_skipped_and_counted(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    launch(run_dir, demo_cache, "checkpoint.interval=1", "checkpoint.keep_last=10",
           "max_steps=5", faults="nan_loss_at_step=3")
    rows = {r["step"]: r for r in read_metrics(run_dir)}
    assert rows[3]["skipped"] == "nonfinite" and rows[3]["skipped_nonfinite"] == 1
    assert rows[5]["skipped_nonfinite"] == 1 and rows[5]["loss"] is not None
    ckpts = run_dir / "checkpoints"
    before, after, next_ = (consolidated_state_dict(ckpts / f"step_0000000{s}") for s in (2, 3, 4))
    for name in before:
        assert torch.equal(before[name], after[name]), name  # the poisoned step changed nothing
    assert any(not torch.equal(after[n], next_[n]) for n in after)  # the next step trains again


def test_consecutive_bad_steps_stop_after_saving(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, demo_cache, "guards.max_consecutive_bad=2", ranks=1, expect_ok=False,
                  faults="nan_loss_at_step=3,nan_loss_count=50")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "2 consecutive steps with a non-finite loss" in proc.stderr
    assert latest(run_dir) == "step_00000004"  # saved before stopping
    assert read_metrics(run_dir)[-1]["skipped_nonfinite"] == 2


def test_spike_guard_skips_a_spike(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    launch(run_dir, demo_cache, "guards.spike_zscore=6", "guards.spike_window=8", "guards.spike_min_window=4",
           "max_steps=12", ranks=1, faults="spike_at_step=10")
    rows = {r["step"]: r for r in read_metrics(run_dir)}
    assert rows[10]["skipped"] == "spike"
    assert [r["step"] for r in rows.values() if r["skipped"]] == [10]
    assert rows[12]["skipped_spike"] == 1 and rows[12]["skipped_nonfinite"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # SIGUSR1: test_one_ranks_signal_stops_every_rank...
def test_stop_signal_saves_and_exits_cleanly(tmp_path, demo_cache, signum):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}",
           "checkpoint.interval=1000", "curriculum.phases.general.tokens=2M"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "stop signal received" in out
    step = read_metrics(run_dir)[-1]["step"]
    assert latest(run_dir) == f"step_{step:08d}"


@pytest.fixture(scope="module")
def one_thread_run(tmp_path_factory, demo_cache):
    """The first 12 steps of ``two_rank_run`` (2 ranks, ZeRO-1, checkpoints at 4, 8, 12), each rank computing
    with one CPU thread instead of two."""
    run_dir = tmp_path_factory.mktemp("one-thread") / "run"
    launch(run_dir, demo_cache, "max_steps=12", env={"OMP_NUM_THREADS": "1"})
    return run_dir


def test_deterministic_results_do_not_depend_on_the_cpu_thread_count(one_thread_run, two_rank_run):
    """Issue 16's signature: MKL splits the lm_head GEMM's 4096-long reduction across its threads, so with
    1 or 2 threads a step's loss is identical and its gradients are not (the losses part within a few
    steps); deterministic mode puts MKL in strict CNR mode, which makes a GEMM's bits independent of that
    count."""
    got = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(one_thread_run)]
    assert len(got) == 12
    assert got == [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(two_rank_run)][:12], \
        first_difference(one_thread_run, two_rank_run)


def test_resume_computes_with_the_saved_cpu_thread_count(tmp_path, demo_cache, one_thread_run):
    """torch's own CPU reductions still split by thread count (a full-tensor sum differs with 1 and 2 threads),
    so a deterministic resume started with another OMP_NUM_THREADS computes with the checkpoint's count."""
    resumed = tmp_path / "resumed"
    shutil.copytree(one_thread_run, resumed)
    (resumed / "checkpoints" / "latest").write_text("step_00000008")  # as if killed after step 8's save
    shutil.rmtree(resumed / "checkpoints" / "step_00000012")
    proc = launch(resumed, demo_cache, "max_steps=12", env={"OMP_NUM_THREADS": "2"})
    assert "computed with 1 CPU threads per rank, this start has 2: using 1" in proc.stdout + proc.stderr
    state = json.loads((resumed / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert state["cpu_threads"] == 1  # recorded from torch.get_num_threads() after the restore pinned it
    assert losses(resumed) == losses(one_thread_run), first_difference(resumed, one_thread_run)


def test_resume_onto_a_changed_source_is_refused_then_accepted_with_the_key(tmp_path, demo_cache, two_rank_run):
    """A re-run selection under a running curriculum: python loses a shard after step 8. The same command
    refuses, naming python; with checkpoint.accept_changed_sources=[python] python's permutation starts afresh
    at the recorded point and history.jsonl says so. (The refusal is taken from the check the launch runs,
    on the real checkpoint and data: one launch here.)"""
    import yaml

    from arctic_pretrain.common.config import ConfigError
    from arctic_pretrain.data.sampler import MixtureSampler
    from arctic_pretrain.data.shards import TokenSource
    from arctic_pretrain.train.history import check_source_data

    run_dir = tmp_path / "run"
    shutil.copytree(two_rank_run, run_dir)
    (run_dir / "checkpoints" / "latest").write_text("step_00000008")
    for tag in (run_dir / "checkpoints").glob("step_*"):
        if tag.name > "step_00000008":
            shutil.rmtree(tag)
    paths = {n: s["path"] for n, s in yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["sources"].items()}
    python = tmp_path / "python-reselected"
    shutil.copytree(paths["python"], python)
    manifest = json.loads((python / "manifest.json").read_text())
    shard = manifest["shards"][0]  # a smaller selection: the first half of its documents
    starts = np.load(python / f"{shard['name']}.idx.npy")[: shard["documents"] // 2 + 1]
    tokens = np.fromfile(python / f"{shard['name']}.bin", dtype=manifest["dtype"])[: starts[-1]]
    tokens.tofile(python / f"{shard['name']}.bin")
    np.save(python / f"{shard['name']}.idx.npy", starts)
    shard.update(tokens=int(starts[-1]), documents=len(starts) - 1)
    manifest.update(tokens=int(starts[-1]), documents=len(starts) - 1)
    (python / "manifest.json").write_text(json.dumps(manifest))
    saved = json.loads((run_dir / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())["sampler"]
    sources = {n: TokenSource(python if n == "python" else p) for n, p in paths.items()}
    changed = MixtureSampler(sources, 128, 1234).changed_sources(saved)
    assert list(changed) == ["python"] and changed["python"]["picks"] == saved["per_source"]["python"] > 0
    assert 0 < changed["python"]["windows"][1] < changed["python"]["windows"][0]
    with pytest.raises(ConfigError, match=r"python \(\d+ -> \d+ windows"):
        check_source_data(changed, [], run_dir / "checkpoints" / "step_00000008")

    launch(run_dir, demo_cache, f"data.sources.python.path={python}", "checkpoint.accept_changed_sources=[python]",
           "max_steps=12")
    record = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert record["accepted_source_changes"] == json.loads(json.dumps(changed))
    state = json.loads((run_dir / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())["sampler"]
    new = sources["python"]
    assert state["sources"]["python"] == {"windows": new.num_windows(128), "manifest_sha256": new.manifest_sha256,
                                          "restarted_at": saved["per_source"]["python"], "restarts": 1}
    assert state["sources"]["c"] == saved["sources"]["c"]  # untouched
    assert sum(state["per_source"].values()) == 12 * 8


LONG_MIDDLE = ["curriculum.phases.general.tokens=6K", "curriculum.phases.high_quality.tokens=4K",
               "curriculum.phases.synthetic.tokens=2K", "curriculum.phases.high_quality.seq_len=256",
               "curriculum.phases.high_quality.rope_theta=50000"]


def rolled_back(reference, run_dir, tag: str):
    """A copy of ``reference`` as if it had stopped at checkpoint ``tag`` (the later ones never written)."""
    shutil.copytree(reference, run_dir)
    for later in (run_dir / "checkpoints").glob("step_*"):
        if later.name > tag:
            shutil.rmtree(later)
    (run_dir / "checkpoints" / "latest").write_text(tag)
    return run_dir


def test_a_long_context_phase_resumes_exactly_across_its_boundaries_and_a_world_size_change(tmp_path, demo_cache):
    """high_quality at seq_len 256 (training's 128) and RoPE theta 50k on 2 ranks: micro 1 and global 4 sequences
    there (the same 1,024 tokens per step). Resumed from step 4, before it, the run crosses into it and back out
    to the last bit; resumed from step 8, inside it, on 1 rank, the sampler ends in the same state."""
    reference = tmp_path / "reference"
    launch(reference, demo_cache, *LONG_MIDDLE)
    state = json.loads((reference / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert state["sampler"]["lengths"]["256"]["high_quality"]["picks"] == 4 * 4  # 4 steps x 4 long sequences
    hf = json.loads((reference / "export" / "high_quality" / "config.json").read_text())
    assert hf["rope_parameters"]["rope_theta"] == 50000.0
    assert json.loads((reference / "export" / "synthetic" / "config.json").read_text()
                      )["rope_parameters"]["rope_theta"] == 10000.0

    run_dir = rolled_back(reference, tmp_path / "run", "step_00000004")
    launch(run_dir, demo_cache, *LONG_MIDDLE)
    assert losses(run_dir) == losses(reference), first_difference(run_dir, reference)
    end = json.loads((run_dir / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert end["sampler"] == state["sampler"]

    one_rank = rolled_back(reference, tmp_path / "one-rank", "step_00000008")
    proc = launch(one_rank, demo_cache, *LONG_MIDDLE, ranks=1)
    assert "saved by 2 ranks, now 1" in proc.stdout + proc.stderr
    end = json.loads((one_rank / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert end["sampler"] == state["sampler"]  # no sample skipped or read twice across the change
    got, ref = losses(one_rank), losses(reference)
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    for (_, _, a), (_, _, b) in zip(got, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-3)
