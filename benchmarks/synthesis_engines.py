"""Our synthesis client/stage beside datatrove's inference runner (datatrove.pipeline.inference, 0.10.x,
server_type="endpoint": an external OpenAI-compatible server), on what decides the choice:

    throughput    requests/s against a real server process on loopback (tests/synthesize/openai_server.py,
                  256-token replies, no delay), concurrency 64; datatrove with and without its chunked
                  checkpoints + sqlite request cache (what it needs to resume after a kill)
    faults        one 500, one 429 (Retry-After) and one dropped connection among 200 requests
    unreachable   a base URL where nothing listens: seconds until the run stops, and what it says
    kill          SIGKILL mid-run, restart, count records per id in the output: duplicates, missing, lines
                  that do not parse (datatrove: its checkpointed JsonlWriter output; ours: launch/synthesize.py)

    python benchmarks/synthesis_engines.py [--requests 2000] [--out benchmarks/results/synthesis_engines.json]
Needs the bench extra (httpx, aiosqlite, aiofiles, xxhash: datatrove's inference runner imports them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arctic_pretrain.generation.openai import OpenAIClient, RequestFailed, ServerUnavailable  # noqa: E402

MODEL = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.synthesize.openai_server", "--port", str(port),
                             "--model", MODEL, *extra], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "serving on ..."
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def payload(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"seed {i}"}], "max_tokens": 512, "temperature": 0.7}


# --- ours ------------------------------------------------------------------------------------------------
def ours(url: str, n: int, concurrency: int = 64, **kw) -> dict:
    client = OpenAIClient(url, MODEL, concurrency=concurrency, **kw)
    done, failed = [], []

    def finished(i, out):
        (failed if isinstance(out, RequestFailed) else done).append(i)

    async def main():
        async with client:
            await client.check_model()
            await client.map(range(n), lambda i: {"model": MODEL, **payload(i)}, finished)

    t0 = time.perf_counter()
    error = None
    try:
        asyncio.run(main())
    except ServerUnavailable as err:
        error = str(err)
    wall = time.perf_counter() - t0
    return {"completed": len(done), "failed": len(failed), "wall_s": round(wall, 2),
            "requests_per_s": round(len(done) / wall, 1), "error": error, "client": dict(client.stats)}


# --- datatrove -------------------------------------------------------------------------------------------
def datatrove_runner(url: str, out: str, checkpoints: str | None, concurrency: int = 64):
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    async def rollout(doc, generate):
        res = await generate(payload(int(doc.id)))
        return {"text": res.text, "finish_reason": res.finish_reason}

    cfg = InferenceConfig(server_type="endpoint", model_name_or_path=MODEL, endpoint_url=url.removesuffix("/v1"),
                          max_concurrent_generations=concurrency, metric_interval=3600)
    name = "${rank}_chunk_${chunk_index}.jsonl" if checkpoints else "${rank}.jsonl"
    return InferenceRunner(rollout, cfg, JsonlWriter(out, output_filename=name, compression=None),
                           checkpoints_local_dir=checkpoints, records_per_chunk=100)


def datatrove(url: str, n: int, checkpoints: bool = False, concurrency: int = 64) -> dict:
    from datatrove.data import Document

    with tempfile.TemporaryDirectory() as tmp:
        runner = datatrove_runner(url, f"{tmp}/out", f"{tmp}/ckpt" if checkpoints else None, concurrency)
        docs = (Document(text=f"seed {i}", id=str(i)) for i in range(n))
        t0 = time.perf_counter()
        error = None
        try:
            runner.run(docs)
        except BaseException as err:  # noqa: BLE001 - what it raises is the measurement
            error = f"{type(err).__name__}: {str(err)[:300]}"
        wall = time.perf_counter() - t0
        lines = sum(p.read_text().count("\n") for p in Path(tmp, "out").glob("*.jsonl"))
    return {"completed": lines, "wall_s": round(wall, 2), "requests_per_s": round(lines / wall, 1), "error": error}


def datatrove_child(url: str, tmp: str, n: int) -> None:
    """The datatrove side of the kill test, in its own process."""
    from datatrove.data import Document

    runner = datatrove_runner(url, f"{tmp}/out", f"{tmp}/ckpt", concurrency=8)
    runner.run(Document(text=f"seed {i}", id=str(i)) for i in range(n))


def count_output(files: list[Path], key) -> dict:
    ids, bad = [], 0
    for f in files:
        for line in f.read_text().splitlines():
            try:
                ids.append(key(json.loads(line)))
            except ValueError:
                bad += 1
    return {"records": len(ids), "unique": len(set(ids)), "duplicates": len(ids) - len(set(ids)),
            "unparsable_lines": bad}


def kill_datatrove(n: int = 1000) -> dict:
    port = free_port()
    srv = start_server(port, "--delay", "0.02")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"http://127.0.0.1:{port}/v1"
            cmd = [sys.executable, __file__, "--child", url, tmp, str(n)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ckpt = Path(tmp, "ckpt")
            while proc.poll() is None and sum(p.read_bytes().count(b"\n") for p in ckpt.glob("*/*.jsonl")) < 250:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            at_kill = count_output(sorted(Path(tmp, "out").glob("*.jsonl")), lambda r: r["id"])
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, capture_output=True).returncode
            out = count_output(sorted(Path(tmp, "out").glob("*.jsonl")), lambda r: r["id"])
            out.update(expected=n, missing=n - out["unique"], restart_rc=rc, restart_s=round(time.perf_counter() - t0, 1),
                       output_records_at_kill=at_kill["records"])
            return out
    finally:
        srv.kill()


def kill_ours() -> dict:
    from tests.synthesize.conftest import build_curated, build_seeds

    port = free_port()
    srv = start_server(port, "--delay", "0.05", "--model", "meta-llama/Llama-3.1-70B-Instruct")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = build_curated(Path(tmp) / "data")
            seeds = build_seeds(root, root / "high_quality")
            out = Path(tmp) / "synthetic"
            cmd = [sys.executable, "launch/synthesize.py", f"seeds={seeds}", f"output_dir={out}",
                   f"backend.base_url=http://127.0.0.1:{port}/v1", "progress=false", "backend.concurrency=4",
                   "filter.syntax=keep"]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            gen = out / "generations" / "00000.jsonl"
            while proc.poll() is None and not (gen.is_file() and gen.read_bytes().count(b"\n") >= 15):
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode
            res = count_output([gen], lambda r: r["id"])
            expected = json.loads((out / "synthesis.json").read_text())["requested"]
            res.update(expected=expected, missing=expected - res["unique"], restart_rc=rc,
                       restart_s=round(time.perf_counter() - t0, 1))
            return res
    finally:
        srv.kill()


def faults_run(n: int = 200) -> dict:
    from tests.synthesize.openai_server import OpenAIServer

    plan = {20: "500", 60: "429", 100: "drop"}
    out = {}
    for name in ("ours", "datatrove"):
        with OpenAIServer(faults=lambda i, body: plan.get(i), retry_after=0.5, models=(MODEL,)) as srv:
            out[name] = (ours(srv.url, n, concurrency=8, backoff_s=0.1) if name == "ours"
                         else datatrove(srv.url, n, concurrency=8))
            out[name]["faults_served"] = dict(srv.faults_served)
    return out


def unreachable_run(cap_s: float = 60.0) -> dict:
    """datatrove runs in its own process, stopped after ``cap_s`` (its endpoint readiness loop defaults to
    server_ready_max_attempts=300 x server_ready_delay_sec=5 s, twice with server_start_max_retries=1)."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import synthesis_engines as b; " \
           f"print(b.datatrove({url!r}, 50))"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cap_s)
        dt = {"stopped_after_s": round(time.perf_counter() - t0, 1), "rc": proc.returncode,
              "stdout": proc.stdout[-300:], "names_url": url.removesuffix("/v1") in proc.stderr}
    except subprocess.TimeoutExpired:
        dt = {"stopped_after_s": None, "still_waiting_after_s": cap_s}
    return {"ours": ours(url, 50), "datatrove": dt}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        datatrove_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthesis_engines.json"))
    ap.add_argument("--sections", default="throughput,faults,unreachable,kill",
                    help="comma list; results of other sections already in --out are kept")
    args = ap.parse_args()
    from importlib.metadata import version

    out = Path(args.out)
    res: dict = json.loads(out.read_text()) if out.is_file() else {}
    res.update(datatrove=version("datatrove"), cpus=os.cpu_count())
    sections = args.sections.split(",")
    if "throughput" in sections:
        port = free_port()
        srv = start_server(port, "--tokens", "256")
        try:
            url = f"http://127.0.0.1:{port}/v1"
            res["throughput"] = {"ours": ours(url, args.requests),
                                 "datatrove": datatrove(url, args.requests),
                                 "datatrove_checkpointed": datatrove(url, args.requests, checkpoints=True),
                                 "requests": args.requests, "concurrency": 64, "load_avg": os.getloadavg()[0]}
        finally:
            srv.kill()
    runs = {"faults": faults_run, "unreachable": unreachable_run,
            "kill": lambda: {"datatrove": kill_datatrove(), "ours": kill_ours()}}
    for name in sections:
        if name in runs:
            res[name] = runs[name]()
        print(name, json.dumps(res.get(name), indent=1), flush=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
