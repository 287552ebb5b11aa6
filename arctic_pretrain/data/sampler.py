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

A curriculum phase may read at another sequence length (``curriculum.phases.<name>.seq_len``). Each length
has its own *stream* per source: its own pick counters and its own shuffled epochs over the source's
windows of that length, where window ``j`` of length L is tokens ``[j L, (j+1) L)`` of the source's token
stream (for L = k x training.seq_len: k consecutive windows of the run's length, concatenated), so any
existing source serves any length, the held-out tail stays unread, and a sample stays a pure function of
(seed, global sample index, the stream's counters). A phase back at an earlier length continues that
length's stream where it stopped; a long stream re-reads tokens the short one read, as any new epoch would.
The run's own length keeps the keys and state layout it always had; the others add a ``lengths`` entry.
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
    seq_len: int | None = None  # the window length (None: the sampler's training.seq_len)
    fim: FimSettings | None = None  # the phase's fill-in-the-middle, applied when read (data/fim.py)


@dataclass
class Stream:
    """One sequence length's counters, per source: picks so far, and where a fresh permutation began."""

    windows: list[int]  # the permutation domain: windows of this length outside the held-out tail
    picks: list[int]
    restarted_at: list[int]
    restarts: list[int]


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
        self.seq_len = seq_len  # what a sample reads unless a phase names another length
        self.key_len = seq_len  # the length whose stream has the keys and state layout of a one-length run
        self.seed = seed
        # the last `heldout_windows` windows (of seq_len) of each source are never drawn (held-out loss reads them):
        # the tokens before them are what every length's windows are cut from
        self.trainable = [max(s.num_windows(seq_len) - heldout_windows, 1) * seq_len if heldout_windows
                          else s.num_tokens for s in self.sources]
        self.max_epochs = max_epochs or {}
        self.samples = 0  # global samples drawn, at any length
        self.streams: dict[int, Stream] = {}
        self.accept_changed = set(accept_changed)
        self._perms: dict[tuple[int, int, int], FeistelPermutation] = {}
        self._block: tuple[int, np.ndarray] | None = None
        self._warned: set[str] = set()
        self.fim: FimTransform | None = None  # set when a phase uses FIM: reads apply it to samples that carry it

    def stream(self, seq_len: int) -> Stream:
        """The counters of ``seq_len``'s stream (created at zero picks on first use)."""
        if seq_len not in self.streams:
            n = len(self.names)
            windows = [max(tokens // seq_len, 1) for tokens in self.trainable]
            self.streams[seq_len] = Stream(windows, [0] * n, [0] * n, [0] * n)
        return self.streams[seq_len]

    def identity_at(self, seq_len: int) -> list[dict]:
        """Each source's window count at ``seq_len`` and manifest hash: what a checkpoint records."""
        return [{"windows": w, "manifest_sha256": s.manifest_sha256}
                for w, s in zip(self.stream(seq_len).windows, self.sources, strict=True)]

    # the run's own length (``key_len``), as a one-length run always had them
    @property
    def identity(self) -> list[dict]:
        return self.identity_at(self.key_len)

    @property
    def base(self):
        """The stream at the run's own length (picks, restarted_at, restarts, windows per source)."""
        return self.stream(self.key_len)

    @property
    def windows(self) -> list[int]:
        return self.base.windows

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sources = {n: {**ident, "restarted_at": at, "restarts": count} for n, ident, at, count
                   in zip(self.names, self.identity, self.base.restarted_at, self.base.restarts, strict=True)}
        state = {"seed": self.seed, "seq_len": self.key_len, "samples": self.samples,
                 "per_source": dict(zip(self.names, self.base.picks, strict=True)), "sources": sources}
        others = {str(length): {n: {"picks": p, "restarted_at": at, "restarts": r} for n, p, at, r
                                in zip(self.names, st.picks, st.restarted_at, st.restarts, strict=True)}
                  for length, st in sorted(self.streams.items()) if length != self.key_len and any(st.picks)}
        if others:  # only once a phase read at another length: a one-length run's state is as it always was
            state["lengths"] = others
        return state

    def changed_sources(self, state: dict) -> dict[str, dict]:
        """Sources read before ``state`` was saved whose window count or manifest differs now:
        ``{name: {"picks": n, "windows": [old, new], "manifest_sha256": [old, new]}}`` (changed fields only).
        A source never read is free to change; a state saved before identities were recorded has none
        (``{}``: unknown, see ``records_identity``)."""
        saved = state.get("sources") or {}
        identity = self.identity_at(int(state["seq_len"]))
        out = {}
        for i, name in enumerate(self.names):
            picks = int(state["per_source"].get(name, 0)) + sum(
                int(counters.get(name, {}).get("picks", 0)) for counters in state.get("lengths", {}).values())
            if name not in saved or picks == 0:
                continue
            diff = {k: [saved[name].get(k), v] for k, v in identity[i].items() if saved[name].get(k) != v}
            if diff:
                out[name] = {"picks": picks, **diff}
        return out

    @staticmethod
    def records_identity(state: dict) -> bool:
        """Whether ``state`` was saved with the sources' window counts and manifest hashes."""
        return "sources" in state

    def load_state_dict(self, state: dict) -> None:
        """Continue every stream the state holds. A state saved at another ``training.seq_len`` (a branch:
        a resume refuses that change in train/history.py) keeps that length's stream and keys; this run's
        default length reads its own stream, fresh unless a phase of the saved run read at it."""
        changed = self.changed_sources(state)
        refused = {name: change for name, change in changed.items() if name not in self.accept_changed}
        if refused:
            raise ValueError(f"sources changed since the sampler state was saved: {describe_changes(refused)}")
        if state["seq_len"] != self.seq_len:
            log.warning("sampler state was saved with seq_len=%d, this run reads %d: the %d-token stream is kept, "
                        "the %d-token one continues (or starts) on its own", state["seq_len"], self.seq_len,
                        state["seq_len"], self.seq_len)
        self.seed = state["seed"]
        self.samples = int(state["samples"])
        self.key_len = int(state["seq_len"])
        self.streams = {}
        saved = state.get("sources") or {}
        counters = {self.key_len: {n: {"picks": state["per_source"].get(n, 0), **saved.get(n, {})} for n in self.names}}
        counters.update({int(length): c for length, c in state.get("lengths", {}).items()})
        for length, by_name in counters.items():
            st = self.stream(length)
            for i, name in enumerate(self.names):
                c = by_name.get(name, {})
                st.picks[i], st.restarted_at[i], st.restarts[i] = (int(c.get(k, 0)) for k in
                                                                    ("picks", "restarted_at", "restarts"))
                if name in changed:  # accepted: a fresh permutation over the new windows from here on
                    st.restarted_at[i], st.restarts[i] = st.picks[i], st.restarts[i] + 1
        for name in changed:
            log.warning("source changed since the checkpoint, accepted: %s; its permutation starts afresh "
                        "at pick %d", describe_changes({name: changed[name]}), self.base.picks[self.names.index(name)])
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

    def _permutation(self, source: int, epoch: int, seq_len: int) -> FeistelPermutation:
        key = (seq_len, source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            name_key = hash64(*self.names[source].encode())
            st = self.stream(seq_len)
            restarts = st.restarts[source]  # 0: the key every run had before restarts existed
            if seq_len != self.key_len:  # another length: its own orders, keyed by the length
                perm_key = hash64(self.seed, name_key, epoch, restarts, seq_len)
            elif restarts:
                perm_key = hash64(self.seed, name_key, epoch, restarts)
            else:
                perm_key = hash64(self.seed, name_key, epoch)
            self._perms[key] = FeistelPermutation(st.windows[source], perm_key)
        return self._perms[key]

    def draw(self, count: int, weights: dict[str, float], seq_len: int | None = None) -> list[Sample]:
        """The next ``count`` global samples under ``weights``, windows of ``seq_len`` tokens (None: the
        sampler's); advances the state."""
        unknown = set(weights) - set(self.names)
        if unknown:
            raise KeyError(f"mixture names unknown sources {sorted(unknown)}; sampler has {self.names}")
        idx = [self.names.index(n) for n in weights if weights[n] > 0]
        w = np.array([weights[self.names[i]] for i in idx], dtype=np.float64)
        cdf = np.cumsum(w / w.sum())
        cdf[-1] = 1.0
        choice = np.asarray(idx)[np.searchsorted(cdf, self._uniforms(self.samples, count), side="right")]
        length = seq_len or self.seq_len
        st = self.stream(length)
        windows = np.empty(count, dtype=np.int64)
        epochs = np.empty(count, dtype=np.int64)
        for s in np.unique(choice):
            slots = np.flatnonzero(choice == s)
            picks = st.picks[s] - st.restarted_at[s] + np.arange(slots.size)
            epoch_of, pos_of = np.divmod(picks, st.windows[s])
            for epoch in np.unique(epoch_of):
                self._check_epochs(int(s), int(epoch))
                here = epoch_of == epoch
                windows[slots[here]] = self._permutation(int(s), int(epoch), length)(pos_of[here])
            epochs[slots] = epoch_of
            st.picks[s] += slots.size
        samples = [Sample(int(s), int(w), int(e), length) for s, w, e in zip(choice, windows, epochs, strict=True)]
        self.samples += count
        return samples

    def _check_epochs(self, source: int, epoch: int) -> None:
        name = self.names[source]
        limit = self.max_epochs.get(name)
        if limit is not None and epoch >= limit and name not in self._warned:
            self._warned.add(name)
            log.warning("source %s: starting epoch %d beyond max_epochs=%s", name, epoch + 1, limit)

    def global_batch(self, size: int, weights: dict[str, float], rank: int, world: int,
                     seq_len: int | None = None) -> list[Sample]:
        """Draw a whole global batch (windows of ``seq_len``, None: the sampler's); return this rank's
        contiguous share of it."""
        if size % world:
            raise ValueError(f"global batch {size} does not split over {world} ranks")
        samples = self.draw(size, weights, seq_len)
        share = size // world
        return samples[rank * share:(rank + 1) * share]

    def read(self, samples: list[Sample]) -> Batch:
        ids, pos = zip(*(self._window(s) for s in samples), strict=True)
        return Batch(np.stack(ids), np.stack(pos), np.array([s.source for s in samples], dtype=np.int64))

    def _window(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        length = s.seq_len or self.seq_len
        ids, pos = self.sources[s.source].window(s.window, length)
        if s.fim is not None and s.fim.active and self.fim is not None:  # a pure function of the sample
            key = window_key(self.seed, self.names[s.source], s.epoch, s.window)
            if length != self.key_len:  # another length's window (a phase's own seq_len): its own FIM draws
                key = hash64(key, length)
            ids, pos = self.fim(ids, pos, s.fim, key)
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
