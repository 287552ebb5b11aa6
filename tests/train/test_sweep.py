"""Budget sweeps: the shared curriculum prefix trains once, each variant branches from it into its own output_dir."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from arctic_pretrain.train.metrics import read_metrics
from arctic_pretrain.train.sweep import PrefixLock, shared_prefix, sweep_values, swept_keys, variant_name
from tests.conftest import run_cli

SWEEP = ["curriculum.phases.general.tokens=4K", "curriculum.phases.high_quality.tokens=2K,4K",
         "curriculum.phases.synthetic.tokens=1K", "checkpoint.export_phases=false", "checkpoint.interval=100"]


def test_swept_keys_decide_the_shared_prefix():
    assert swept_keys(["experiment=tiny", "curriculum.phases.high_quality.tokens=25B,50B", "output_dir=R"]) == [
        "curriculum.phases.high_quality.tokens"]
    phases = ["general", "high_quality", "synthetic"]
    assert shared_prefix(phases, ["curriculum.phases.high_quality.tokens"]) == ["general"]
    assert shared_prefix(phases, ["curriculum.phases.synthetic.lr.peak_lr", "logging.interval"]) == [
        "general", "high_quality"]
    assert shared_prefix(phases, ["curriculum.phases.general.tokens"]) == []
    assert shared_prefix(phases, ["seed"]) == []  # changes every phase: nothing shared
    assert shared_prefix(phases, ["logging.interval"]) == []  # nothing differs: no prefix run either
    assert variant_name({"curriculum.phases.high_quality.tokens": "25B", "seed": "7"}) == \
        "high_quality.tokens=25B,seed=7"


def test_a_swept_source_shares_the_phases_that_do_not_read_it():
    """A selection ablation sweeps phase 2's source path: phase 1 (python, c) is shared; a source phase 1
    reads shares nothing; without the phases' sources a swept source shares nothing (as before)."""
    phases = ["general", "high_quality", "synthetic"]
    reads = {"general": {"python", "c"}, "high_quality": {"high_quality"}, "synthetic": {"synthetic", "high_quality"}}
    assert shared_prefix(phases, ["data.sources.high_quality.path"], reads) == ["general"]
    assert shared_prefix(phases, ["data.sources.synthetic.path"], reads) == ["general", "high_quality"]
    assert shared_prefix(phases, ["data.sources.python.path"], reads) == []
    assert shared_prefix(phases, ["data.sources.high_quality.path"]) == []
    arms = "data.sources.high_quality.path=/r/data/arms/top/all,/r/data/arms/random/all,/r/data/arms/bottom/all"
    choices = sweep_values(["experiment=demo", arms, "output_dir=/r/ablation"])
    assert [variant_name({"data.sources.high_quality.path": v}, choices)
            for v in choices["data.sources.high_quality.path"]] == [
        "high_quality.path=top", "high_quality.path=random", "high_quality.path=bottom"]
    assert variant_name({"data.sources.high_quality.path": "/r/a/all"}) == "high_quality.path=_r_a_all"


def _hold_prefix(path: str, events: str, release: str) -> None:
    """A concurrent job: take the prefix lock if free, record what happened; a holder keeps the lock until the
    test has seen both attempts (the ``release`` file), however slowly the other process started."""
    lock = PrefixLock(Path(path))
    got = lock.acquire()
    with open(events, "a") as fh:
        fh.write(json.dumps({"got": got}) + "\n")
    if got:
        while not Path(release).exists():
            time.sleep(0.05)
        lock.release()


