"""The annotator's encoder side: where an encoder lives, how a file becomes chunks, how chunks get scores.

A file's score is the mean of the classifier's scores of its top, middle and bottom windows of
``max_length`` tokens (special tokens included); a file that fits in one window is one chunk.
Training, corpus scoring and the report all go through ``Scorer``, so they score files the same way.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np


def resolve_encoder(name: str) -> str:
    """``pkg:<module>`` -> the model folder an installed package ships (``<package>/model`` or the package
    folder itself); anything else (a path or a hub name) is passed to transformers as is."""
    if not name.startswith("pkg:"):
        return name
    module = name[4:]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model.encoder={name!r}: package {module!r} is not installed "
                         f"(e.g. pip install {module.replace('_', '-')})")
    root = Path(next(iter(spec.submodule_search_locations)))
    for folder in (root / "model", root):
        if (folder / "config.json").is_file():
            return str(folder)
    raise ValueError(f"model.encoder={name!r}: no config.json under {root} or {root / 'model'}")


def chunk_spans(n: int, window: int) -> list[tuple[int, int]]:
    """[start, end) of the top, middle and bottom windows of a sequence of ``n`` tokens; one span when
    it fits in one window (the paper's three chunks; they overlap when n < 3 * window)."""
    if n <= window:
        return [(0, n)]
    mid = (n - window) // 2
    return [(0, window), (mid, mid + window), (n - window, n)]


class Chunker:
    """Text -> encoder-ready chunks (special tokens added), with the fast tokenizer's batch encoder."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.backend = tokenizer.backend_tokenizer  # no truncation: the whole file, then the three windows
        self.backend.no_truncation()
        self.backend.no_padding()
        # the special tokens the encoder's post-processor puts around one sequence ([CLS] ... [SEP] for BERT)
        plain = self.backend.encode("x", add_special_tokens=False).ids
        full = self.backend.encode("x", add_special_tokens=True).ids
        at = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
        self.prefix, self.suffix = full[:at], full[at + len(plain):]
        self.window = max_length - len(self.prefix) - len(self.suffix)
        if self.window < 1:
            raise ValueError(f"model.max_length={max_length}: leaves no room beside the special tokens")

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def chunks(self, ids: list[int], count: int = 3) -> list[list[int]]:
        spans = chunk_spans(len(ids), self.window)
        if count == 1:
            spans = spans[:1]
        return [self.prefix + list(ids[a:b]) + self.suffix for a, b in spans]


def autocast_dtype(precision: str, device: str):
    import torch

    if precision == "bf16" or (precision == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


class Scorer:
    """Scores chunks with a sequence classifier (one logit; score = sigmoid), batched, sorted by length."""

    def __init__(self, model, tokenizer, max_length: int, *, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto") -> None:
        import torch

        from arctic_pretrain.common.cpu_math import resolve_vml_kernels

        resolve_vml_kernels()  # a fresh task's first GELU (erf) must not race MKL's kernel choice
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = model.to(self.device).eval()
        self.chunker = Chunker(tokenizer, max_length)
        self.pad_id = tokenizer.pad_token_id or 0
        self.batch_size = batch_size
        self.dtype = autocast_dtype(precision, self.device)

    @classmethod
    def load(cls, model_dir: str | Path, **kwargs) -> Scorer:
        import json

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta = json.loads((Path(model_dir) / "annotator.json").read_text())
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        return cls(model, AutoTokenizer.from_pretrained(model_dir), meta["max_length"], **kwargs)

    def pad(self, chunks: list[list[int]]):
        """(input_ids, attention_mask) tensors of ``chunks``, right-padded to the longest."""
        import torch

        width = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunks), width), dtype=torch.long)
        for row, c in enumerate(chunks):
            ids[row, :len(c)] = torch.as_tensor(c)
            mask[row, :len(c)] = 1
        return ids, mask

    def batches(self, chunks: list[list[int]]):
        """(indices, input_ids, attention_mask): chunks sorted by length, ``batch_size`` a batch, so a
        batch pads to about its own length."""
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            yield (idx, *self.pad([chunks[i] for i in idx]))

    def score_chunks(self, chunks: list[list[int]]) -> np.ndarray:
        import torch

        out = np.empty(len(chunks), dtype=np.float64)
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            for idx, ids, mask in self.batches(chunks):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out[idx] = torch.sigmoid(logits[:, 0].float()).cpu().numpy()
        return out

    def score_texts(self, texts: list[str]) -> list[float]:
        """File scores: the mean over each file's chunks (empty text: nan)."""
        per_file = [self.chunker.chunks(ids) if ids else [] for ids in self.chunker.ids(texts)]
        flat = [c for chunks in per_file for c in chunks]
        scores = self.score_chunks(flat) if flat else np.empty(0)
        out, pos = [], 0
        for chunks in per_file:
            out.append(float(scores[pos:pos + len(chunks)].mean()) if chunks else math.nan)
            pos += len(chunks)
        return out
