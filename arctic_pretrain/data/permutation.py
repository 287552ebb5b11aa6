"""A seeded permutation of [0, n) evaluated index by index, in O(1) memory.

A shuffled epoch over 61M windows (500B tokens / 8192) would need a 490 MB index array per source
and per epoch; a Feistel network with cycle-walking gives the same "every window once, in random
order" guarantee as a pure function of (seed, epoch, index), which is also what makes resume free.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a strong 64-bit integer hash (wrapping arithmetic is intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash64(*keys: int) -> int:
    """Combine integers into one 64-bit key."""
    acc = np.array([0x9E3779B97F4A7C15], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            acc = _mix(acc ^ np.array([key & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return int(acc[0])


class FeistelPermutation:
    """Bijection on [0, n): ``perm(indices)`` maps positions of a shuffled epoch to window ids."""

    ROUNDS = 6

    def __init__(self, n: int, key: int) -> None:
        if n <= 0:
            raise ValueError(f"permutation domain must be non-empty, got n={n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [np.uint64(hash64(key, r)) for r in range(self.ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        with np.errstate(over="ignore"):
            for k in self.keys:
                left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, indices: np.ndarray | int) -> np.ndarray:
        scalar = np.ndim(indices) == 0
        x = np.atleast_1d(np.asarray(indices, dtype=np.uint64)).copy()
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"index {int(x.max())} outside permutation of {self.n}")
        out = self._encrypt(x)
        pending = out >= np.uint64(self.n)
        while pending.any():  # cycle-walk: re-encrypt until inside [0, n); expected < 4 rounds
            out[pending] = self._encrypt(out[pending])
            pending = out >= np.uint64(self.n)
        out = out.astype(np.int64)
        return out[0] if scalar else out