def test_prefix_lock_admits_one_job_and_frees_on_exit(tmp_path):
    """Two processes race for the lock: one holds it, the other is refused; once the holder is gone it is free."""
    ctx = mp.get_context("spawn")
    events, release = tmp_path / "events.jsonl", tmp_path / "release"
    procs = [ctx.Process(target=_hold_prefix, args=(str(tmp_path / "p.lock"), str(events), str(release)))
             for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 300  # a generous bound on two process starts, not a timing under test
    while time.monotonic() < deadline and len(events.read_text().splitlines() if events.exists() else []) < 2:
        time.sleep(0.05)
    release.touch()
    for p in procs:
        p.join(60)
    got = [json.loads(line)["got"] for line in events.read_text().splitlines()]
    assert sorted(got) == [False, True]
    lock = PrefixLock(tmp_path / "p.lock")
    assert lock.acquire()  # the holder exited: the kernel dropped its lock
    lock.release()


def _variant_job(prefix_dir: str, calls: str) -> None:
    """One concurrent sweep job's prefix step; its training records the call and takes a while."""
    import os
    from types import SimpleNamespace

    from arctic_pretrain.train.sweep import ensure_prefix

    def train(cfg) -> dict:
        with open(calls, "a") as fh:
            fh.write(json.dumps({"train": os.getpid()}) + "\n")
        time.sleep(3)
        return {"status": "done", "step": 4, "consumed_tokens": 4096}

    cfg = SimpleNamespace(output_dir=prefix_dir, curriculum=SimpleNamespace(phases={"general": None}))
    done = ensure_prefix(cfg, train, poll_s=0.2)
    with open(calls, "a") as fh:
        fh.write(json.dumps({"done": done["checkpoint"]}) + "\n")


@pytest.mark.slow  # two processes, each with a process group
def test_concurrent_jobs_train_the_prefix_once_and_the_other_waits(tmp_path):
    ctx = mp.get_context("spawn")
    calls = tmp_path / "calls.jsonl"
    procs = [ctx.Process(target=_variant_job, args=(str(tmp_path / "prefix.general.abc"), str(calls)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    events = [json.loads(line) for line in calls.read_text().splitlines()]
    assert sum("train" in e for e in events) == 1  # one job trained it
    assert [e["done"] for e in events if "done" in e] == [str(tmp_path / "prefix.general.abc" / "checkpoints" /
                                                                "step_00000004")] * 2  # both branch from it
    assert events[0].keys() == {"train"}  # the waiting job returned only after the training finished


@pytest.mark.slow
def test_budget_sweep_trains_phase_one_once(tmp_path, demo_cache):
    sweep = tmp_path / "sweep"
    proc = run_cli(["launch/train.py", "-m", "experiment=tiny", f"run_dir={sweep}", f"data.demo_dir={demo_cache}",
                    *SWEEP], timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("training the sweep's shared prefix") == 1

    prefixes = sorted(sweep.glob("prefix.general.*/"))
    assert len(prefixes) == 1 and not (sweep / "0").exists()
    assert [r["step"] for r in read_metrics(prefixes[0])] == [1, 2, 3, 4]  # phase 1: 4K tokens / 1024 per step
    expected = {"high_quality.tokens=2K": [5, 6, 7], "high_quality.tokens=4K": [5, 6, 7, 8, 9]}
    for name, steps in expected.items():
        rows = read_metrics(sweep / name)
        assert [r["step"] for r in rows] == steps  # starts after the prefix: phase 1 was not trained again
        assert rows[0]["phase"] == "high_quality"
        tag = (sweep / name / "checkpoints" / "latest").read_text().strip()
        state = json.loads((sweep / name / "checkpoints" / tag / "trainer_state.json").read_text())
        assert state["init_from"] == str(prefixes[0] / "checkpoints" / "step_00000004")
        assert state["phase_end"] == "synthetic"

    with open(sweep / "sweep.csv") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(expected)
    small, large = rows["high_quality.tokens=2K"], rows["high_quality.tokens=4K"]
    assert (small["budget/general"], small["budget/high_quality"], large["budget/high_quality"]) == ("4K", "2K", "4K")
    assert (small["steps"], large["steps"], small["tokens"], large["tokens"]) == ("7", "9", "7168", "9216")
    assert (small["tokens_here"], large["tokens_here"]) == ("3072", "5120")
    assert small["loss/general"] == large["loss/general"] != ""  # one phase-1 run, read from the prefix
    assert small["loss/synthetic"] != large["loss/synthetic"]
    table = (sweep / "sweep.md").read_text()
    assert "| high_quality.tokens=2K | 2K |" in table and "| high_quality.tokens=4K | 4K |" in table


def test_arms_name_one_prefix_dir():
    """Variants that differ only in phase 2's source share one prefix dir (the prefix run leaves the swept
    source out); a phase-1 change is another prefix."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from arctic_pretrain.common.config import HYDRA_VERSION_BASE
    from arctic_pretrain.train.config import register
    from arctic_pretrain.train.sweep import phase_reads, prefix_config
    from tests.conftest import ROOT

    register()
    swept = ["data.sources.high_quality.path"]

    def prefix(*overrides: str) -> str:
        with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base=HYDRA_VERSION_BASE):
            cfg = OmegaConf.to_object(compose(config_name="train", overrides=["experiment=demo", *overrides]))
        phases = shared_prefix(list(cfg.curriculum.phases), swept, phase_reads(cfg))
        assert phases == ["general"]
        return prefix_config(cfg, phases, Path("/sweep"), swept).output_dir

    top = prefix("data.sources.high_quality.path=/d/arms/top/all")
    assert top == prefix("data.sources.high_quality.path=/d/arms/random/all")
    assert top != prefix("data.sources.high_quality.path=/d/arms/top/all", "curriculum.phases.general.tokens=2M")
