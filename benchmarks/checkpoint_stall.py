"""The training stall one checkpoint causes, as a fraction of the checkpoint interval.

Trains the demo experiment (the `small` model) with a save every ``--interval`` steps and a metric
line every step. For each step, the wall time between consecutive metric lines (``time``) splits into
train_step's own ``step_seconds`` and the rest; a save lands in the rest (DeepSpeed's write, our fsyncs,
the barriers, the publish), a decoupled writer's commit wait in the next step's ``step_seconds``.
The stall is the sum of both medians' excess over steps that do not follow a save; the fraction is
that stall over the wall time of ``--interval`` ordinary steps, and of the demo's own interval (100).

    python benchmarks/checkpoint_stall.py                                  # 2 ranks, ZeRO-2 (the paper's stage)
    python benchmarks/checkpoint_stall.py --zero zero3 --override '+deepspeed.extra={checkpoint: {writer: {type: python, decoupled: true, data_parallel: replica}}}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arctic_pretrain.common.net import free_port

ROOT = Path(__file__).resolve().parents[1]



def train(args: argparse.Namespace, run_dir: Path) -> float:
    if args.ranks > 1:
        cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", str(args.ranks), "--master_port",
               str(free_port())]
    else:
        cmd = [sys.executable]
    cmd += ["launch/train.py", f"experiment={args.experiment}", "data=standin", f"output_dir={run_dir}", f"deepspeed={args.zero}",
            "logging.interval=1", f"checkpoint.interval={args.interval}", "checkpoint.keep_last=2",
            "checkpoint.export_phases=false", "logging.wandb_mode=disabled", f"max_steps={args.steps}",
            *args.override]
    if args.demo_dir:
        cmd.append(f"data.demo_dir={args.demo_dir}")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    start = time.time()
    log = run_dir.parent / "launch.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:  # own session: a hung job (decoupled writers can hang at exit) is killed whole
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"warning: killed after {args.timeout} s (see {log}); measuring the metrics it wrote")
            return time.time() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--zero", default="zero2")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--interval", type=int, default=10, help="steps between saves in this measurement")
    parser.add_argument("--steps", type=int, default=81)
    parser.add_argument("--override", action="append", default=[], help="extra launch/train.py override")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a hung job is killed")
    parser.add_argument("--demo-dir", default=None)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--analyze", action="store_true", help="only measure the run already in --work")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="stall-bench-"))
    run_dir = work / "run"
    if args.analyze:
        wall = float("nan")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        wall = train(args, run_dir)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows if "step_seconds" in r}
    # per step: outside = wall time between metric lines not spent in train_step (a save lands here),
    # compute = train_step's own time (a decoupled writer's commit wait lands here: the next engine.step)
    samples: dict[bool, dict[str, list[float]]] = {True: {"outside": [], "compute": []},
                                                   False: {"outside": [], "compute": []}}
    for step in sorted(by_step):
        prev = by_step.get(step - 1)
        if prev is None or step - 1 <= 1:  # the first steps warm up
            continue
        after_save = (step - 1) % args.interval == 0
        compute = by_step[step]["step_seconds"]
        samples[after_save]["outside"].append(by_step[step]["time"] - prev["time"] - compute)
        samples[after_save]["compute"].append(compute)
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in samples.items()}
    step_s = med[False]["outside"] + med[False]["compute"]
    save_s = med[True]["outside"] - med[False]["outside"]
    next_step_s = med[True]["compute"] - med[False]["compute"]
    stall = save_s + next_step_s
    tags = sorted((run_dir / "checkpoints").glob("step_*"))
    size = sum(p.stat().st_size for p in tags[-1].rglob("*") if p.is_file()) / 2**20 if tags else float("nan")
    print(json.dumps({"experiment": args.experiment, "zero": args.zero, "ranks": args.ranks, "override": args.override,
                      "saves_measured": len(samples[True]["outside"]), "step_s": round(step_s, 4),
                      "save_call_s": [round(x, 3) for x in samples[True]["outside"]],
                      "next_step_compute_s": [round(x, 3) for x in samples[True]["compute"]],
                      "checkpoint_mib": round(size, 1), "wall_s": round(wall, 1)}))
    print(f"\n{args.experiment} ({args.zero}, {args.ranks} rank(s)){' ' + ' '.join(args.override) if args.override else ''}:")
    print(f"  ordinary step {step_s:.3f} s; per save: save call +{save_s:.3f} s, next step +{next_step_s:.3f} s, "
          f"stall {stall:.3f} s (medians of {len(samples[True]['outside'])} saves, checkpoint {size:.1f} MiB)")
    for interval in sorted({args.interval, 100}):
        print(f"  stall / interval of {interval} steps: {stall / (interval * step_s):.2%}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
