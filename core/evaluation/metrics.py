"""Evaluation math in plain numpy: similarity fidelity, exact search, ranking metrics.

Everything here is a pure function of arrays, so the evaluate job, the
benchmarks and the tests share one implementation and none needs Beam or TF.

Conventions:
- similarity is cosine; inputs need not be unit-norm (rows are normalized here;
  an all-zero row has cosine 0 with everything);
- a ranking is a row of corpus indices, best first; ``-1`` pads a row that has
  fewer than ``k`` candidates (e.g. within-report search over 5 paragraphs);
- rank-based metrics are cut at ``k`` (10 by default) and averaged over queries.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (rows = vectors), got shape {x.shape}")
    return x


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = _as_2d(x, "x").astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for every row i (float64, shape (n,))."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired rows need equal shapes, got {a.shape} and {b.shape}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    denom = na * nb
    dots = np.einsum("ij,ij->i", a64, b64)
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlation needs equal lengths, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError("correlation needs at least 2 values")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("correlation inputs contain NaN or inf")
    return x, y


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant (undefined)."""
    x, y = _check_pair(x, y)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / denom) if denom > 0 else float("nan")


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values, and the run lengths.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    lengths = np.diff(np.r_[starts, x.size])
    avg = starts + (lengths + 1) / 2.0  # mean of ranks starts+1 .. starts+length
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, lengths)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of tie-averaged ranks)."""
    x, y = _check_pair(x, y)
    return pearson(rankdata(x), rankdata(y))


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"pearson": pearson(x, y), "spearman": spearman(x, y)}


def sts_fidelity(raw_a: np.ndarray, raw_b: np.ndarray,
                 reduced_a: np.ndarray, reduced_b: np.ndarray) -> dict[str, float]:
    """How well a reduced space keeps the raw space's pair similarities.

    For STS pairs (a_i, b_i): Pearson and Spearman between cos(a_i, b_i)
    computed in the raw space and in the reduced space (the reference's
    "fidelity"; 1.0 means the reduction changed no pair similarity's order/scale).
    """
    return correlations(paired_cosine(raw_a, raw_b), paired_cosine(reduced_a, reduced_b))


def human_correlation(a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Pearson/Spearman of cos(a_i, b_i) against human similarity scores."""
    return correlations(paired_cosine(a, b), scores)


# Exact top-k with deterministic ties: a (score, index) pair is packed into one
# uint64 key whose ascending order is "higher score first, then lower index"
# (the float32 bits made order-preserving in the high word, the index in the
# low word), so one ``np.partition`` per block picks the top-k, ties resolved.
# Corpus indices must therefore be below 2**32 - 1.
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
    """Exact top-k merged from candidate lists that arrive in any order (chunks of a corpus, re-ranked lists).

    Equals one exact search over all the candidates: best score first, ties to the lower row.
    Holds O(n_queries * k) keys.
    """

    def __init__(self, n_queries: int, k: int):
        if n_queries < 0 or k < 1:
            raise ValueError(f"need n_queries >= 0 and k >= 1, got {n_queries} and {k}")
        self.k = k
        self._keys = np.full((n_queries, k), _PAD, dtype=np.uint64)

    def add(self, indices: np.ndarray, scores: np.ndarray) -> None:
        """Merge candidate lists: ``indices`` (corpus rows, ``-1`` for none) and their ``scores``, per query."""
        indices, scores = np.asarray(indices, np.int64), np.asarray(scores, np.float32)
        if indices.shape != scores.shape or indices.ndim != 2 or indices.shape[0] != self._keys.shape[0]:
            raise ValueError(f"candidates must be two [{self._keys.shape[0]}, m] arrays, got {indices.shape} and "
                             f"{scores.shape}")
        if (indices > MAX_INDEX).any():
            raise ValueError(f"corpus rows must be below {MAX_INDEX + 1}")
        empty = (indices < 0) | ~np.isfinite(scores)
        keys = _encode(np.where(empty, 0, scores), np.maximum(indices, 0))
        keys[empty] = _PAD
        self._keys = _smallest(np.concatenate([self._keys, keys], axis=1), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64 [n_queries, k], scores float32 [n_queries, k]), best first."""
        return _decode(self._keys)


def _reciprocal_rank(ranking: Sequence, relevant) -> float:
    for rank, item in enumerate(ranking):
        if item in relevant:
            return 1.0 / (rank + 1)
    return 0.0


def _dcg(gains: Sequence[float]) -> float:
    gains = np.asarray(gains, dtype=np.float64)
    return float((gains / np.log2(np.arange(2, gains.size + 2))).sum())


def neighbour_fidelity(raw_topk: np.ndarray, reduced_topk: np.ndarray, k: int = 10) -> dict[str, float]:
    """Label-free retrieval fidelity: the raw-space neighbours are the golden set.

    Per query, with R = raw top-k and S = reduced-space top-k (corpus indices):
    - MRR@k: 1/rank in S of R[0] (the raw top-1 is the one relevant item), 0 if absent;
    - recall@k: |R ∩ S| / |R| (overlap of the two top-k lists);
    - nDCG@k: graded relevance rel(R[j]) = k - j (raw top-1 gets k, raw k-th
      gets 1, anything outside R gets 0), linear gain, log2(rank + 1) discount,
      normalized by the DCG of R itself (so raw-vs-raw scores 1.0).
    Means over queries; ``recall@k_ci95`` is the normal-approximation 95%
    half-width of the recall mean (None for one query).
    """
    raw_topk, reduced_topk = _as_2d(raw_topk, "raw_topk"), _as_2d(reduced_topk, "reduced_topk")
    if raw_topk.shape[0] != reduced_topk.shape[0]:
        raise ValueError("raw_topk and reduced_topk need one row per query each")
    if raw_topk.shape[1] < k or reduced_topk.shape[1] < k:
        raise ValueError(f"rankings must hold at least k={k} columns")
    mrr, recall, ndcg = [], [], []
    for raw, red in zip(raw_topk[:, :k], reduced_topk[:, :k]):
        raw = [int(i) for i in raw if i >= 0]
        red = [int(i) for i in red if i >= 0]
        if not raw:
            raise ValueError("a query has no raw neighbours (empty golden set)")
        grade = {doc: k - j for j, doc in enumerate(raw)}
        mrr.append(_reciprocal_rank(red, {raw[0]}))
        recall.append(len(set(raw) & set(red)) / len(raw))
        ndcg.append(_dcg([grade.get(d, 0) for d in red]) / _dcg([grade[d] for d in raw]))
    half_width = 1.96 * float(np.std(recall, ddof=1) / np.sqrt(len(recall))) if len(recall) > 1 else None
    return {f"mrr@{k}": float(np.mean(mrr)), f"recall@{k}": float(np.mean(recall)),
            f"recall@{k}_ci95": half_width, f"ndcg@{k}": float(np.mean(ndcg)), "queries": len(mrr)}


def labelled_retrieval(rankings: Sequence[Sequence], qrels: Sequence[Mapping], k: int = 10) -> dict[str, float]:
    """MRR@k and nDCG@k against human relevance judgments (BEIR/pytrec_eval style).

    ``rankings[i]`` is query i's retrieved document ids, best first (extra
    entries beyond k and ``-1`` padding are ignored); ``qrels[i]`` maps
    document id -> graded relevance (> 0 relevant). nDCG uses linear gain
    rel / log2(rank + 1), ideal DCG from the k highest judged relevances
    (trec_eval ``ndcg_cut``); MRR uses the first document with rel > 0.
    Queries without any relevant document are an error (BEIR drops them
    before scoring; so does our loader).
    """
    if len(rankings) != len(qrels):
        raise ValueError(f"{len(rankings)} rankings but {len(qrels)} qrels entries")
    if not rankings:
        raise ValueError("no queries to score")
    mrr, ndcg = [], []
    for i, (ranking, judged) in enumerate(zip(rankings, qrels)):
        relevant = {doc: rel for doc, rel in judged.items() if rel > 0}
        if not relevant:
            raise ValueError(f"query {i} has no relevant document in its qrels")
        top = [d for d in list(ranking) if not (isinstance(d, (int, np.integer)) and d < 0)][:k]
        mrr.append(_reciprocal_rank(top, relevant))
        ideal = sorted(relevant.values(), reverse=True)[:k]
        ndcg.append(_dcg([relevant.get(d, 0) for d in top]) / _dcg(ideal))
    return {f"mrr@{k}": float(np.mean(mrr)), f"ndcg@{k}": float(np.mean(ndcg)), "queries": len(mrr)}
