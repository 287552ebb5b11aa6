"""The OpenAI-compatible client against a loopback server speaking the wire protocol, with faults."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

import pytest

from arctic_pretrain.generation.openai import OpenAIClient, RequestFailed, parse_retry_after
from tests.synthesize.openai_server import OpenAIServer, prompt_text

KINDS = ["timeout", "429", "500", "drop", "malformed"]


def first_attempt_faults(kinds: list[str | None]):
    """Every prompt's first attempt fails with a kind picked from its hash; later attempts succeed."""
    attempts: Counter[str] = Counter()

    def faults(n: int, body: dict) -> str | None:
        key = prompt_text(body)
        attempts[key] += 1
        if attempts[key] > 1:
            return None
        return kinds[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(kinds)]

    return faults


def run_all(client: OpenAIClient, prompts: list[str]) -> dict:
    results = {}

    async def main():
        async with client:
            await client.map(prompts, lambda p: client.payload(messages=[{"role": "user", "content": p}],
                                                              max_tokens=16, temperature=0.0, top_p=1.0),
                             lambda p, out: results.__setitem__(p, out))

    asyncio.run(main())
    return results


def test_every_request_finishes_once_through_every_fault(monkeypatch):
    monkeypatch.setenv("TEST_SYNTH_KEY", "sk-local")
    prompts = [f"prompt {i}" for i in range(60)]
    waits = []

    class Recording(OpenAIClient):
        def backoff(self, attempt, retry_after):
            waits.append((retry_after, super().backoff(attempt, retry_after)))
            return waits[-1][1]

    # "timeout" replies are held far past the client's 5 s timeout; a healthy reply never comes near it
    with OpenAIServer(faults=first_attempt_faults([*KINDS, None]), retry_after=0.3, hold_s=120) as srv:
        client = Recording(srv.url, "m", api_key_env="TEST_SYNTH_KEY", concurrency=16, timeout_s=5.0,
                           max_retries=3, backoff_s=0.01, backoff_max_s=0.05)
        results = run_all(client, prompts)
    assert set(results) == set(prompts)
    assert all(not isinstance(r, RequestFailed) and r.text for r in results.values())
    assert all(srv.served[p] == 1 for p in prompts)  # one successful reply per prompt, none lost
    assert set(srv.faults_served) == set(KINDS), srv.faults_served
    for kind, reason in [("timeout", "timeout"), ("429", "http_429"), ("500", "http_500"), ("drop", "connection"),
                         ("malformed", "malformed")]:
        assert client.stats[f"retry:{reason}"] == srv.faults_served[kind], (kind, client.stats)
    assert set(srv.auth) == {"Bearer sk-local"}  # the key from the environment, on every request
    # Retry-After: after each 429 the client waited what the server asked (0.3 s), not its own short backoff
    assert sorted(w for w in waits if w[0] is not None) == [(0.3, 0.3)] * srv.faults_served["429"], waits


def test_retries_exhausted_and_refused_requests_are_final():
    with OpenAIServer(faults=lambda n, body: "500" if "flaky" in prompt_text(body) else None) as srv:
        client = OpenAIClient(srv.url, "m", max_retries=2, backoff_s=0.01)
        results = run_all(client, ["flaky one", "fine one"])
    assert isinstance(results["flaky one"], RequestFailed)
    assert results["flaky one"].kind == "retries_exhausted:http_500"
    assert srv.faults_served["500"] == 3  # the first try and two retries
    assert results["fine one"].text

    with OpenAIServer() as srv:  # a 404 (wrong path) is a refusal: no retry
        client = OpenAIClient(srv.url.replace("/v1", "/v0"), "m", max_retries=3, backoff_s=0.01)
        results = run_all(client, ["x"])
    assert results["x"].kind == "http_404" and srv.requests == 0


def test_completions_endpoint_and_usage():
    with OpenAIServer() as srv:
        client = OpenAIClient(srv.url, "m", endpoint="completions")

        async def main():
            async with client:
                return await client.complete(client.payload(prompt="def f():", max_tokens=8, temperature=0.0,
                                                            top_p=1.0, seed=3))

        out = asyncio.run(main())
    assert out.text.startswith("[Problem Description]") and out.finish_reason == "stop"
    assert out.completion_tokens == len(out.text.split())


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    import time
    from email.utils import formatdate

    assert 8 <= parse_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    with pytest.raises(ValueError, match="backend.endpoint"):
        OpenAIClient("http://x/v1", "m", endpoint="embeddings")
