"""Peak memory of the annotate stage's select and report against the number of scored files.

    python benchmarks/select_memory.py [--sizes 100000 1000000 10000000] [--baseline-ref <commit>]

For each size it writes synthetic score files in ScoreFiles' format (one ``<rank>.jsonl`` per 10^6
files, the bytes json.dumps writes: five languages, 1% unscored, scores rounded to 6 decimals as
ScoreFiles rounds them, so ties are common at 10^7), then runs SelectTop and WriteReport (no HumanEval
diagnostic) each in a fresh Python process and records that process's peak RSS (VmHWM) and wall time.
Select runs with two targets: a fixed ``select.tokens`` (``--fraction`` of the smallest size's tokens:
the paper's case, a fixed 12.5B whatever the corpus) and a proportional one (``--fraction`` of each
size's tokens: the sorted selection grows with the corpus, so DuckDB spills beyond
``select.memory_limit``), the latter at each of ``--memory-limits``. ``--baseline-ref`` also runs the
select and report modules of that git ref (the commit before the out-of-core change) on the sizes up
to ``--baseline-max`` with the proportional target, and checks that both write the same selection.
The phase-2 tokenization that follows select in the pipeline (GroupAndTokenize over ``selected/``) is
not part of this measurement. Results: benchmarks/results/select_memory.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = {"python": 0.5, "java": 0.2, "c": 0.15, "go": 0.1, "rust": 0.05}  # files and select.shares
SHARD = 1_000_000  # files per score file (one scoring task's)


def write_scores(folder: Path, n: int, seed: int = 0) -> int:
    """``n`` score records over ceil(n / SHARD) files; returns their tokens. Vectorised draws, one
    f-string per line (the bytes json.dumps writes for such a record)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(LANGUAGES)
    total = 0
    for rank, lo in enumerate(range(0, n, SHARD)):
        m = min(SHARD, n - lo)
        lang = rng.choice(len(names), size=m, p=list(LANGUAGES.values())).tolist()
        scores = rng.beta(2, 5, size=m).tolist()
        tokens = np.maximum(1, rng.lognormal(6, 1.2, size=m)).astype(np.int64).tolist()
        empty = (rng.random(m) < 0.01).tolist()
        repos = rng.integers(0, max(1, n // 20), size=m).tolist()
        lines: list[str] = []
        offset = 0
        with open(folder / f"{rank:05d}.jsonl", "w") as fh:
            for i in range(m):
                language = names[lang[i]]
                file = f"{language}/g{rank}-r{repos[i] % 64}.jsonl"
                if empty[i]:
                    score, tok, status = "null", 0, "empty"
                else:
                    score, tok, status = repr(round(scores[i], 6)), tokens[i], "ok"
                    total += tok
                lines.append(f'{{"key": "{file}:{offset}", "file": "{file}", "offset": {offset}, '
                             f'"language": "{language}", "repo": "org{repos[i] % 997}/repo{repos[i]}", '
                             f'"path": "src/pkg{i % 13}/module_{lo + i}.{language[:2]}", "score": {score}, '
                             f'"tokens": {tok}, "status": "{status}"}}\n')
                offset += 200 + tok * 3
                if len(lines) == 100_000:  # written in pieces: the generator stays small
                    fh.writelines(lines)
                    lines.clear()
            fh.writelines(lines)
    return total


def load_modules(ref: str | None, tmp: Path):
    """(selection, report) modules: this checkout's, or those of git ``ref`` (the rest of the package is
    this checkout's: the score format and config are unchanged)."""
    if ref is None:
        from arctic_pretrain.annotate import report, selection

        return selection, report
    mods = []
    for name in ("selection", "report"):
        path = tmp / f"{name}_at_{ref.replace('/', '_')}.py"
        path.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:arctic_pretrain/annotate/{name}.py"],
                                       check=True, capture_output=True, text=True).stdout)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return tuple(mods)


