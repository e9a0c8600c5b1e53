"""Seeded uniform samples of a corpus read in one streaming pass, whatever its shard order.

Each row gets a key from a seeded hash of its id; the sample is the ``size``
rows with the smallest keys. Every row has the same chance to be in it, the
same seed always picks the same rows, and memory stays at about twice the
sample, however large the corpus.
"""
from __future__ import annotations

import hashlib

import numpy as np


def seeded_keys(ids: list[str], seed: int) -> np.ndarray:
    """A uint64 key per id: a keyed BLAKE2b hash, uniform and independent of row order."""
    key = seed.to_bytes(8, "little", signed=True)
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8, key=key).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


class SmallestKeys:
    """Keeps the rows (any per-row arrays) with the ``size`` smallest keys seen so far."""

    def __init__(self, size: int):
        self.size = size
        self.seen = 0
        self._keys = np.zeros(0, np.uint64)
        self._columns: dict[str, np.ndarray] | None = None

    def add(self, keys: np.ndarray, **columns: np.ndarray) -> None:
        self.seen += len(keys)
        if self._columns is None:
            self._columns = {k: v[:0] for k, v in columns.items()}
        self._keys = np.concatenate([self._keys, keys])
        self._columns = {k: np.concatenate([self._columns[k], columns[k]]) for k in self._columns}
        if len(self._keys) > 2 * self.size:
            self._trim()

    def _trim(self) -> None:
        if len(self._keys) > self.size:
            keep = np.argpartition(self._keys, self.size - 1)[:self.size]
            self._keys = self._keys[keep]
            self._columns = {k: v[keep] for k, v in self._columns.items()}

    def result(self) -> dict[str, np.ndarray]:
        """The sample, ordered by key (so a smaller sample is a prefix of a larger one)."""
        self._trim()
        order = np.argsort(self._keys, kind="stable")
        return {k: v[order] for k, v in (self._columns or {}).items()}
