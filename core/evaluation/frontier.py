"""The quality-per-byte frontier: streaming exact search, two-stage re-ranking, choosing and plotting.

Numpy only. Rankings follow ``metrics.top_k``'s conventions: best first,
ties broken by the lower corpus index, ``-1`` (score ``-inf``) pads rows
with fewer than k results, and a query's ``exclude`` index never appears.

The streaming top-k (``metrics.TopK``) packs each (score, index) pair into one
sortable key, so ties resolve to the lower index without a per-row loop.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import numpy as np

from core.errors import InputError
from core.evaluation import metrics
from core.evaluation.metrics import _PAD, _decode, _encode, _smallest

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
    sizes = [r["bytes_per_vector"] for r in rows]
    ticks = [2 ** i for i in range(math.floor(math.log2(min(sizes))), math.ceil(math.log2(max(sizes))) + 1)]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bytes per vector (log scale)")
    ax.set_ylabel("recall@10 vs raw-512 exact top-10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path_or_fileobj, format="png")
