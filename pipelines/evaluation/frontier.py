"""The quality-per-byte frontier: streaming exact search, two-stage re-ranking, choosing and plotting.

Numpy only. Rankings follow ``metrics.top_k``'s conventions: best first,
ties broken by the lower corpus index, ``-1`` (score ``-inf``) pads rows
with fewer than k results, and a query's ``exclude`` index never appears.

Ordering trick: a (score, index) pair is packed into one uint64 key whose
ascending order is "higher score first, then lower index" (the float32 bits
made order-preserving in the high word, the index in the low word), so one
``np.partition`` picks an exact, deterministic top-k with ties resolved.
Corpus indices must therefore be below 2**32 - 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import numpy as np

from pipelines.common.errors import InputError
from pipelines.evaluation import metrics

MAX_INDEX = (1 << 32) - 2
_PAD = np.uint64((1 << 64) - 1)  # sorts after every real candidate; decodes to index -1
_SIGN = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)


def _encode(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """uint64 keys, ascending = descending score then ascending index."""
    scores = np.asarray(scores, dtype=np.float32) + np.float32(0)  # -0.0 -> 0.0: they tie, as in top_k
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    bits = scores.view(np.uint32)
    ordered = np.where(bits & _SIGN, ~bits, bits | _SIGN)  # ascending with the float value
    return ((~ordered).astype(np.uint64) << np.uint64(32)) | np.asarray(indices).astype(np.uint64)


def _decode(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, scores float32) of sorted keys; padding and -inf scores become -1 / -inf."""
    ordered = ~(keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(ordered & _SIGN, ordered & ~_SIGN, ~ordered)
    scores = bits.view(np.float32).copy()
    indices = (keys & _LOW32).astype(np.int64)
    empty = (keys == _PAD) | ~np.isfinite(scores)
    indices[empty], scores[empty] = -1, -np.inf
    return indices, scores


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """The k smallest keys of each row, sorted (rows shorter than k are padded)."""
    if keys.shape[1] < k:
        keys = np.concatenate([keys, np.full((keys.shape[0], k - keys.shape[1]), _PAD)], axis=1)
    elif keys.shape[1] > k:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    return np.sort(keys, axis=1)


class TopK:
    """Exact top-k over a corpus that arrives in chunks of columns.

    ``update(scores [n_queries, chunk], offset)`` scores corpus rows
    ``offset .. offset + chunk - 1``; chunks may come in any order. Equals a
    one-shot exact search over all the scores (``metrics.top_k`` for cosine
    scores). Holds O(n_queries * k) keys plus one chunk while merging.
    """

    def __init__(self, n_queries: int, k: int, exclude: np.ndarray | None = None):
        if n_queries < 0 or k < 1:
            raise ValueError(f"need n_queries >= 0 and k >= 1, got {n_queries} and {k}")
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64).ravel()
            if exclude.shape != (n_queries,):
                raise ValueError(f"exclude needs one index per query ({n_queries}), got {exclude.shape}")
        self.k, self.exclude = k, exclude
        self._keys = np.full((n_queries, k), _PAD, dtype=np.uint64)

    def update(self, scores: np.ndarray, offset: int) -> None:
        scores = np.array(scores, dtype=np.float32)  # a copy: exclusion writes into it
        if scores.ndim != 2 or scores.shape[0] != self._keys.shape[0]:
            raise ValueError(f"scores must be [{self._keys.shape[0]}, chunk], got {scores.shape}")
        if offset < 0 or offset + scores.shape[1] - 1 > MAX_INDEX:
            raise ValueError(f"corpus indices {offset}..{offset + scores.shape[1] - 1} out of 0..{MAX_INDEX}")
        if self.exclude is not None:
            rows = np.flatnonzero((self.exclude >= offset) & (self.exclude < offset + scores.shape[1]))
            scores[rows, self.exclude[rows] - offset] = -np.inf
        columns = np.arange(offset, offset + scores.shape[1], dtype=np.uint64)
        self._keys = _smallest(np.concatenate([self._keys, _encode(scores, columns[None, :])], axis=1), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64 [n_queries, k], scores float32 [n_queries, k]), best first."""
        return _decode(self._keys)


def rescore(candidates: np.ndarray, query_vecs: np.ndarray,
            lookup: Callable[[np.ndarray], np.ndarray], k: int, block: int = 256) -> np.ndarray:
    """Second stage of two-stage search: re-rank each query's candidates by exact cosine.

    ``candidates[i]`` are corpus indices (unique per row, ``-1`` for none) from a
    cheap first stage; ``lookup(sorted unique indices) -> vectors`` fetches the
    finer representation once per distinct candidate. Returns the top-k
    indices (int64 [n_queries, k], ``-1`` padded), ties to the lower index.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or candidates.shape[0] != np.asarray(query_vecs).shape[0]:
        raise ValueError(f"candidates must be [n_queries, m], got {candidates.shape} for "
                         f"{np.asarray(query_vecs).shape[0]} queries")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    valid = candidates >= 0
    unique, inverse = np.unique(candidates[valid], return_inverse=True)
    vectors = metrics.normalize_rows(np.asarray(lookup(unique)))
    queries = metrics.normalize_rows(query_vecs)
    if vectors.shape != (unique.size, queries.shape[1]):
        raise ValueError(f"lookup returned {vectors.shape}, expected {(unique.size, queries.shape[1])}")
    position = np.zeros(candidates.shape, dtype=np.int64)
    position[valid] = inverse
    out = np.empty((candidates.shape[0], k), dtype=np.int64)
    for start in range(0, candidates.shape[0], block):
        rows = slice(start, start + block)
        scores = np.einsum("qd,qmd->qm", queries[rows], vectors[position[rows]])
        keys = _encode(scores, np.where(valid[rows], candidates[rows], 0))
        keys[~valid[rows]] = _PAD
        out[rows] = _decode(_smallest(keys, k))[0]
    return out


