"""Weighted mixture sampler over token sources, identical on every rank, partitioned by slot.

The global sample stream is a pure function of the seed: global sample k picks a source from a
uniform number keyed by (seed, k) against the phase's weights; the source's n-th pick reads window
``perm_epoch(n mod windows)``. Every rank computes the whole global batch's choices (cheap) and
keeps only its slots, so ranks never overlap and a change of world size at fixed global batch size
re-partitions the same stream. The state is a few counters: resume costs nothing per step done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from arctic_pretrain.data.permutation import FeistelPermutation, hash64
from arctic_pretrain.data.shards import TokenSource

log = logging.getLogger(__name__)
_BLOCK = 4096  # global samples per block of uniform draws


@dataclass
class Sample:
    source: int  # index into MixtureSampler.names
    window: int
    epoch: int


@dataclass
class Batch:
    input_ids: np.ndarray  # [B, L] int64
    position_ids: np.ndarray  # [B, L] int64, 0 at every document start
    source_ids: np.ndarray  # [B] int64


class MixtureSampler:
    def __init__(self, sources: dict[str, TokenSource], seq_len: int, seed: int,
                 max_epochs: dict[str, float] | None = None, heldout_windows: int = 0) -> None:
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        self.seq_len = seq_len
        self.seed = seed
        # the last `heldout_windows` windows of each source are never drawn (held-out loss reads them)
        self.windows = [max(s.num_windows(seq_len) - heldout_windows, 1) for s in self.sources]
        self.max_epochs = max_epochs or {}
        self.samples = 0  # global samples drawn
        self.per_source = [0] * len(self.names)  # global picks per source
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}
        self._block: tuple[int, np.ndarray] | None = None
        self._warned: set[str] = set()

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "seq_len": self.seq_len, "samples": self.samples,
                "per_source": dict(zip(self.names, self.per_source, strict=True))}

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len:
            raise ValueError(f"sampler state was saved with seq_len={state['seq_len']}, run has {self.seq_len}")
        self.seed = state["seed"]
        self.samples = int(state["samples"])
        self.per_source = [int(state["per_source"].get(n, 0)) for n in self.names]

    # ---- drawing -----------------------------------------------------------------------------
    def _uniforms(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count)
        pos = 0
        while pos < count:
            block_id, offset = divmod(start + pos, _BLOCK)
            if self._block is None or self._block[0] != block_id:
                rng = np.random.default_rng([self.seed & 0xFFFFFFFF, block_id])
                self._block = (block_id, rng.random(_BLOCK))
            take = min(count - pos, _BLOCK - offset)
            out[pos:pos + take] = self._block[1][offset:offset + take]
            pos += take
        return out

    def _permutation(self, source: int, epoch: int) -> FeistelPermutation:
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            name_key = hash64(*self.names[source].encode())
            self._perms[key] = FeistelPermutation(self.windows[source], hash64(self.seed, name_key, epoch))
        return self._perms[key]

    def draw(self, count: int, weights: dict[str, float]) -> list[Sample]:
        """The next ``count`` global samples under ``weights``; advances the state."""
        unknown = set(weights) - set(self.names)
        if unknown:
            raise KeyError(f"mixture names unknown sources {sorted(unknown)}; sampler has {self.names}")
        idx = [self.names.index(n) for n in weights if weights[n] > 0]
        w = np.array([weights[self.names[i]] for i in idx], dtype=np.float64)
        cdf = np.cumsum(w / w.sum())
        cdf[-1] = 1.0
        choice = np.asarray(idx)[np.searchsorted(cdf, self._uniforms(self.samples, count), side="right")]
        windows = np.empty(count, dtype=np.int64)
        epochs = np.empty(count, dtype=np.int64)
        for s in np.unique(choice):
            slots = np.flatnonzero(choice == s)
            picks = self.per_source[s] + np.arange(slots.size)
            epoch_of, pos_of = np.divmod(picks, self.windows[s])
            for epoch in np.unique(epoch_of):
                self._check_epochs(int(s), int(epoch))
                here = epoch_of == epoch
                windows[slots[here]] = self._permutation(int(s), int(epoch))(pos_of[here])
            epochs[slots] = epoch_of
            self.per_source[s] += slots.size
        samples = [Sample(int(s), int(w), int(e)) for s, w, e in zip(choice, windows, epochs, strict=True)]
        self.samples += count
        return samples

    def _check_epochs(self, source: int, epoch: int) -> None:
        name = self.names[source]
        limit = self.max_epochs.get(name)
        if limit is not None and epoch >= limit and name not in self._warned:
            self._warned.add(name)
            log.warning("source %s: starting epoch %d beyond max_epochs=%s", name, epoch + 1, limit)

    def global_batch(self, size: int, weights: dict[str, float], rank: int, world: int) -> list[Sample]:
        """Draw a whole global batch; return this rank's contiguous share of it."""
        if size % world:
            raise ValueError(f"global batch {size} does not split over {world} ranks")
        samples = self.draw(size, weights)
        share = size // world
        return samples[rank * share:(rank + 1) * share]

    def read(self, samples: list[Sample]) -> Batch:
        ids, pos = zip(*(self.sources[s.source].window(s.window, self.seq_len) for s in samples), strict=True)
        return Batch(np.stack(ids), np.stack(pos), np.array([s.source for s in samples], dtype=np.int64))
