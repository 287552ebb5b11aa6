"""Weighted mixture sampler over token sources, identical on every rank, partitioned by slot.

The global sample stream is a pure function of the seed: global sample k picks a source from a
uniform number keyed by (seed, k) against the phase's weights; the source's n-th pick reads window
``perm_epoch(n mod windows)``. Every rank computes the whole global batch's choices (cheap) and
keeps only its slots, so ranks never overlap and a change of world size at fixed global batch size
re-partitions the same stream. The state is a few counters: resume costs nothing per step done.

The state also records each source's identity (its window count and the SHA-256 of its manifest.json):
a source re-tokenized or re-selected since the checkpoint would silently change the current epoch's
permutation domain (windows read twice, others never), so ``changed_sources`` reports it and
``load_state_dict`` refuses it unless the run accepts it by name; an accepted source starts a fresh
permutation over its new windows at the recorded pick count (its ``restarts`` counter keys the new order).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from arctic_pretrain.data.fim import FimSettings, FimTransform, window_key
from arctic_pretrain.data.permutation import FeistelPermutation, hash64
from arctic_pretrain.data.shards import TokenSource

log = logging.getLogger(__name__)
_BLOCK = 4096  # global samples per block of uniform draws


@dataclass
class Sample:
    source: int  # index into MixtureSampler.names
    window: int
    epoch: int
    fim: FimSettings | None = None  # the phase's fill-in-the-middle, applied when read (data/fim.py)


@dataclass
class Batch:
    input_ids: np.ndarray  # [B, L] int64
    position_ids: np.ndarray  # [B, L] int64, 0 at every document start
    source_ids: np.ndarray  # [B] int64


class MixtureSampler:
    def __init__(self, sources: dict[str, TokenSource], seq_len: int, seed: int,
                 max_epochs: dict[str, float] | None = None, heldout_windows: int = 0,
                 accept_changed: Collection[str] = ()) -> None:
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        self.seq_len = seq_len
        self.seed = seed
        # the last `heldout_windows` windows of each source are never drawn (held-out loss reads them)
        self.windows = [max(s.num_windows(seq_len) - heldout_windows, 1) for s in self.sources]
        self.max_epochs = max_epochs or {}
        self.samples = 0  # global samples drawn
        self.per_source = [0] * len(self.names)  # global picks per source
        self.identity = [{"windows": w, "manifest_sha256": s.manifest_sha256}
                         for w, s in zip(self.windows, self.sources, strict=True)]
        # a source accepted onto changed data: its permutation began afresh at pick restarted_at[i]
        self.restarted_at = [0] * len(self.names)
        self.restarts = [0] * len(self.names)
        self.accept_changed = set(accept_changed)
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}
        self._block: tuple[int, np.ndarray] | None = None
        self._warned: set[str] = set()
        self.fim: FimTransform | None = None  # set when a phase uses FIM: reads apply it to samples that carry it

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sources = {n: {**ident, "restarted_at": at, "restarts": count} for n, ident, at, count
                   in zip(self.names, self.identity, self.restarted_at, self.restarts, strict=True)}
        return {"seed": self.seed, "seq_len": self.seq_len, "samples": self.samples,
                "per_source": dict(zip(self.names, self.per_source, strict=True)), "sources": sources}

    def changed_sources(self, state: dict) -> dict[str, dict]:
        """Sources read before ``state`` was saved whose window count or manifest differs now:
        ``{name: {"picks": n, "windows": [old, new], "manifest_sha256": [old, new]}}`` (changed fields only).
        A source never read is free to change; a state saved before identities were recorded has none
        (``{}``: unknown, see ``records_identity``)."""
        saved = state.get("sources") or {}
        out = {}
        for i, name in enumerate(self.names):
            picks = int(state["per_source"].get(name, 0))
            if name not in saved or picks == 0:
                continue
            diff = {k: [saved[name].get(k), v] for k, v in self.identity[i].items() if saved[name].get(k) != v}
            if diff:
                out[name] = {"picks": picks, **diff}
        return out

    @staticmethod
    def records_identity(state: dict) -> bool:
        """Whether ``state`` was saved with the sources' window counts and manifest hashes."""
        return "sources" in state

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len:
            raise ValueError(f"sampler state was saved with seq_len={state['seq_len']}, run has {self.seq_len}")
        changed = self.changed_sources(state)
        refused = {name: change for name, change in changed.items() if name not in self.accept_changed}
        if refused:
            raise ValueError(f"sources changed since the sampler state was saved: {describe_changes(refused)}")
        self.seed = state["seed"]
        self.samples = int(state["samples"])
        self.per_source = [int(state["per_source"].get(n, 0)) for n in self.names]
        saved = state.get("sources") or {}
        for i, name in enumerate(self.names):
            self.restarted_at[i] = int(saved.get(name, {}).get("restarted_at", 0))
            self.restarts[i] = int(saved.get(name, {}).get("restarts", 0))
            if name in changed:  # accepted: a fresh permutation over the new windows from here on
                self.restarted_at[i], self.restarts[i] = self.per_source[i], self.restarts[i] + 1
                log.warning("source changed since the checkpoint, accepted: %s; its permutation starts afresh "
                            "at pick %d", describe_changes({name: changed[name]}), self.per_source[i])
        self._perms.clear()

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
            restarts = self.restarts[source]  # 0: the key every run had before restarts existed
            perm_key = hash64(self.seed, name_key, epoch, restarts) if restarts else hash64(self.seed, name_key, epoch)
            self._perms[key] = FeistelPermutation(self.windows[source], perm_key)
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
            picks = self.per_source[s] - self.restarted_at[s] + np.arange(slots.size)
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
        ids, pos = zip(*(self._window(s) for s in samples), strict=True)
        return Batch(np.stack(ids), np.stack(pos), np.array([s.source for s in samples], dtype=np.int64))

    def _window(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        ids, pos = self.sources[s.source].window(s.window, self.seq_len)
        if s.fim is not None and s.fim.active and self.fim is not None:  # a pure function of the sample
            ids, pos = self.fim(ids, pos, s.fim, window_key(self.seed, self.names[s.source], s.epoch, s.window))
        return ids, pos


def describe_changes(changed: dict[str, dict]) -> str:
    """One clause per changed source: what differs, old -> new."""
    parts = []
    for name, change in changed.items():
        what = []
        if "windows" in change:
            what.append(f"{change['windows'][0]} -> {change['windows'][1]} windows")
        if "manifest_sha256" in change:
            old, new = (str(h)[:12] for h in change["manifest_sha256"])
            what.append(f"manifest.json sha256 {old}... -> {new}...")
        elif "windows" in change:
            what.append("same manifest.json: the held-out windows (evaluation.heldout_windows) changed")
        parts.append(f"{name} ({', '.join(what)}; {change['picks']} windows read before)")
    return "; ".join(parts)
