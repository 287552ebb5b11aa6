"""A model of one ZeRO-2 optimizer step on N GPUs, from the measured single-GPU step: computed, not measured.

    python benchmarks/scaling_model.py                      # markdown tables + benchmarks/results/scaling_model.json
    python benchmarks/scaling_model.py --reduce-bucket 5e7  # what a smaller gradient bucket buys

The paper's batch: 512 sequences x 8192 tokens per optimizer step, micro batch 2 per GPU, so each GPU runs
512 / (2 N) micro-steps. What one step on N GPUs costs, as DeepSpeed's ZeRO-2 does it:

- compute: each GPU's share of the batch at the measured single-GPU speed per sequence
  (benchmarks/results/gpu_throughput_h200.json, the `auto` row: 1.822 s per 8 sequences, which includes one
  optimizer step; ``--opt-seconds`` of it is taken out and charged once per 512 sequences instead, divided
  by N since ZeRO partitions the optimizer: an assumption, not a measurement);
- gradient reduce-scatter: ZeRO-2 reduces every micro-step (stage_1_and_2.py reduces in the backward
  hooks when gradients are partitioned), (N-1)/N x 2 bytes x parameters per GPU, in buckets of
  ``reduce_bucket_size`` elements launched as backward produces them (``overlap_comm``). It hides behind the
  rest of backward (2/3 of a micro-step's compute) except the last bucket, which waits for the end of
  backward: exposed = max(reduce-scatter - backward, 0) + last bucket's share;
- parameter all-gather: after the optimizer updates each GPU's 1/N of the fp32 master weights, the bf16
  parameters are all-gathered, (N-1)/N x 2 bytes x parameters per GPU, once per step, not overlapped.

Links (bus bandwidth of a ring collective, x ``--efficiency`` of the line rate): within a node 8 GPUs on
NVLink 4 (450 GB/s per direction per GPU, H100/H200 SXM); across nodes 400 Gb/s InfiniBand NICs, with
``--nics-per-node`` (8: one per GPU, DGX H100/H200) rails carrying NCCL's channels in parallel, so a
collective spanning nodes runs at min(NVLink, NICs x 50 GB/s) x efficiency. Latency terms are left out
(a few hundred microseconds per step at these message sizes). MFU counts the same FLOPs as the trainer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "results" / "gpu_throughput_h200.json"
PARAMS = 1_339_000_000  # the paper's 1.3B with a 64,000-token vocabulary (README: 1,339M)
FLOPS_PER_TOKEN = 6 * (24 * (4 * 2048**2 + 3 * 2048 * 5632) + 64000 * 2048) + 12 * 24 * 2048 * 8192
PEAK = 989e12  # H100/H200 dense bf16
GLOBAL_BATCH, SEQ, MICRO, GPUS_PER_NODE = 512, 8192, 2, 8


def measured_step() -> tuple[float, int]:
    """(seconds per optimizer step, sequences per step) of the measured single-GPU `auto` run."""
    data = json.loads(MEASURED.read_text())
    row = next(r for r in data["runs"] if r["attention"] == "auto")
    return row["step_seconds"], 8  # global batch 8 in that run (micro 2 x accumulation 4)


def bus_bandwidth(gpus: int, args) -> float:
    nvlink = args.nvlink_gbs * args.efficiency
    if gpus <= GPUS_PER_NODE:
        return nvlink
    return min(nvlink, args.nics_per_node * args.ib_gbit / 8 * args.efficiency)


def step_model(gpus: int, args) -> dict:
    step1, seqs1 = measured_step()
    per_seq = (step1 - args.opt_seconds) / seqs1  # forward + backward of one sequence
    micro_steps = GLOBAL_BATCH // (MICRO * gpus)
    compute = micro_steps * MICRO * per_seq
    grad_bytes = PARAMS * 2  # bf16 gradients and parameters
    if gpus == 1:
        rs = exposed = gather = 0.0
    else:
        bw = bus_bandwidth(gpus, args) * 1e9
        rs = (gpus - 1) / gpus * grad_bytes / bw  # per micro-step
        backward = MICRO * per_seq * 2 / 3
        tail = min(args.reduce_bucket, PARAMS) / PARAMS * rs
        exposed = max(rs - backward, 0.0) + tail
        gather = (gpus - 1) / gpus * grad_bytes / bw
    step = compute + micro_steps * exposed + gather + args.opt_seconds / gpus
    tokens_per_s = GLOBAL_BATCH * SEQ / step
    return {"gpus": gpus, "nodes": max(1, gpus // GPUS_PER_NODE), "micro_steps_per_gpu": micro_steps,
            "bus_gbs": round(bus_bandwidth(gpus, args), 1) if gpus > 1 else None,
            "compute_s": round(compute, 2), "reduce_scatter_per_micro_s": round(rs, 4),
            "exposed_comm_s": round(micro_steps * exposed + gather, 3), "step_s": round(step, 2),
            "tokens_per_s": round(tokens_per_s), "tokens_per_s_per_gpu": round(tokens_per_s / gpus),
            "mfu": round(tokens_per_s * FLOPS_PER_TOKEN / (gpus * PEAK), 4)}


def markdown(rows: list[dict], title: str) -> str:
    base = rows[0]["tokens_per_s_per_gpu"]
    out = [f"{title}", "", "| GPUs | nodes | micro-steps/GPU | bus GB/s | compute s | exposed comm s | step s | "
           "tokens/s | MFU | scaling efficiency |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['gpus']} | {r['nodes']} | {r['micro_steps_per_gpu']} | {r['bus_gbs'] or '-'} | "
                   f"{r['compute_s']:.2f} | {r['exposed_comm_s']:.3f} | {r['step_s']:.2f} | "
                   f"{r['tokens_per_s']:,} | {r['mfu']:.1%} | {r['tokens_per_s_per_gpu'] / base:.1%} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--nvlink-gbs", type=float, default=450.0, help="NVLink GB/s per direction per GPU")
    parser.add_argument("--ib-gbit", type=float, default=400.0, help="InfiniBand Gb/s per NIC")
    parser.add_argument("--nics-per-node", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--efficiency", type=float, default=0.8, help="achieved share of the line rate")
    parser.add_argument("--reduce-bucket", type=float, default=5e8, help="DeepSpeed reduce_bucket_size (elements)")
    parser.add_argument("--opt-seconds", type=float, default=0.05,
                        help="optimizer step on one GPU (assumed: AdamW over 1.3B fp32 master weights)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling_model.json")
    args = parser.parse_args()
    results = {}
    for nics in args.nics_per_node:
        args_n = argparse.Namespace(**{**vars(args), "nics_per_node": nics})
        rows = [step_model(g, args_n) for g in args.gpus]
        results[f"{nics}_nics_per_node"] = rows
        print(markdown(rows, f"ZeRO-2, 512 x 8192 tokens per step, {nics} x {args.ib_gbit:g} Gb/s InfiniBand "
                             f"per node, reduce_bucket_size {args.reduce_bucket:g}:"))
        print()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"assumptions": {k: str(v) if isinstance(v, Path) else v
                                                    for k, v in vars(args).items()},
                                    "measured_single_gpu": str(MEASURED.relative_to(ROOT)), **results}, indent=2))


if __name__ == "__main__":
    main()
