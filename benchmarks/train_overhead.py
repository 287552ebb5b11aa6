"""Framework overhead: launch/train.py against a bare DeepSpeed loop, same model, batch and data.

Both run as fresh processes on this machine, alternating, so they share the noise. The figure is the
median over repeats of (framework seconds per step) / (bare seconds per step) in steady state. The
framework logs every step (its worst case) and does not checkpoint inside the timed window.

    python benchmarks/train_overhead.py --steps 60 --repeats 3 [hydra overrides for both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def framework_run(run_dir: Path, steps: int, overrides: list[str]) -> list[float]:
    cmd = [sys.executable, "launch/train.py", "experiment=demo", "data=standin", f"output_dir={run_dir}", f"max_steps={steps}",
           "logging.interval=1", "logging.wandb_mode=disabled", "checkpoint.interval=1000000",
           "checkpoint.export_phases=false", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["time"] for r in rows]


def bare_run(run_dir: Path, steps: int) -> list[float]:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bare_deepspeed_loop.py"), str(run_dir),
                           str(steps)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def per_step(times: list[float], warmup: int) -> float:
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (both runs use the framework's config)")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            run_dir = Path(tmp) / f"run{r}"
            framework = per_step(framework_run(run_dir, args.steps, args.overrides), args.warmup)
            bare = per_step(bare_run(run_dir, args.steps), args.warmup)
            ratios.append(framework / bare)
            print(f"repeat {r}: framework {framework * 1e3:.1f} ms/step, bare DeepSpeed {bare * 1e3:.1f} ms/step, "
                  f"ratio {framework / bare:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"framework overhead: {100 * (ratio - 1):+.1f}% of step time (median of {len(ratios)}; target < 5%)")


if __name__ == "__main__":
    main()
