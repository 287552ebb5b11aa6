"""Throughput and peak memory of the curation pipeline on local code, plus two same-run ratios.

    python benchmarks/curation_throughput.py --mb 100 [--mb 1000] [--workers 2] [--out /tmp/curation-bench]
    (needs pip install -e ".[data,bench]")

For each size: a corpus of real code from this machine (Python stdlib, site-packages, /usr/include; each
top-level package a repository) is built once, the whole pipeline runs with ``--workers`` processes,
and the script prints MB/s per core, peak memory (whole process tree and the largest process), and
each stage's share of the wall time. Then, on the same text and cores:
  - near-dedup signatures: ours (code tokens, vectorised hashing) vs datasketch MinHash(num_perm=256)
    over 5-gram shingles with update_batch, both on one process;
  - tokenization: the pipeline's group + tokenize stage vs raw ``tokenizers`` encode_batch on the
    curated files with the same tokenizer and the same cores.
Each ratio alternates its two sides ``--rounds`` times and keeps the best of each (the CPU may be shared).
Results go to ``<out>/benchmark-<mb>MB.json`` and, all sizes with a scaling summary (largest vs smallest:
MB/s per core and the largest process's peak memory), to ``benchmarks/results/curation_throughput.json``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import psutil

from arctic_pretrain.data.languages import PAPER_LANGUAGES, language_of

MAX_FILE = 1_000_000


def _sources() -> list[tuple[Path, int]]:
    """(root, depth at which a folder is a repository): this Python's stdlib modules, /usr/include,
    site-packages packages, then (for the 1 GB size) the Google Cloud SDK's packages and the other
    pyenv Pythons' stdlibs (older versions of the same modules: the near-duplicates real crawls hold),
    their site-packages, and the remaining code trees here (gcloud platform, npm, CUDA headers, Rust)."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path("/usr/include"), Path(paths["purelib"])]
    gcloud = shutil.which("gcloud")
    sdk = Path(gcloud).resolve().parent.parent if gcloud else None
    if sdk is not None:
        roots += [sdk / "lib" / "third_party", sdk / "lib" / "googlecloudsdk", sdk / "lib" / "surface"]
    installs = Path(paths["stdlib"]).resolve().parents[2]  # e.g. pyenv's versions/: this Python's siblings
    roots += sorted(installs.glob("*/lib/python[23].*"), reverse=True)
    roots += sorted(installs.glob("*/lib/python[23].*/site-packages"))
    roots += [sdk / "platform"] if sdk is not None else []
    roots += [Path("/usr/lib/python3/dist-packages"), Path("/usr/lib/node_modules"),
              *sorted(Path("/usr/local").glob("cuda*/include")),
              *sorted(Path(os.environ.get("RUSTUP_HOME", Path.home() / ".rustup")).glob("toolchains/*"))]
    return [(root, 1) for root in roots if root.is_dir()]


