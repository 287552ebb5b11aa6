"""Fill-in-the-middle (FIM) as a read-time transform of token windows, per file (StarCoder2's recipe).

A window read for training is cut into *files*: the runs of tokens between separators (``<file_sep>``, the
EOS that ends every document) and document starts, so each file of a repository document (data/grouping.py)
is one, and a document without ``<file_sep>`` is one whole. A run that opens with ``<repo_name>`` (the
repository's name) is not a file. Each file is transformed with probability ``rate``: two split points cut it
into prefix, middle and suffix, written as

    PSM   <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM   <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle      (probability ``spm_rate``)

(SPM as bigcode-Megatron writes it for StarCoder2: the variant of Bavarian et al. whose middle continues the
prefix). The separators stay where they were. The window keeps its length (``truncate_or_pad``):

    true   each transformed file keeps its token count: its suffix gives up the 3 sentinel tokens at its end
           (bigcode's ``permute(truncate_or_pad=True)``), so document starts and positions are unchanged
    false  transformed files grow by 3 tokens and the window is cut back to its length at the end, positions
           recomputed from the shifted document starts (what bigcode-Megatron's GPTDataset does for StarCoder2)

Splits are made in token space, at token boundaries of the stored ids: no tokenizer runs while reading,
and the original ids come back exactly (``unpermute``). bigcode's ``permute`` instead decodes a file,
splits at characters and re-encodes the pieces.

Which files are transformed, how, and where they are split is a pure function of (seed, source, epoch,
window, file index within the window): one counter-based generator per window, seeded by their hash,
gives file j the draws 4j..4j+3. A resumed run, another world size or a re-created reader reads the same
FIM windows; the sampler's state does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from arctic_pretrain.data.permutation import hash64

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"
SENTINELS = 3  # tokens a transformed file gains: <fim_prefix>, <fim_suffix>, <fim_middle>
MIN_SPLIT_TOKENS = 2  # a file needs this many tokens (beyond what truncation gives up) to be split
_SALT = 0x46494D  # "FIM": keeps these draws apart from the sampler's, which hash the same identities
_DRAWS = 4  # per file: apply?, SPM?, two split points


@dataclass(frozen=True)
class FimSettings:
    """One phase's FIM: ``rate`` of files transformed (0: off), ``spm_rate`` of those in SPM order."""

    rate: float = 0.0
    spm_rate: float = 0.5
    truncate_or_pad: bool = True

    @property
    def active(self) -> bool:
        return self.rate > 0


def phase_settings(run: Any, phases: Mapping[str, Any]) -> dict[str, FimSettings]:
    """Each phase's settings: the run's ``fim`` keys, with the phase's own non-null ``fim`` keys over them."""
    out = {}
    for name, phase in phases.items():
        override = getattr(phase, "fim", None)
        values = {}
        for key in ("rate", "spm_rate", "truncate_or_pad"):
            own = getattr(override, key, None) if override is not None else None
            values[key] = getattr(run, key) if own is None else own
        out[name] = FimSettings(float(values["rate"]), float(values["spm_rate"]), bool(values["truncate_or_pad"]))
    return out


@dataclass(frozen=True)
class FimTokens:
    """The ids the transform writes and the separators it cuts files at."""

    prefix: int
    middle: int
    suffix: int
    pad: int
    eos: int
    file_sep: int | None = None  # None: a tokenizer without StarCoder2's separators; whole documents are files
    repo_name: int | None = None

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], eos: int, where: str = "the tokenizer") -> FimTokens:
        """From a token -> id mapping (``tokenizer.get_vocab()``); a missing FIM token is named in the error."""
        missing = [t for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD) if t not in vocab]
        if missing:
            raise ValueError(f"{where}: has no {', '.join(missing)} token(s), which fill-in-the-middle writes; "
                             "use a tokenizer with StarCoder2's special tokens (data/tokenizer.py) or fim.rate=0")
        return cls(vocab[FIM_PREFIX], vocab[FIM_MIDDLE], vocab[FIM_SUFFIX], vocab[FIM_PAD], eos,
                   vocab.get("<file_sep>"), vocab.get("<repo_name>"))

    @property
    def separators(self) -> list[int]:
        return [t for t in (self.eos, self.file_sep) if t is not None]


def window_key(seed: int, source: str, epoch: int, window: int) -> int:
    """The identity of one read window, as the seed of its FIM draws."""
    return hash64(seed, _SALT, hash64(*source.encode()), epoch, window)


