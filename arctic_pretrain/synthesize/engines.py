"""Backends as the runner sees them: seeds in, one ``Reply`` per seed out, as each finishes.

    openai        an OpenAI-compatible server (generation/openai.py): async, bounded concurrency, retries
    vllm          vLLM's offline engine in this process (GPU nodes): it batches every prompt it is given
    transformers  transformers generate() in this process (CPU, small local models): HFBackend batches
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice

from arctic_pretrain.synthesize.config import SynthesizeConfig
from arctic_pretrain.synthesize.prompts import PromptTemplate, chat_prompt, plain_prompt
from arctic_pretrain.synthesize.seeds import Seed

log = logging.getLogger(__name__)

@dataclass
class Reply:
    text: str
    finish_reason: str | None
    completion_tokens: int | None = None
    attempts: int = 1
    prefill: str = ""  # the text the reply continues (plain prompts); parsed as prefill + text
    error: str | None = None  # a request the server refused (final): the seed is recorded as request_error
    gave_up: str | None = None  # retries exhausted: the seed is left for the next run


Done = Callable[[Seed, Reply], None]


def request_seed(cfg: SynthesizeConfig, seed: Seed) -> int:
    """Per-request sampling seed: the run's seed plus the seed id's low bits (order-independent)."""
    return (cfg.sampling.seed + int(seed.id[:8], 16)) % (2**31)


def _chunks(it: Iterable[Seed], n: int) -> Iterator[list[Seed]]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


class OpenAIEngine:
    def __init__(self, cfg: SynthesizeConfig, template: PromptTemplate) -> None:
        from arctic_pretrain.generation.openai import OpenAIClient

        b = cfg.backend
        self.cfg, self.template = cfg, template
        self.client = OpenAIClient(b.base_url, b.model, endpoint=b.endpoint, api_key_env=b.api_key_env,
                                   concurrency=b.concurrency, timeout_s=b.timeout_s, max_retries=b.max_retries,
                                   backoff_s=b.backoff_s, backoff_max_s=b.backoff_max_s,
                                   breaker_failures=b.breaker_failures, breaker_window_s=b.breaker_window_s,
                                   extra_body=dict(b.extra_body))
        self.name = f"openai:{b.model}@{b.base_url}"

    def body(self, seed: Seed) -> dict:
        s, msgs = self.cfg.sampling, self.template.messages(seed.snippet, seed.language)
        if self.client.endpoint == "chat":
            return self.client.payload(messages=msgs, max_tokens=s.max_tokens, temperature=s.temperature,
                                       top_p=s.top_p, seed=request_seed(self.cfg, seed))
        return self.client.payload(prompt=plain_prompt(msgs) + self.template.prefill(seed.language),
                                   max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                   seed=request_seed(self.cfg, seed))

    def run(self, seeds: Iterable[Seed], done: Done) -> None:
        from arctic_pretrain.generation.openai import RequestFailed

        prefill_used = self.client.endpoint == "completions"

        def finished(seed: Seed, out) -> None:
            if isinstance(out, RequestFailed):
                if out.kind.startswith("retries_exhausted"):
                    done(seed, Reply("", None, gave_up=out.kind))
                else:
                    done(seed, Reply("", None, error=str(out)[:500]))
                return
            done(seed, Reply(out.text, out.finish_reason, out.completion_tokens, out.attempts,
                             self.template.prefill(seed.language) if prefill_used else ""))

        it = iter(seeds)
        first = next(it, None)
        if first is None:  # nothing left to send: the server is not needed (a finish-only rerun)
            return
        b = self.cfg.backend

        async def main() -> None:
            async with self.client:
                if b.check_server:  # before the first seed: a wrong URL or model fails here, naming both
                    await self.client.check_model(b.wait_for_server_s)
                    log.info("synthesize: %s serves %s", b.base_url, b.model)
                await self.client.map(chain([first], it), self.body, finished)

        asyncio.run(main())

    @property
    def stats(self) -> dict:
        return dict(self.client.stats)


class TransformersEngine:
    def __init__(self, cfg: SynthesizeConfig, template: PromptTemplate) -> None:
        from arctic_pretrain.generation.backends import HFBackend

        b = cfg.backend
        self.cfg, self.template = cfg, template
        self.backend = HFBackend(b.model, batch_size=b.batch_size, dtype=b.dtype, device=b.device)
        self.templated = cfg.prompt.chat_template and bool(getattr(self.backend.tokenizer, "chat_template", None))
        self.name = f"transformers:{b.model}"
        self.stats: dict = {}

    def prompt(self, seed: Seed) -> tuple[str, str]:
        msgs = self.template.messages(seed.snippet, seed.language)
        if self.templated:
            return chat_prompt(self.backend.tokenizer, msgs), ""
        prefill = self.template.prefill(seed.language)
        return plain_prompt(msgs) + prefill, prefill

    def run(self, seeds: Iterable[Seed], done: Done) -> None:
        from arctic_pretrain.generation.backends import SamplingParams

        s = self.cfg.sampling
        for chunk in _chunks(seeds, self.cfg.backend.batch_size):
            prompts = [self.prompt(seed) for seed in chunk]
            params = SamplingParams(max_new_tokens=s.max_tokens, do_sample=s.temperature > 0,
                                    temperature=max(s.temperature, 1e-5), top_p=s.top_p, n=1,
                                    seed=request_seed(self.cfg, chunk[0]))
            outs = self.backend.generate([p for p, _ in prompts], [], params)
            reasons = self.backend.last_finish_reasons
            for seed, (_, prefill), texts, reason in zip(chunk, prompts, outs, reasons, strict=True):
                done(seed, Reply(texts[0], reason, None, 1, prefill))


class VLLMEngine:
    """vLLM's offline LLM: chat() applies the model's chat template; the engine batches internally."""

    def __init__(self, cfg: SynthesizeConfig, template: PromptTemplate) -> None:
        from vllm import LLM

        b = cfg.backend
        self.cfg, self.template = cfg, template
        self.llm = LLM(model=b.model, dtype=b.dtype, tensor_parallel_size=b.tensor_parallel_size)
        self.name = f"vllm:{b.model}"
        self.stats: dict = {}

    def run(self, seeds: Iterable[Seed], done: Done, chunk: int = 4096) -> None:
        from vllm import SamplingParams

        s = self.cfg.sampling
        for part in _chunks(seeds, chunk):  # results are written per chunk, so a kill loses one chunk at most
            params = [SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                     seed=request_seed(self.cfg, seed)) for seed in part]
            if self.cfg.backend.endpoint == "chat":
                outs = self.llm.chat([self.template.messages(x.snippet, x.language) for x in part], params)
                prefills = [""] * len(part)
            else:
                prefills = [self.template.prefill(x.language) for x in part]
                prompts = [plain_prompt(self.template.messages(x.snippet, x.language)) + p
                           for x, p in zip(part, prefills, strict=True)]
                outs = self.llm.generate(prompts, params)
            for seed, out, prefill in zip(part, outs, prefills, strict=True):
                c = out.outputs[0]
                done(seed, Reply(c.text, c.finish_reason, len(c.token_ids), 1, prefill))


def build_engine(cfg: SynthesizeConfig, template: PromptTemplate):
    kind = cfg.backend.kind
    if kind == "openai":
        return OpenAIEngine(cfg, template)
    if kind == "transformers":
        return TransformersEngine(cfg, template)
    if kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            from arctic_pretrain.common.config import ConfigError

            raise ConfigError("backend.kind='vllm': vllm is not installed here (GPU nodes: pip install vllm); "
                              "use backend=openai against a vLLM server or backend=transformers") from None
        return VLLMEngine(cfg, template)
    raise ValueError(f"backend.kind={kind!r}")