def build_corpus(folder: Path, megabytes: float) -> float:
    """Copy real code files (known languages) until ``megabytes``; cached by size. Returns MB."""
    done = folder / "READY"
    if done.is_file():
        return float(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    budget, total = int(megabytes * 2**20), 0
    seen: set[str] = set()
    for root, _ in _sources():
        if total >= budget:
            break
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages", "dist-packages"))
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if language_of(name) not in PAPER_LANGUAGES or src.is_symlink():  # code, not data files
                    continue
                try:
                    size = src.stat().st_size
                    if size == 0 or size > MAX_FILE or str(src.resolve()) in seen:
                        continue
                    seen.add(str(src.resolve()))
                    rel = src.relative_to(root)
                    repo = f"{root.name}-{rel.parts[0]}" if len(rel.parts) > 1 else f"{root.name}-top"
                    dest = folder / repo / Path(*rel.parts[1:] or rel.parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
                except OSError:
                    continue
                total += size
                if total >= budget:
                    break
            if total >= budget:
                break
    done.write_text(str(total / 2**20))
    return total / 2**20


class PeakMemory:
    """Poll the RSS of this process and its children: peak of the sum and of the largest process, and
    the largest process's peak per stage (the stage whose log folder under ``logs`` is newest)."""

    def __init__(self, logs: Path | None = None, interval: float = 0.2) -> None:
        self.interval, self.total, self.largest = interval, 0, 0
        self.logs = logs
        self.by_stage: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _stage(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return max((d for d in self.logs.iterdir() if d.is_dir()), key=lambda d: d.stat().st_ctime).name
        return "-"

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = []
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss.append(p.memory_info().rss)
            self.total, self.largest = max(self.total, sum(rss)), max(self.largest, max(rss, default=0))
            if self.logs is not None:
                stage = self._stage()
                self.by_stage[stage] = max(self.by_stage.get(stage, 0), max(rss, default=0))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _alternate(first, second, rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` seconds of two callables run alternately: on a shared machine the load drifts,
    and alternating puts both under the same drift."""
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return min(a), min(b)


def signature_ratio(texts: list[str], rounds: int) -> dict:
    """MB/s of our signature (shingles + 250 hashes) vs datasketch MinHash(256) update_batch, one process."""
    from datasketch import MinHash

    from arctic_pretrain.curate.config import DedupConfig
    from arctic_pretrain.text.dedup import CodeMinhashSignature, code_shingles

    mb = sum(len(t.encode()) for t in texts) / 2**20
    step = CodeMinhashSignature(os.devnull, DedupConfig())

    def ours() -> float:
        start = time.perf_counter()
        for t in texts:
            step.signature(code_shingles(t, 5))
        return time.perf_counter() - start

    def theirs() -> float:
        start = time.perf_counter()
        for t in texts:
            words = t.split()
            m = MinHash(num_perm=256)
            m.update_batch([" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))])
        return time.perf_counter() - start

    t_ours, t_theirs = _alternate(ours, theirs, rounds)
    return {"text_mb": round(mb, 1), "ours_mb_s": round(mb / t_ours, 2), "datasketch_mb_s": round(mb / t_theirs, 2),
            "ratio": round(t_theirs / t_ours, 2)}


def tokenization_ratio(cfg, rounds: int) -> dict:
    """The group + tokenize stage (re-run alone: earlier stages are complete) vs raw encode_batch over the
    same curated files with the same tokenizer and cores."""
    from tokenizers import Tokenizer

    from arctic_pretrain.curate.pipeline import run

    out = Path(cfg.output_dir)
    texts = [json.loads(line)["text"] for f in sorted((out / "documents").glob("*/*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines()]
    mb = sum(len(t.encode()) for t in texts) / 2**20
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    tokens = 0

    def raw() -> float:
        nonlocal tokens
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(texts), 256):
            tokens += sum(len(e.ids) for e in tok.encode_batch(texts[i:i + 256], add_special_tokens=False))
        return time.perf_counter() - start

    def stage() -> float:
        for name in ("tokens", "logs/tokenize", "logs/finalize"):
            shutil.rmtree(out / name, ignore_errors=True)
        walls: dict[str, float] = {}
        run(cfg, stage_wall_s=walls)
        return walls["tokenize"]

    t_stage, t_raw = _alternate(stage, raw, rounds)
    return {"text_mb": round(mb, 1), "raw_mb_s": round(mb / t_raw, 2), "raw_tokens_s": round(tokens / t_raw),
            "pipeline_mb_s": round(mb / t_stage, 2), "ratio": round(t_raw / t_stage, 2)}


def bench(megabytes: float, workers: int, out_root: Path, skip_ratios: bool, rounds: int) -> dict:
    from arctic_pretrain.curate.config import CurateConfig, ExecutorConfig, TokenizeConfig
    from arctic_pretrain.curate.pipeline import run

    corpus = out_root / f"corpus-{megabytes:g}MB"
    corpus_mb = build_corpus(corpus, megabytes)
    out = out_root / f"run-{megabytes:g}MB"
    shutil.rmtree(out, ignore_errors=True)
    cfg = CurateConfig(inputs=[str(corpus)], output_dir=str(out),
                       executor=ExecutorConfig(tasks=4 * workers, workers=workers),
                       tokenize=TokenizeConfig(train_vocab_size=32_000, train_sample_mb=16), progress=True)
    walls: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with PeakMemory(out / "logs") as mem:
        run(cfg, stage_wall_s=walls)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    result = {
        "corpus_mb": round(corpus_mb, 1), "workers": workers, "wall_s": round(wall, 1),
        "mb_s_per_core": round(corpus_mb / wall / workers, 3),
        "peak_rss_total_mb": round(mem.total / 2**20), "peak_rss_largest_process_mb": round(mem.largest / 2**20),
        "peak_rss_largest_by_stage_mb": {k: round(v / 2**20) for k, v in mem.by_stage.items()},
        "stage_wall_share": {k: round(v / wall, 3) for k, v in walls.items()},
        "step_cpu_share": dict(sorted(report["stage_time_share"].items(), key=lambda kv: -kv[1])[:10]),
        "tokens": report["tokens"], "removals": report["removals"],
        # the machine's 1-minute load average (runnable processes) before and after: on a shared machine a
        # load above the core count slows every figure here
        "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)], "cores": os.cpu_count(),
    }
    if not skip_ratios:
        py = sorted(corpus.rglob("*.py"))
        texts, total = [], 0
        for p in py:
            texts.append(p.read_text(errors="replace"))
            total += len(texts[-1])
            if total > 32 * 2**20:
                break
        result["signature_vs_datasketch"] = signature_ratio(texts, rounds)
        cfg.progress = False
        result["tokenize_vs_encode_batch"] = tokenization_ratio(cfg, rounds)
    return result


def float_mb(key: str) -> float:
    return float(key.removesuffix("MB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, action="append", help="corpus size(s) in MB (default 100)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "curation-bench")
    parser.add_argument("--skip-ratios", action="store_true", help="only the pipeline run")
    parser.add_argument("--rounds", type=int, default=2, help="alternated repeats of each ratio (best of)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for mb in args.mb or [100.0]:
        result = bench(mb, args.workers, args.out, args.skip_ratios, args.rounds)
        results[f"{mb:g}MB"] = result
        (args.out / f"benchmark-{mb:g}MB.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), file=sys.stdout)
    if len(results) > 1:  # the scale check: throughput per core and per-process memory, largest vs smallest
        small, large = results[min(results, key=float_mb)], results[max(results, key=float_mb)]
        results["scaling"] = {
            "mb_s_per_core_ratio": round(large["mb_s_per_core"] / small["mb_s_per_core"], 2),
            "peak_rss_largest_process_ratio": round(large["peak_rss_largest_process_mb"]
                                                    / small["peak_rss_largest_process_mb"], 2)}
        print(json.dumps(results["scaling"]))
    summary = Path(__file__).resolve().parent / "results" / "curation_throughput.json"
    summary.parent.mkdir(exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
