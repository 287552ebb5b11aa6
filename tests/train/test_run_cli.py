"""Issue 14's probes, run as a user runs them: entry points, a second job on a held run dir (two ranks),
a resume that would change the model, a corrupt checkpoint, sources broken after phase 1."""

from __future__ import annotations

import json
import shutil

import pytest

from arctic_pretrain.train.runlock import LOCK, RunLock
from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.slow


def train(run_dir, demo_cache, *overrides, ranks=1):
    launcher = [shutil.which("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port())] \
        if ranks > 1 else None
    return run_cli(["launch/train.py", "experiment=tiny", f"run_dir={run_dir}", f"data.demo_dir={demo_cache}",
                    *overrides], launcher=launcher)


def test_entry_points_help_and_config_errors_exit_2():
    bare = run_cli(["launch/train.py"])
    assert bare.returncode == 2 and "Traceback" not in bare.stderr and "MissingMandatory" not in bare.stderr
    assert "training.seq_len: has no value" in bare.stderr and "experiment=demo|" in bare.stderr
    unknown = run_cli(["launch/train.py", "experiment=tiny", "trainig.seq_len=5"])
    assert unknown.returncode == 2 and "trainig" in unknown.stderr
    typed = run_cli(["launch/train.py", "experiment=tiny", "training.seq_len=abc"])
    assert typed.returncode == 2 and "training.seq_len" in typed.stderr and "'abc'" in typed.stderr
    helped = run_cli(["launch/train.py", "--help"])
    assert helped.returncode == 0 and "Usage:" in helped.stdout and "Examples:" in helped.stdout
    assert "experiment: demo, snowcoder_1b3, tiny" in helped.stdout and "model: small" in helped.stdout
    curate = run_cli(["launch/curate.py", "--help"])
    assert curate.returncode == 0 and "executor: local, ray, slurm" in curate.stdout
    assert "model:" not in curate.stdout and "launch/curate.py inputs=" in curate.stdout
    wrong = run_cli(["launch/curate.py", "model=tiny"])
    assert wrong.returncode == 2 and "Key 'model' not in 'CurateConfig'" in wrong.stderr
    export = run_cli(["launch/export.py", "--help"])
    assert export.returncode == 0 and "Examples:" in export.stdout and "usage:" in export.stdout


def test_a_held_run_dir_stops_a_second_two_rank_job_then_one_job_runs_alone(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):  # another job (this process) holds it
        second = train(run_dir, demo_cache, "max_steps=1", ranks=2)
    assert second.returncode != 0
    out = second.stdout + second.stderr
    assert "in use by another job" in out and "pid " in out and "started " in out
    assert not run_dir.exists() or not any(run_dir.iterdir())  # it wrote nothing
    first = train(run_dir, demo_cache, "max_steps=1", ranks=2)  # both ranks of one job share the lock
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (run_dir / LOCK).exists()  # released at exit
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and "max_steps=1" in history[0]["overrides"]

    # 2. a resume that changes the model is refused before any model is built; the run keeps its identity
    config = (run_dir / "config.yaml").read_text()
    small = train(run_dir, demo_cache, "max_steps=2", "model=small")
    assert small.returncode == 2 and "cannot resume with a different model.hidden_size" in small.stderr
    assert (run_dir / "config.yaml").read_text() == config
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 1

    # 3. a corrupt latest checkpoint is named, never loaded
    model_file = run_dir / "checkpoints" / "step_00000001" / "mp_rank_00_model_states.pt"
    with open(model_file, "r+b") as fh:
        fh.seek(model_file.stat().st_size // 2)
        fh.write(b"\x7f" * 4096)
    corrupt = train(run_dir, demo_cache, "max_steps=2")
    assert corrupt.returncode == 2 and f"{model_file}: SHA-256 differs" in corrupt.stderr
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000001"


@pytest.mark.parametrize("damage", ["tokenizer", "half_shard"])
def test_broken_sources_fail_before_the_first_step(tmp_path, demo_cache, damage):
    demo = next(p for p in demo_cache.iterdir() if (p / "READY.json").is_file())
    if damage == "tokenizer":  # the first source's manifest names the tokenizer the phase exports save
        copy = shutil.copytree(demo / "python", tmp_path / "python")
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["tokenizer"]["name"] = str(tmp_path / "gone" / "tokenizer")
        (copy / "manifest.json").write_text(json.dumps(manifest))
        expected, override = "gone/tokenizer': no such file or folder", f"data.sources.python.path={copy}"
    else:  # a phase-2 source cut in half
        copy = shutil.copytree(demo / "high_quality", tmp_path / "hq")
        shard = next(copy.glob("*.bin"))
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 4 * 2])
        expected, override = f"{shard}: holds", f"data.sources.high_quality.path={copy}"
    run_dir = tmp_path / "run"
    proc = train(run_dir, demo_cache, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr
    assert not run_dir.exists()  # a start that fails its checks writes nothing
