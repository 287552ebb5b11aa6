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

Sweep mode times the throughput knobs, one configuration per fresh process (benchmarks/knob_loop.py:
the model builder, the loss builder, the prefetcher and a DeepSpeed engine, no trainer around them):

    python benchmarks/gpu_throughput.py --sweep gpu --out $OUT      # the paper's 1.3B, seq 8192, bf16
    python benchmarks/gpu_throughput.py --sweep cpu                  # relative figures, small model
    python benchmarks/gpu_throughput.py --sweep gpu --only chunked_mb4 liger_all_mb4

It prints one table (tokens/s, TFLOP/s per device, MFU, peak memory, step time, data time per step)
and writes sweep.json. ``--budget`` seconds bounds the whole sweep: configurations not started by then
are listed as skipped, so a short GPU lease always ends with a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["experiment=snowcoder_1b3", "data=standin", "curriculum=demo", "data.demo_vocab_size=64000",
        "curriculum.phases.general.tokens=4M", "training.global_batch_size=8", "training.micro_batch_size=2",
        "logging.interval=1", "logging.wandb_mode=disabled", "checkpoint.interval=1000000",
        "checkpoint.export_phases=false"]


def run(attention: str, steps: int, warmup: int, out: Path, overrides: list[str], timeout: float) -> dict:
    run_dir = out / f"run-{attention}"
    cmd = [sys.executable, "launch/train.py", *BASE, f"model.attention={attention}", f"max_steps={steps}",
           f"output_dir={run_dir}", *overrides]
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


# name -> knob_loop config; in priority order (a budget cut drops the last ones). Every GPU row keeps
# 8 sequences of 8192 tokens per optimizer step (micro x accumulation), as the measured table above.
_GPU = {"model": "snowcoder_1b3", "seq_len": 8192, "steps": 7, "warmup": 3, "precision": "bf16"}


def _gpu(micro: int, **model) -> dict:
    return {**_GPU, "micro": micro, "gas": 8 // micro,
            "model_overrides": {"attention": "flex_attention", **model}}


SWEEPS = {
    "gpu": {
        "logits_mb2": _gpu(2),  # today's default path (the README's measured row, in this loop)
        "chunked_mb4": _gpu(4, loss="chunked"),  # no logits tensor: room for micro batch 4
        "liger_all_mb4": _gpu(4, loss="liger", liger_kernels=True),
        "liger_all_compile_mb4": _gpu(4, loss="liger", liger_kernels=True, compile=True),
        "liger_loss_mb4": _gpu(4, loss="liger"),
        "cut_ce_mb4": _gpu(4, loss="cut_ce"),
        "liger_all_ac2_mb8": _gpu(8, loss="liger", liger_kernels=True, activation_checkpointing="selective"),
        "chunked_mb2": _gpu(2, loss="chunked"),
        "chunked_compile_mb4": _gpu(4, loss="chunked", compile=True),
        "liger_all_mb4_zero1": {**_gpu(4, loss="liger", liger_kernels=True), "zero_stage": 1},
        "liger_all_mb4_no_overlap": {**_gpu(4, loss="liger", liger_kernels=True), "overlap_comm": False},
        "liger_all_mb4_bucket2e8": {**_gpu(4, loss="liger", liger_kernels=True), "reduce_bucket_size": 2e8,
                                    "allgather_bucket_size": 2e8},
        "chunked_sdpa_mb4": {**_gpu(4, loss="chunked"), "model_overrides": {"attention": "sdpa", "loss": "chunked"}},
    },
}
_CPU = {"model": "small", "vocab": 4096, "seq_len": 256, "steps": 4, "warmup": 1, "precision": "fp32",
        "zero_stage": 1, "overlap_comm": False}  # 1 CPU thread per process (KNOB_CPU_THREADS)


def _cpu(micro: int, **model) -> dict:
    return {**_CPU, "micro": micro, "gas": 8 // micro, "model_overrides": {"attention": "sdpa", **model}}


SWEEPS["cpu"] = {
    "logits_mb2": _cpu(2),
    "chunked_mb2": _cpu(2, loss="chunked", loss_chunk_tokens=64),
    "chunked_mb8": _cpu(8, loss="chunked", loss_chunk_tokens=64),
    "logits_mb8": _cpu(8),
    "ac_full_mb2": _cpu(2, activation_checkpointing="full"),
    "ac_selective2_mb2": _cpu(2, activation_checkpointing="selective"),
    "logits_mb2_zero2": {**_cpu(2), "zero_stage": 2},
    "logits_mb2_zero2_bucket1e6": {**_cpu(2), "zero_stage": 2, "reduce_bucket_size": 1e6,
                                   "allgather_bucket_size": 1e6},
}
COLUMNS = [("config", "{}"), ("tokens_per_s", "{:,.0f}"), ("tflops_per_device", "{:.1f}"), ("mfu", "{:.1%}"),
           ("max_memory_gb", "{:.1f}"), ("step_seconds", "{:.3f}"), ("data_seconds_per_step", "{:.4f}"),
           ("data_share", "{:.2%}")]


def sweep_one(name: str, config: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, "benchmarks/knob_loop.py", json.dumps(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": name, "knobs": config, "error": f"timed out after {timeout:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"config": name, "knobs": config, "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    result = json.loads(lines[-1])
    return {"config": name, "knobs": result.pop("config"), **result}


def table(results: list[dict]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    for r in results:
        if "error" in r or "skipped" in r:
            rows.append([r["config"], (r.get("error") or r["skipped"]).strip().splitlines()[-1][:90]])
            continue
        rows.append([fmt.format(r[k]) if r.get(k) is not None else "-" for k, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows)


def sweep(args) -> None:
    configs = SWEEPS[args.sweep]
    names = args.only or list(configs)
    unknown = sorted(set(names) - set(configs))
    if unknown:
        raise SystemExit(f"--only: unknown configurations {unknown}; {args.sweep} has {sorted(configs)}")
    start, results = time.monotonic(), []
    for name in names:
        left = args.budget - (time.monotonic() - start)
        if left < 30:
            results.append({"config": name, "knobs": configs[name], "skipped": f"budget {args.budget:g} s spent"})
            continue
        results.append(sweep_one(name, {**configs[name], "peak_tflops": args.peak_tflops},
                                 min(args.timeout, left)))
        print(json.dumps(results[-1]), flush=True)
        (args.out / "sweep.json").write_text(json.dumps(results, indent=2))  # what is done survives a kill
    print(table(results))
    (args.out / "sweep.json").write_text(json.dumps(results, indent=2))
    (args.out / "sweep.txt").write_text(table(results) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", choices=sorted(SWEEPS), help="time the throughput knobs instead")
    parser.add_argument("--only", nargs="+", help="sweep: these configurations only")
    parser.add_argument("--budget", type=float, default=1e9, help="sweep: seconds for the whole sweep")
    parser.add_argument("--peak-tflops", type=float, default=None, help="sweep: device peak when not known")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--attention", nargs="+", default=["auto"])
    parser.add_argument("--bare", action="store_true", help="also time the bare DeepSpeed loop")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpu-throughput")
    args, overrides = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        return sweep(args)
    results = []
    for attention in args.attention:
        results.append(run(attention, args.steps, args.warmup, args.out, overrides, args.timeout))
        if args.bare and "error" not in results[-1]:
            bare(results[-1], args.out / f"run-{attention}", args.steps, args.warmup, args.timeout)
        print(json.dumps(results[-1]), flush=True)
    (args.out / "gpu_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