def child(args) -> None:
    """One step (select or report) over ``args.out``; prints wall time and this process's peak RSS."""
    from omegaconf import OmegaConf

    from arctic_pretrain.annotate.config import AnnotateConfig

    out = Path(args.out)
    dotlist = [f"curated={out / 'curated'}", f"output_dir={out}", f"select.tokens={args.tokens}",
               "select.phase_tokens=50B", "report.humaneval=false",
               f"select.memory_limit={args.memory_limit}", *(f"select.shares.{k}={v}" for k, v in LANGUAGES.items())]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AnnotateConfig), OmegaConf.from_dotlist(dotlist)))
    selection, report = load_modules(args.code, Path(tempfile.mkdtemp()))
    start = time.perf_counter()
    if args.child == "select":
        result = selection.SelectTop(cfg, out / "curated", out, {"validation": {}}).run()
        summary = {"selected_files": sum(v["files"] for v in result["languages"].values()),
                   "selected_tokens": result["tokens"]["selected"]}
    else:
        result = report.WriteReport(cfg, out / "curated", out).run()
        summary = {"report_languages": len(result["languages"])}
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_kib() / 1024, 1), **summary}))


def peak_rss_kib() -> int:
    """This process's peak RSS since its exec: VmHWM. (``ru_maxrss`` is not: Linux carries the parent's
    RSS at fork over the exec, so a child of the 0.5 GB generator would report at least that.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: an upper bound


def selection_digest(out: Path) -> str:
    """One hash of selected/<language>.jsonl (bytes) and selection.json's per-language figures."""
    h = hashlib.sha256(json.dumps(json.loads((out / "selection.json").read_text())["languages"],
                                  sort_keys=True).encode())
    for path in sorted((out / "selected").glob("*.jsonl")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def run_step(step: str, out: Path, tokens: int, code: str | None, memory_limit: str) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--out", str(out), "--tokens", str(tokens),
           "--memory-limit", memory_limit] + (["--code", code] if code else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{step} ({code or 'this checkout'}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--fraction", type=float, default=0.1,
                    help="select.tokens: this fraction of the smallest size's tokens (fixed target) and of each "
                         "size's own tokens (proportional target)")
    ap.add_argument("--memory-limits", nargs="+", default=["1GB", "256MB"],
                    help="select.memory_limit values for the proportional target (the first also for the rest)")
    ap.add_argument("--baseline-ref", default=None, help="git ref whose select/report to measure as well")
    ap.add_argument("--baseline-max", type=int, default=1_000_000, help="largest size the baseline runs on")
    ap.add_argument("--workdir", default=None, help="where the score files go (default: a temporary folder)")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "select_memory.json"))
    ap.add_argument("--child", choices=["select", "report"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--memory-limit", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="select-memory-"))
    if args.baseline_ref:  # a commit, so that the result names the code it measured
        args.baseline_ref = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline_ref],
                                           check=True, capture_output=True, text=True).stdout.strip()
    rows, fixed, limit = [], None, args.memory_limits[0]
    for n in args.sizes:
        out = work / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        total = write_scores(out / "scores", n)
        fixed = fixed or int(total * args.fraction)
        row = {"scored_files": n, "score_bytes": sum(p.stat().st_size for p in (out / "scores").iterdir()),
               "scored_tokens": total, "write_s": round(time.perf_counter() - start, 1),
               "fixed_target": {"select_tokens": fixed, "select": run_step("select", out, fixed, None, limit)},
               "proportional": {"select_tokens": int(total * args.fraction)}}
        for lim in args.memory_limits:
            row["proportional"][lim] = run_step("select", out, row["proportional"]["select_tokens"], None, lim)
        digest = selection_digest(out)  # of the last proportional run
        row["report"] = run_step("report", out, 0, None, limit)
        if args.baseline_ref and n <= args.baseline_max:
            row["baseline"] = {step: run_step(step, out, row["proportional"]["select_tokens"], args.baseline_ref,
                                              limit) for step in ("select", "report")}
            row["same_selection"] = selection_digest(out) == digest
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)

    def ratio(peak) -> float:
        return round(peak(rows[-1]) / peak(rows[0]), 2)

    result = {"benchmark": "select_memory", "rows": rows, "fraction": args.fraction,
              "memory_limits": args.memory_limits, "baseline_ref": args.baseline_ref,
              "peak_rss_ratio_largest_to_smallest": {
                  "select_fixed_target": ratio(lambda r: r["fixed_target"]["select"]["peak_rss_mb"]),
                  **{f"select_proportional_{lim}": ratio(lambda r, lim=lim: r["proportional"][lim]["peak_rss_mb"])
                     for lim in args.memory_limits},
                  "report": ratio(lambda r: r["report"]["peak_rss_mb"])},
              "cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
              "python": platform.python_version(), "seed": 0}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
