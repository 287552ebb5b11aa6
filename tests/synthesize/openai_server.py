"""A local OpenAI-compatible server for tests and the client benchmark: the real wire protocol
(HTTP/1.1 with keep-alive, JSON bodies of /v1/chat/completions and /v1/completions, the `usage` and
`finish_reason` fields) on a loopback port, with fault injection.

It stands for vLLM/SGLang/TGI serving a model, which cannot run here. Replies come from a
``responder(body) -> (text, finish_reason)`` callable; faults from a ``faults(n, body) -> kind | None``
callable called for every request (``n`` counts requests so far). Kinds:

    "timeout"    hold the request for ``hold_s`` seconds (past the client's timeout), then close
    "429"        429 Too Many Requests with ``Retry-After: <retry_after>``
    "500"        500 Internal Server Error (an OpenAI-style error body)
    "drop"       close the connection without a response
    "malformed"  200 with a body that is not JSON

``GET /v1/models`` lists ``models`` (default: the synthesis config's default model), as vLLM does.
Run alone (the benchmark, kill tests): ``python -m tests.synthesize.openai_server --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from arctic_pretrain.synthesize.config import BackendConfig

Responder = Callable[[dict], tuple[str, str]]
DEFAULT_MODEL = BackendConfig.model  # what a synthesis run asks for unless told otherwise
Faults = Callable[[int, dict], "str | None"]


def prompt_text(body: dict) -> str:
    """The text a request asks about: the last chat message, or the completion prompt."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body.get("prompt", "")


WORDS = ("alpha", "beta", "gamma", "delta", "total", "count", "index", "value", "items", "limit", "left", "right",
         "node", "edge", "path", "cost", "score", "width", "height", "depth", "queue", "stack", "cache", "token")
OPS = ("+", "-", "*", "//", "%", "^", "|", "&")


def python_file(key: str, lines: int = 12) -> str:
    """A valid Python function, different per key (replies must not be near duplicates of each other)."""
    rng = random.Random(key)
    names = rng.sample(WORDS, 6)
    params = [f"{n}_{rng.randint(0, 99)}" for n in names[:3]]
    body, known = [], list(params)
    for i in range(lines):
        target = f"{rng.choice(names)}_{i}"
        body.append(f"    {target} = {rng.choice(known)} {rng.choice(OPS)} {rng.randint(1, 9999)}")
        known.append(target)
    tag = hashlib.sha1(key.encode()).hexdigest()[:6]
    return (f"def {names[0]}_{names[1]}_{tag}({', '.join(params)}):\n"
            f"    \"\"\"Combine {names[2]} and {names[3]}.\"\"\"\n" + "\n".join(body) + f"\n    return {known[-1]}\n")


def echo_responder(body: dict) -> tuple[str, str]:
    """An instant, deterministic OSS-Instruct style reply: a valid Python file unique per prompt."""
    key = hashlib.sha1(prompt_text(body).encode()).hexdigest()
    text = (f"[Problem Description]\nWrite the function below ({key[:8]}).\n\n"
            f"[Solution]\n```python\n{python_file(key)}```\n")
    return text, "stop"


class OpenAIServer:
    """Serve in a background thread (``with OpenAIServer(...) as srv: srv.url``) or in the foreground."""

    def __init__(self, responder: Responder = echo_responder, faults: Faults | None = None, port: int = 0,
                 retry_after: float = 1.0, hold_s: float = 5.0, delay_s: float = 0.0,
                 models: tuple[str, ...] = (DEFAULT_MODEL,)) -> None:
        self.responder, self.faults, self.port, self.models = responder, faults, port, models
        self.retry_after, self.hold_s, self.delay_s = retry_after, hold_s, delay_s
        self.requests = 0
        self.faults_served: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # prompt text -> successful replies
        self.auth: Counter[str] = Counter()  # Authorization headers seen
        self.log: list[tuple[float, str, str]] = []  # (time, prompt sha1, outcome)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- HTTP ------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body_raw = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._respond(method, path, body_raw, writer, headers):
                    return
                if headers.get("connection", "").lower() == "close":  # HTTP/1.1: the client asked to close
                    await writer.drain()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _send(self, writer: asyncio.StreamWriter, status: str, body: bytes, extra: str = "") -> None:
        writer.write(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                     f"{extra}\r\n".encode() + body)

    async def _respond(self, method: str, path: str, body_raw: bytes, writer: asyncio.StreamWriter,
                       headers: dict) -> bool:
        """Answer one request; False closes the connection."""
        if method == "GET" and path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
            self._send(writer, "200 OK", json.dumps({"object": "list", "data": data}).encode())
            return True
        if method != "POST" or path.rstrip("/") not in ("/v1/chat/completions", "/v1/completions"):
            self._send(writer, "404 Not Found", b'{"error": {"message": "not found"}}')
            return True
        body = json.loads(body_raw)
        self.auth[headers.get("authorization", "")] += 1
        with self._lock:
            n = self.requests
            self.requests += 1
        key = hashlib.sha1(prompt_text(body).encode()).hexdigest()
        fault = self.faults(n, body) if self.faults else None
        self.log.append((time.monotonic(), key, fault or "ok"))
        if fault:
            self.faults_served[fault] += 1
        if fault == "timeout":
            await asyncio.sleep(self.hold_s)
            return False
        if fault == "drop":
            return False
        if fault == "429":
            self._send(writer, "429 Too Many Requests",
                       b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                       f"retry-after: {self.retry_after:g}\r\n")
            return True
        if fault == "500":
            self._send(writer, "500 Internal Server Error", b'{"error": {"message": "engine died"}}')
            return True
        if fault == "malformed":
            self._send(writer, "200 OK", b'{"id": "cmpl-1", "choices": [{"message": ')
            return True
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text, finish = self.responder(body)
        chat = "messages" in body
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        words = len(text.split())
        reply = {"id": f"cmpl-{n}", "object": "chat.completion" if chat else "text_completion",
                 "created": int(time.time()), "model": body.get("model", "test"), "choices": [choice],
                 "usage": {"prompt_tokens": len(prompt_text(body).split()), "completion_tokens": words,
                           "total_tokens": words}}
        with self._lock:
            self.served[prompt_text(body)] += 1
        self._send(writer, "200 OK", json.dumps(reply).encode())
        return True

    # --- lifecycle -------------------------------------------------------------------------------
    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    def __enter__(self) -> OpenAIServer:
        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(self.serve())
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
            rest = asyncio.all_tasks(self._loop)  # connections still open: close them on a running loop
            for task in rest:
                task.cancel()
            if rest:
                self._loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--tokens", type=int, default=0, help="reply with this many words instead of the echo reply")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    ap.add_argument("--model", action="append", help="a model GET /v1/models lists (repeatable)")
    args = ap.parse_args()
    responder = echo_responder
    if args.tokens:
        reply = " ".join(["tok"] * args.tokens)

        def responder(body: dict) -> tuple[str, str]:
            return reply, "stop"

    srv = OpenAIServer(responder, port=args.port, delay_s=args.delay, models=tuple(args.model or [DEFAULT_MODEL]))
    print(f"serving on http://127.0.0.1:{args.port}/v1", flush=True)
    asyncio.run(srv.serve())


if __name__ == "__main__":
    main()