def _fidelity(row: Mapping) -> float:
    value = row.get("sts_fidelity")
    return -math.inf if value is None or math.isnan(value) else float(value)


def choose(rows: Sequence[Mapping], budget_bytes: float) -> Mapping:
    """The representation to store within ``budget_bytes`` per vector.

    Highest ``recall@10`` among rows with ``bytes_per_vector <= budget_bytes``;
    ties go to the higher ``sts_fidelity`` (a missing one loses), then to fewer
    bytes, then to the earlier row. InputError naming the smallest representation
    when none fits.
    """
    if not rows:
        raise InputError("no representations were evaluated, so none can be chosen")
    fits = [r for r in rows if r["bytes_per_vector"] <= budget_bytes]
    if not fits:
        smallest = min(rows, key=lambda r: r["bytes_per_vector"])
        raise InputError(f"no representation fits {budget_bytes:g} bytes per vector; the smallest is "
                         f"{smallest['name']} at {smallest['bytes_per_vector']:g} bytes per vector")
    return max(fits, key=lambda r: (r["recall@10"], _fidelity(r), -r["bytes_per_vector"]))


def plot_frontier(rows: Sequence[Mapping], chosen_name: str, path_or_fileobj: str | IO[bytes]) -> None:
    """PNG of recall@10 against bytes per vector (log axis), one line per family, the chosen row marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r["name"] == chosen_name]
    if not chosen:
        raise ValueError(f"chosen representation {chosen_name!r} is not among the rows")
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for family in sorted({r["family"] for r in rows}):
        points = sorted((r["bytes_per_vector"], r["recall@10"]) for r in rows if r["family"] == family)
        ax.plot(*zip(*points), marker="o", label=family)
    best = chosen[0]
    ax.scatter([best["bytes_per_vector"]], [best["recall@10"]], s=250, marker="*", color="black", zorder=3,
               label="chosen")
    ax.annotate(f"{best['name']}\n{best['bytes_per_vector']:g} B, recall@10 {best['recall@10']:.3f}",
                (best["bytes_per_vector"], best["recall@10"]), textcoords="offset points", xytext=(10, -28))
    ax.set_xscale("log", base=2)
    ticks = sorted({r["bytes_per_vector"] for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bytes per vector (log scale)")
    ax.set_ylabel("recall@10 vs raw-512 exact top-10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path_or_fileobj, format="png")
