"""Training throughput, MFU and peak memory of launch/train.py on one GPU, the paper's model and length.

    python benchmarks/gpu_throughput.py --steps 20 --attention sdpa flex_attention [hydra overrides]

Each attention backend runs in a fresh process: experiment=snowcoder_1b3 (1.3B, seq 8192, bf16, ZeRO-2)
on the demo corpus with a 64,000-token BPE (the paper's vocabulary size), micro batch 2, global batch 8
(gradient accumulation 4), logging every step, no checkpoint inside the window. The first ``--warmup``
steps (compilation, allocator growth) are dropped; the rest give the median tokens/s, MFU and step time.
MFU uses the trainer's FLOPs per token (6N + attention) and the device's dense bf16 peak.
With ``--bare``, benchmarks/bare_deepspeed_loop.py then runs the same model, DeepSpeed config and
batches in a plain loop (pre-read batches, plain AdamW, no logging): overhead = framework / bare - 1,
both from wall-clock time between optimizer steps.
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
BASE = ["experiment=snowcoder_1b3", "data=standin", "curriculum=demo", "data.demo_vocab_size=64000",
        "curriculum.phases.general.tokens=4M", "training.global_batch_size=8", "training.micro_batch_size=2",
        "logging.interval=1", "logging.wandb_mode=disabled", "checkpoint.interval=1000000",
        "checkpoint.export_phases=false"]


def run(attention: str, steps: int, warmup: int, out: Path, overrides: list[str], timeout: float) -> dict:
    run_dir = out / f"run-{attention}"
    cmd = [sys.executable, "launch/train.py", *BASE, f"model.attention={attention}", f"max_steps={steps}",
           f"run_dir={run_dir}", *overrides]
    note = None
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            note = f"exit {proc.returncode}: {proc.stderr[-2500:]}"
    except subprocess.TimeoutExpired:
        note = f"timed out after {timeout:g} s"
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if not rows:
        return {"attention": attention, "error": note or "no metrics written"}
    steady = [r for r in rows if r["step"] > warmup] or rows

    def med(key: str) -> float:
        return statistics.median(r[key] for r in steady if r.get(key) is not None)

    return {"attention": attention, "steps_timed": len(steady), "tokens_per_s": round(med("tokens_per_s")),
            "mfu": round(med("mfu"), 4) if any(r.get("mfu") for r in steady) else None,
            "step_seconds": round(med("step_seconds"), 3),
            "max_memory_gb": round(max(r.get("max_memory_gb") or 0 for r in rows), 1),
            "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]], "note": note}


def _median_gap(times: list[float], warmup: int) -> float:
    return statistics.median(b - a for a, b in zip(times[warmup:], times[warmup + 1:], strict=False))


def bare(result: dict, run_dir: Path, steps: int, warmup: int, timeout: float) -> None:
    """Add the bare DeepSpeed loop's step time over the same model and batches, and the overhead."""
    try:
        proc = subprocess.run([sys.executable, "benchmarks/bare_deepspeed_loop.py", str(run_dir), str(steps)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        result["bare_error"] = f"timed out after {timeout:g} s"
        return
    if proc.returncode:
        result["bare_error"] = proc.stderr[-2500:]
        return
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ours = _median_gap([r["time"] for r in rows], warmup)
    theirs = _median_gap(json.loads(proc.stdout.strip().splitlines()[-1]), warmup)
    result.update(framework_wall_step_s=round(ours, 3), bare_wall_step_s=round(theirs, 3),
                  overhead=round(ours / theirs - 1, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--attention", nargs="+", default=["auto"])
    parser.add_argument("--bare", action="store_true", help="also time the bare DeepSpeed loop")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpu-throughput")
    args, overrides = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for attention in args.attention:
        results.append(run(attention, args.steps, args.warmup, args.out, overrides, args.timeout))
        if args.bare and "error" not in results[-1]:
            bare(results[-1], args.out / f"run-{attention}", args.steps, args.warmup, args.timeout)
        print(json.dumps(results[-1]), flush=True)
    (args.out / "gpu_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
