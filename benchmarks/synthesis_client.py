"""Synthesis client throughput: requests/s and generated tokens/s against a local OpenAI-compatible
server that replies instantly (tests/synthesize/openai_server.py in its own process), so what is
measured is the client: arctic_pretrain.generation.openai.OpenAIClient at several concurrencies,
plus the `openai` package's and httpx's own async clients at one concurrency for comparison.

    python benchmarks/synthesis_client.py [--requests 4000] [--reply-tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arctic_pretrain.common.net import free_port  # noqa: E402
from arctic_pretrain.generation.openai import OpenAIClient  # noqa: E402


async def ours(url: str, concurrency: int, n: int) -> tuple[float, int]:
    client = OpenAIClient(url, "bench", concurrency=concurrency, max_retries=0)
    tokens = 0

    def done(i, out):
        nonlocal tokens
        tokens += out.completion_tokens or 0

    async with client:
        t0 = time.perf_counter()
        await client.map(range(n), lambda i: client.payload(messages=[{"role": "user", "content": f"seed {i}"}],
                                                            max_tokens=512, temperature=0.7, top_p=0.95), done)
        return time.perf_counter() - t0, tokens


async def openai_package(url: str, concurrency: int, n: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await client.chat.completions.create(model="bench", messages=[{"role": "user", "content": f"seed {i}"}])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    dt = time.perf_counter() - t0
    await client.close()
    return dt


async def httpx_client(url: str, concurrency: int, n: int) -> float:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i):
            async with sem:
                r = await client.post(url + "/chat/completions",
                                      json={"model": "bench", "messages": [{"role": "user", "content": f"seed {i}"}]})
                r.json()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--reply-tokens", type=int, default=256, help="words per reply (the server counts them as tokens)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/synthesis_client.json"))
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.synthesize.openai_server", "--port", str(port),
                               "--tokens", str(args.reply_tokens)], cwd=ROOT, stdout=subprocess.PIPE)
    server.stdout.readline()
    url = f"http://127.0.0.1:{port}/v1"
    rows = []
    try:
        asyncio.run(ours(url, 8, 200))  # warm-up
        for c in args.concurrency:
            n = args.requests if c > 1 else args.requests // 4
            dt, tokens = asyncio.run(ours(url, c, n))
            rows.append({"client": "arctic_pretrain (aiohttp)", "concurrency": c, "requests": n,
                         "requests_per_s": round(n / dt, 1), "generated_tokens_per_s": round(tokens / dt)})
            print(rows[-1], flush=True)
        n = args.requests // 2
        for name, fn in (("openai package", openai_package), ("httpx", httpx_client)):
            dt = asyncio.run(fn(url, 64, n))
            rows.append({"client": name, "concurrency": 64, "requests": n, "requests_per_s": round(n / dt, 1)})
            print(rows[-1], flush=True)
    finally:
        server.kill()
    result = {"machine": f"{os.cpu_count()} CPU cores (client and server share them)",
              "reply_tokens": args.reply_tokens, "rows": rows,
              "note": "instant replies: the client's ceiling; a vLLM node serving Llama-3.1-70B produces a few "
                      "thousand tokens/s, i.e. a few requests/s at ~1k tokens per reply"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