def file_spans(ids: np.ndarray, positions: np.ndarray, tokens: FimTokens) -> list[tuple[int, int]]:
    """[begin, end) of every file in a window: runs of non-separator tokens, broken at document starts."""
    n = ids.size
    if n == 0:
        return []
    sep = np.isin(ids, tokens.separators)
    doc_start = positions == 0
    before = np.concatenate([[True], sep[:-1]])
    after = np.concatenate([sep[1:], [True]])
    after_start = np.concatenate([doc_start[1:], [True]])
    begins = np.flatnonzero(~sep & (before | doc_start))
    ends = np.flatnonzero(~sep & (after | after_start)) + 1
    return list(zip(begins.tolist(), ends.tolist(), strict=True))


class FimTransform:
    """``transform(ids, positions, settings, key)``: the window with its files FIM-permuted (see the module)."""

    def __init__(self, tokens: FimTokens) -> None:
        self.tokens = tokens

    def __call__(self, ids: np.ndarray, positions: np.ndarray, settings: FimSettings,
                 key: int) -> tuple[np.ndarray, np.ndarray]:
        if not settings.active:
            return ids, positions
        t = self.tokens
        spans = file_spans(ids, positions, t)
        if not spans:
            return ids, positions
        draws = np.random.default_rng(key).random((len(spans), _DRAWS))  # row j: file j's draws, whatever len
        shrink = SENTINELS if settings.truncate_or_pad else 0
        pieces, starts, done = [], [], 0
        doc_start = positions == 0
        for j, (begin, end) in enumerate(spans):
            size = end - begin
            if (draws[j, 0] >= settings.rate or size < MIN_SPLIT_TOKENS + shrink
                    or (t.repo_name is not None and ids[begin] == t.repo_name)):
                continue
            room = size - shrink  # split points in [0, room]: with truncation the suffix keeps >= 3 tokens
            lo, hi = sorted(np.minimum((draws[j, 2:] * (room + 1)).astype(np.int64), room).tolist())
            body = ids[begin:end]
            prefix, middle, suffix = body[:lo], body[lo:hi], body[hi:size - shrink]
            if draws[j, 1] < settings.spm_rate:
                out = np.concatenate([[t.prefix, t.suffix], suffix, [t.middle], prefix, middle])
            else:
                out = np.concatenate([[t.prefix], prefix, [t.suffix], suffix, [t.middle], middle])
            pieces += [ids[done:begin], out.astype(ids.dtype)]
            flags = np.zeros(out.size, dtype=bool)
            flags[0] = doc_start[begin]
            starts += [doc_start[done:begin], flags]
            done = end
        if not pieces:
            return ids, positions
        pieces.append(ids[done:])
        starts.append(doc_start[done:])
        length = ids.size
        new_ids = np.concatenate(pieces)[:length]
        if settings.truncate_or_pad:
            return new_ids, positions
        boundaries = np.flatnonzero(np.concatenate(starts)[:length])
        seg = np.searchsorted(boundaries, np.arange(length), side="right") - 1
        return new_ids, np.arange(length, dtype=positions.dtype) - boundaries[seg]


def unpermute(ids: np.ndarray, tokens: FimTokens) -> np.ndarray:
    """The ids with every complete FIM file put back in order (prefix, middle, suffix): the inverse of the
    transform up to what truncation cut (a file cut by the window's end stays as it is). For inspection and
    tests: decode ``unpermute(window)`` to read a FIM window as the text it came from."""
    ids = np.asarray(ids)
    sep = np.isin(ids, tokens.separators)
    out, pos = [], 0
    for begin in np.flatnonzero(ids == tokens.prefix).tolist():
        if begin < pos:
            continue
        rest = np.flatnonzero(sep[begin:])
        end = begin + int(rest[0]) if rest.size else ids.size
        body = ids[begin:end]
        s, m = np.flatnonzero(body == tokens.suffix), np.flatnonzero(body == tokens.middle)
        if not s.size or not m.size or m[0] < s[0]:
            continue
        a, b, c = body[1:s[0]], body[s[0] + 1:m[0]], body[m[0] + 1:]
        out += [ids[pos:begin], a, c, b]  # PSM: prefix + middle + suffix; SPM (a empty): prefix+middle + suffix
        pos = end
    out.append(ids[pos:])
    return np.concatenate(out)
