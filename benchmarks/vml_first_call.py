"""How often a fresh process's first parallel MKL VML call computes one thread's chunk wrong (issue 16).

Each trial is a new Python process, as each training rank is: it starts the OpenMP pool, computes the cos
of a RoPE-shaped float32 tensor (4096 elements: two 2048-element chunks, one per thread), computes it again
and counts the elements that differ (the second call is always right). Variants alternate: ``as_is`` (what
torch does) and ``resolved`` (``common.cpu_math.resolve_vml_kernels`` first, as train/runner.py does).

    python benchmarks/vml_first_call.py --processes 150 --out benchmarks/results/vml_first_call.json

The race is rare and load-dependent (1 in 40 and 1 in 150 fresh processes here); ``--load K`` adds K busy
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, torch
if sys.argv[1] == "resolved":
    from arctic_pretrain.common.cpu_math import resolve_vml_kernels
    resolve_vml_kernels()
(torch.ones(100000) + 1).sum()  # the OpenMP pool is up: both threads enter the next call together
inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
pos = torch.arange(128).repeat(2, 1).float()
emb = (inv[None, :, None] @ pos[:, None, :]).transpose(1, 2).repeat(1, 1, 2)  # [2, 128, 16]
first, again = emb.cos(), emb.cos()
print((first != again).sum().item())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=100, help="fresh processes per variant")
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the trials")
    ap.add_argument("--out", default=None, help="JSON results (e.g. benchmarks/results/vml_first_call.json)")
    args = ap.parse_args()

    import torch

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    counts = {v: {"processes": 0, "wrong": 0, "max_wrong_elements": 0} for v in ("as_is", "resolved")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    try:
        for _ in tqdm(range(args.processes), desc="process pairs"):
            for variant, c in counts.items():
                out = subprocess.run([sys.executable, "-c", CHILD, variant], env=env, capture_output=True,
                                     text=True, check=True).stdout
                wrong = int(out.split()[-1])
                c["processes"] += 1
                c["wrong"] += wrong > 0
                c["max_wrong_elements"] = max(c["max_wrong_elements"], wrong)
    finally:
        for p in busy:
            p.kill()
    result = {"benchmark": "vml_first_call", "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "load": args.load, "seconds": round(time.time() - start), **counts}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
