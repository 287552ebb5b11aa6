"""Time to resume a run early and 100x later: process start -> first step after the restore.

One run trains to step ``--early`` and then on to ``--late`` (= 100 x early by default), leaving a
checkpoint at each. Each checkpoint is then resumed in a copy of the run dir whose ``latest`` names
it, with ``max_steps=<step+1>``; the resume time is the first post-resume metric line's ``time``
minus the moment the process was started. The sampler's state is a few counters, so the two times
should match (ratio ~1): nothing is replayed per step already done.

    python benchmarks/resume_time.py                      # tiny model, 1 process, steps 10 and 1000
    python benchmarks/resume_time.py --experiment demo --ranks 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from arctic_pretrain.common.net import free_port
from arctic_pretrain.train.checkpoint import tag_for

ROOT = Path(__file__).resolve().parents[1]


def launch(args: argparse.Namespace, run_dir: Path, *overrides: str) -> tuple[float, subprocess.CompletedProcess]:
    if args.ranks > 1:
        cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", str(args.ranks), "--master_port",
               str(free_port())]
    else:
        cmd = [sys.executable]
    cmd += ["launch/train.py", f"experiment={args.experiment}", "data=standin", f"output_dir={run_dir}", "logging.interval=1",
            "checkpoint.interval=1000000", "checkpoint.keep_last=10", "checkpoint.export_phases=false",
            f"curriculum.phases.general.tokens={args.general_tokens}", "logging.wandb_mode=disabled", *overrides]
    if args.demo_dir:
        cmd.append(f"data.demo_dir={args.demo_dir}")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return start, proc



def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def log_time(run_dir: Path, pattern: str) -> float | None:
    """Wall time of the last train.log line matching ``pattern`` (the logger's asctime, ms precision)."""
    found = None
    for line in (run_dir / "train.log").read_text().splitlines():
        if re.search(pattern, line):
            found = line
    if found is None:
        return None
    stamp = datetime.strptime(found[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def resume_once(args: argparse.Namespace, run_dir: Path, tag: str, step: int, work: Path) -> dict:
    copy = work / f"resume_{step}"
    shutil.rmtree(copy, ignore_errors=True)
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / tag, copy / "checkpoints" / tag)
    (copy / "checkpoints" / "latest").write_text(tag)
    start, _ = launch(args, copy, f"max_steps={step + 1}")
    first = next(r for r in metrics(copy) if r["step"] == step + 1)
    restored = log_time(copy, rf"resumed from {tag}")
    return {"step": step, "to_first_step_s": first["time"] - start,
            "to_restored_s": (restored - start) if restored else None, "first_step_seconds": first["step_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="tiny")
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--early", type=int, default=10)
    parser.add_argument("--late", type=int, default=None, help="default: 100 x early")
    parser.add_argument("--repeats", type=int, default=3, help="resumes per checkpoint, alternating")
    parser.add_argument("--general-tokens", default="1.1M", help="phase-1 budget: must outlast the late step")
    parser.add_argument("--demo-dir", default=None)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    late = args.late or 100 * args.early
    work = Path(args.work or tempfile.mkdtemp(prefix="resume-bench-"))
    run_dir = work / "run"
    tags = {args.early: tag_for(args.early), late: tag_for(late)}
    t = time.time()
    for step, tag in tags.items():  # a --work folder from an earlier call keeps the run's checkpoints
        if not (run_dir / "checkpoints" / tag / "COMPLETE").is_file():
            launch(args, run_dir, f"max_steps={step}")
    print(f"run at step {late} after {time.time() - t:.0f} s ({run_dir})")
    for tag in tags.values():
        if not (run_dir / "checkpoints" / tag / "COMPLETE").is_file():
            sys.exit(f"{run_dir / 'checkpoints' / tag} is missing or incomplete")

    results: dict[int, list[dict]] = {args.early: [], late: []}
    for _ in range(args.repeats):
        for step, tag in tags.items():
            r = resume_once(args, run_dir, tag, step, work)
            results[step].append(r)
            print(json.dumps(r))
    med = {s: statistics.median(r["to_first_step_s"] for r in rs) for s, rs in results.items()}
    med_restore = {s: statistics.median(r["to_restored_s"] for r in rs) for s, rs in results.items()}
    print(f"\n{args.experiment}, {args.ranks} rank(s), median of {args.repeats}:")
    for s in tags:
        print(f"  resume at step {s:>6}: process start -> restored {med_restore[s]:.2f} s, "
              f"-> first step done {med[s]:.2f} s")
    print(f"  ratio (step {late} / step {args.early}): {med[late] / med[args.early]:.3f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
