"""Run-to-run determinism of 2-rank CPU training, and where a run leaves the others (issue 16).

Launches the same deterministic experiment=tiny run (2 ranks, ZeRO-1, fp32) ``--runs`` times. In each rank a
wrapper around DeepSpeedEngine records, per micro-step, the loss and a hash of every local gradient right
after backward, and at every optimizer step a hash of the reduced gradient partitions and of every
parameter. Each run is compared with the first: the first record that differs says which of forward
(loss), backward (local gradients), reduction or update moved, on which rank and at which step.

    python benchmarks/determinism_probe.py --runs 20 --load 4
    # -> runs/determinism-probe/summary.json; a differing run's probe files stay in runs/determinism-probe/

``--load K`` keeps K busy processes running beside the launches (the suite's failures came under load).
On 2 cores one launch takes ~20 s quiet, ~60-90 s under load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("loss", "grads", "reduced", "params")


def child(argv: list[str]) -> None:
    """One rank: launch/train.py with the recording wrapper around DeepSpeedEngine.backward/step."""
    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine

    out = Path(os.environ["PROBE_DIR"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    micro = [0]

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:12]

    def emit(row: dict) -> None:
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    backward, step = DeepSpeedEngine.backward, DeepSpeedEngine.step

    def probed_backward(self, loss, *args, **kwargs):
        result = backward(self, loss, *args, **kwargs)
        grads = {n: digest(p.grad) for n, p in self.module.named_parameters() if p.grad is not None}
        emit({"kind": "backward", "step": self.global_steps + 1, "micro": micro[0], "loss": repr(float(loss)),
              "grads": grads})
        return result

    def probed_step(self, *args, **kwargs):
        boundary = self.is_gradient_accumulation_boundary()
        partitions = getattr(self.optimizer, "averaged_gradients", None) if boundary else None
        reduced = ({str(g): [digest(t) for t in ts] for g, ts in partitions.items() if ts is not None}
                   if isinstance(partitions, dict) else None)
        result = step(self, *args, **kwargs)
        if boundary:
            emit({"kind": "step", "step": self.global_steps, "micro": micro[0], "reduced": reduced,
                  "params": {n: digest(p.data) for n, p in self.module.named_parameters()}})
        micro[0] += 1
        return result

    DeepSpeedEngine.backward, DeepSpeedEngine.step = probed_backward, probed_step
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    sys.argv = [str(ROOT / "launch" / "train.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def records(probe: Path) -> dict[tuple, dict]:
    rows = {}
    for rank in (0, 1):
        for line in (probe / f"rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[(row["step"], row["micro"], row["kind"], rank)] = row
    return rows


def first_difference(got: dict, ref: dict) -> dict | None:
    for key in sorted(ref):
        a, b = got.get(key), ref[key]
        if a is None:
            return {"at": list(key), "moved": "missing"}
        moved = {}
        for field in FIELDS:
            if a.get(field) != b.get(field):
                if isinstance(b.get(field), dict):
                    moved[field] = sorted(n for n in {*b[field], *(a.get(field) or {})}
                                          if (a.get(field) or {}).get(n) != b[field].get(n))
                else:
                    moved[field] = [a.get(field), b.get(field)]
        if moved:
            return {"at": dict(zip(("step", "micro", "kind", "rank"), key, strict=True)), "moved": moved}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the launches")
    ap.add_argument("--out", default=str(ROOT / "runs" / "determinism-probe"))
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from arctic_pretrain.common.net import free_port
    from arctic_pretrain.data.demo import build_demo
    from arctic_pretrain.train.config import DataConfig

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    demo = out / "demo"
    tiny = OmegaConf.load(ROOT / "conf" / "train" / "experiment" / "tiny.yaml")
    build_demo(demo, tiny.data.demo_megabytes, DataConfig.demo_vocab_size)  # as tests/conftest.py::demo_cache
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    summary: dict = {"runs": args.runs, "steps": args.steps, "load": args.load, "differ": {}}
    ref = None
    try:
        for i in range(args.runs):
            run = out / f"run{i:03d}"
            cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                   __file__, "--child", "experiment=tiny", f"output_dir={run / 'run'}", f"data.demo_dir={demo}",
                   "checkpoint.interval=4", "training.deterministic=true", f"max_steps={args.steps}"]
            start = time.time()
            env = {**os.environ, "PROBE_DIR": str(run / "probe"), "WANDB_MODE": "disabled"}
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            (run / "launch.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                sys.exit(f"run {i} failed ({proc.returncode}): see {run / 'launch.log'}")
            got = records(run / "probe")
            ref = ref or got
            diff = first_difference(got, ref)
            print(f"run {i}: {'EQUAL' if diff is None else 'DIFFERENT ' + json.dumps(diff)} "
                  f"({time.time() - start:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
            if diff is None and i > 0:
                shutil.rmtree(run)
            elif diff is not None:
                summary["differ"][run.name] = diff
    finally:
        for p in busy:
            p.kill()
    summary["equal"] = args.runs - len(summary["differ"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['equal']} of {args.runs} runs equal to run 0; {out / 'summary.json'}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child([a for a in sys.argv[1:] if a != "--child" and not a.startswith("--local_rank")])
    else:
        main()
