"""Completions from a causal LM: the seam between "a model" and the rest of the evaluation.

Everything downstream sees only the `Backend` protocol, so a test can plug in a fake that returns
canonical (or hostile) solutions while prompts, stop handling, sandboxing and scoring stay real.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """What one generation call needs; the greedy/sampled switch is do_sample."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.95
    n: int = 1  # completions per prompt (pass@k needs n >= k)
    seed: int = 1234


class Backend(Protocol):
    """Returns, for every prompt, ``params.n`` completions (text after the prompt, stops not yet cut)."""

    name: str

    def generate(self, prompts: Sequence[str], stop: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[str]]: ...


def truncate_at_stop(completion: str, stop: Sequence[str]) -> str:
    """Cut at the first stop sequence that begins after the completion's first non-blank character.

    Stops such as "\\ndef" must not fire on the completion's own opening line (MBPP+ completions start
    with "\\ndef f(...)" after a stripped prompt), so matches before the first content are ignored.
    """
    start = len(completion) - len(completion.lstrip())
    cut = len(completion)
    for s in stop:
        idx = completion.find(s, start)
        while 0 <= idx < start:
            idx = completion.find(s, idx + 1)
        if 0 <= idx < cut and idx >= start:
            cut = idx
    return completion[:cut]


def _cut_at_specials(text: str, specials: Sequence[str]) -> str:
    cut = min((i for i in (text.find(t) for t in specials) if i >= 0), default=len(text))
    return text[:cut]


class HFBackend:
    """transformers generate(): batched with left padding, stopping a row once a stop sequence appears."""

    def __init__(self, model_path: str, batch_size: int = 8, dtype: str = "auto", device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from arctic_pretrain.common.cpu_math import resolve_vml_kernels

        resolve_vml_kernels()  # the first generate's RoPE cos/sin must not race MKL's kernel choice
        self.name = f"hf:{model_path}"
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.tokens_generated = 0  # for throughput reports
        self.last_finish_reasons: list[str] = []  # "stop" | "length" per prompt of the last generate()
        self._warned = False

    def _room(self, prompt_len: int, wanted: int) -> int:
        """New tokens that fit the model's positions (a small model trained at 512 tokens stays inside them)."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit or prompt_len + wanted <= limit:
            return wanted
        log.log(logging.INFO if self._warned else logging.WARNING,
                "prompt of %d tokens + max_new_tokens=%d exceeds the model's %d positions: generating %d",
                prompt_len, wanted, limit, max(1, limit - prompt_len))
        self._warned = True
        return max(1, limit - prompt_len)

    def generate(self, prompts: Sequence[str], stop: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[str]]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        specials = [t for t in tok.all_special_tokens if t]
        # Longest prompts first keeps padding small within a batch; the order is restored at the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        by_index: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        torch.manual_seed(params.seed)

        class StopOnText(StoppingCriteria):
            def __init__(self, prompt_len: int) -> None:
                self.prompt_len = prompt_len

            def __call__(self, input_ids, scores, **kwargs):
                texts = tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=False)
                done = [truncate_at_stop(t, stop) != t for t in texts]
                return torch.tensor(done, device=input_ids.device)

        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            # the tokenizer's own special tokens (a BOS for Llama-family baselines, none for this project's BPE),
            # as evalplus's HF decoder encodes prompts
            batch = tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
            batch = batch.to(self.device)
            prompt_len = batch["input_ids"].shape[1]
            kwargs = {"do_sample": params.do_sample, "max_new_tokens": self._room(prompt_len, params.max_new_tokens),
                      "num_return_sequences": params.n, "pad_token_id": tok.pad_token_id,
                      "eos_token_id": tok.eos_token_id, "use_cache": True,
                      "stopping_criteria": StoppingCriteriaList([StopOnText(prompt_len)])}
            if params.do_sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = self.model.generate(**batch, **kwargs)
            new = out[:, prompt_len:]
            self.tokens_generated += int((new != tok.pad_token_id).sum())
            # Special tokens end the code (EOS, padding, <file_sep>): cut there rather than skip them, which
            # would glue the next file's text onto the completion.
            raw = tok.batch_decode(new, skip_special_tokens=False)
            texts = [_cut_at_specials(t, specials) for t in raw]
            # "stop" when an EOS/special token or a stop sequence ended the row, else it ran out of tokens
            ends = ["stop" if c != t or truncate_at_stop(c, stop) != c else "length" for c, t in zip(texts, raw, strict=True)]
            for j, i in enumerate(idx):
                by_index[i] = texts[j * params.n:(j + 1) * params.n]
                reasons[i] = ends[j * params.n]
            if progress:
                progress(len(idx))
        self.last_finish_reasons = [reasons[i] for i in range(len(prompts))]  # of each prompt's first completion
        return [by_index[i] for i in range(len(prompts))]


class VLLMBackend:
    """vLLM offline engine (GPU nodes); imported only when this backend is chosen."""

    def __init__(self, model_path: str, dtype: str = "auto", **_: object) -> None:
        from vllm import LLM

        self.name = f"vllm:{model_path}"
        self.llm = LLM(model=model_path, dtype=dtype)

    def generate(self, prompts: Sequence[str], stop: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[str]]:
        from vllm import SamplingParams as VParams

        vparams = VParams(n=params.n, max_tokens=params.max_new_tokens, stop=list(stop), seed=params.seed,
                          temperature=params.temperature if params.do_sample else 0.0,
                          top_p=params.top_p if params.do_sample else 1.0)
        outputs = self.llm.generate(list(prompts), vparams)
        if progress:
            progress(len(prompts))
        return [[c.text for c in o.outputs] for o in outputs]

    def close(self) -> None:
        """Give the GPU back before the next phase's engine starts (vLLM keeps it until told)."""
        import contextlib

        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        del self.llm


def vllm_available() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def build_backend(model_path: str, backend: str = "auto", batch_size: int = 8, dtype: str = "auto",
                  device: str = "auto") -> Backend:
    """``auto``: vLLM when it imports on a GPU machine, else transformers."""
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return VLLMBackend(model_path, dtype=dtype)
    if backend not in ("auto", "hf"):
        raise ValueError(f"generation.backend={backend!r}: must be auto, hf or vllm")
    return HFBackend(model_path, batch_size=batch_size, dtype=dtype, device=device)
