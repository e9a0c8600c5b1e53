"""One search engine for stored vectors: what ``shrink search`` answers with and ``shrink evaluate`` measures.

Search is exact over what is stored, with faiss: dense rows (float32,
float16, int8 codes) are decoded to unit vectors in an inner-product index,
so scores are cosines; PQ codes go into faiss's asymmetric-distance index as
stored (a raw query against the codes; scores are negative squared L2, or
inner products for a codec fitted with that metric).
Queries are reduced, never quantized. A corpus too large for one index is
searched in chunks whose results merge exactly (``metrics.TopK``: ties go to
the lower row). ``rerank`` is the second stage of two-stage search: a first
stage's candidates re-ranked by cosine in a finer representation.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import faiss
import numpy as np

from core.evaluation.metrics import TopK, labelled_retrieval, normalize_rows
from core.pq import search_index


def query_vectors(representation, raw: np.ndarray) -> np.ndarray:
    """What queries are searched with: reduced unit vectors (dense), raw vectors (PQ: asymmetric)."""
    if representation.dense:
        return normalize_rows(representation.query(raw))
    return np.ascontiguousarray(raw, dtype=np.float32)


def build_index(representation, stored: np.ndarray) -> faiss.Index:
    """A faiss index over stored rows (row i = id i)."""
    if not representation.dense:
        return search_index(representation.codec, np.ascontiguousarray(stored))
    index = faiss.IndexFlatIP(representation.dim)
    index.add(normalize_rows(representation.decode(stored)))
    return index


def _higher_is_better(index: faiss.Index) -> bool:
    """Whether the index scores by similarity (inner product) rather than distance (L2)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return inner.metric_type == faiss.METRIC_INNER_PRODUCT


def _ranked(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) holding every row of faiss's top ``k`` and all rows tied with the k-th, higher better.

    faiss keeps an arbitrary one of several rows tied at the k-th place; asking for more until the last
    score falls below the k-th gives all of them, so ``TopK`` can break the tie by row, as exact search does.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    wanted = min(k + 1, index.ntotal)
    while True:
        scores, rows = index.search(queries, wanted) if wanted else (np.zeros((len(queries), 0)),
                                                                     np.zeros((len(queries), 0), np.int64))
        scores = scores if _higher_is_better(index) else -scores
        if wanted <= k or wanted >= index.ntotal or (scores[:, -1] < scores[:, k - 1]).all():
            return rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        wanted = min(2 * wanted, index.ntotal)


class Search:
    """Exact top-``k`` of raw queries over stored rows that arrive in chunks, timed.

    ``add(stored chunk, offset)`` searches rows ``offset .. offset + len - 1``;
    ``exclude[i]`` is a row query i must not retrieve (itself, when queries are
    corpus rows). ``result()`` gives ``(rows, scores)``, best first.
    """

    def __init__(self, representation, raw_queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        self.representation, self.k, self.exclude = representation, k, exclude
        self.queries = query_vectors(representation, raw_queries)
        self.top = TopK(len(raw_queries), k)
        self.search_s = 0.0

    def add(self, stored: np.ndarray, offset: int) -> None:
        start = time.perf_counter()
        extra = 0 if self.exclude is None else 1
        rows, scores = _ranked(build_index(self.representation, stored), self.queries, self.k + extra)
        rows = np.where(rows >= 0, rows + offset, -1)
        if self.exclude is not None:
            hit = rows == np.asarray(self.exclude)[:, None]
            rows, scores = np.where(hit, -1, rows), np.where(hit, -np.inf, scores)
        self.top.add(rows, scores)
        self.search_s += time.perf_counter() - start

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.top.result()


def search(representation, stored: np.ndarray, raw_queries: np.ndarray, k: int, chunk_rows: int = 1 << 20,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows (and scores) of stored rows held in memory, indexed a chunk at a time."""
    engine = Search(representation, raw_queries, k, exclude)
    for start in range(0, len(stored), chunk_rows):
        engine.add(stored[start:start + chunk_rows], start)
    return engine.result()


def rerank(candidates: np.ndarray, fine_queries: np.ndarray, lookup: Callable[[np.ndarray], np.ndarray],
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Second stage of two-stage search: each query's candidates re-ranked by exact cosine.

    ``candidates[i]`` are row numbers from a cheap first stage (``-1`` for none);
    ``lookup(sorted unique rows) -> float vectors`` fetches the finer
    representation once per distinct candidate; ``fine_queries`` are the queries
    in that representation. Returns ``(rows, scores)`` of the top ``k``, ties to the lower row.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or candidates.shape[0] != len(fine_queries):
        raise ValueError(f"candidates must be [n_queries, m], got {candidates.shape} for {len(fine_queries)} queries")
    valid = candidates >= 0
    unique, inverse = np.unique(candidates[valid], return_inverse=True)
    vectors = normalize_rows(np.asarray(lookup(unique), np.float32)) if len(unique) else \
        np.zeros((0, np.asarray(fine_queries).shape[1]), np.float32)
    position = np.zeros(candidates.shape, dtype=np.int64)
    position[valid] = inverse
    scores = np.einsum("qd,qmd->qm", normalize_rows(fine_queries), vectors[position]) if len(unique) else \
        np.zeros(candidates.shape, np.float32)
    top = TopK(len(candidates), k)
    top.add(np.where(valid, candidates, -1), np.where(valid, scores, -np.inf))
    return top.result()


class Cosine:
    """Float rows searched by cosine: the raw float32 representation, for callers holding plain vectors."""

    dense = True

    def __init__(self, dim: int):
        self.dim = dim

    def query(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored, np.float32)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int = 10, *, exclude: np.ndarray | None = None,
          query_groups: np.ndarray | None = None,
          corpus_groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``k`` of float queries over float corpus rows (``-1`` pads short rows).

    With groups, a query ranks only the corpus rows of its own group (within-report retrieval).
    """
    queries, corpus = np.asarray(queries, np.float32), np.asarray(corpus, np.float32)
    representation = Cosine(corpus.shape[1])
    if query_groups is None:
        return search(representation, corpus, queries, k, exclude=exclude)
    return _by_group(lambda q, c: search(representation, corpus[c], queries[q], k), len(queries), k,
                     np.asarray(query_groups), np.asarray(corpus_groups))


def _by_group(run, n_queries: int, k: int, query_groups: np.ndarray, corpus_groups: np.ndarray):
    rows = np.full((n_queries, k), -1, np.int64)
    scores = np.full((n_queries, k), -np.inf, np.float32)
    for group in np.unique(query_groups):
        q, c = np.flatnonzero(query_groups == group), np.flatnonzero(corpus_groups == group)
        found, found_scores = run(q, c)
        rows[q] = np.where(found >= 0, c[np.maximum(found, 0)], -1) if len(c) else -1
        scores[q] = found_scores
    return rows, scores


def golden_retrieval(representation, stored_docs: np.ndarray, raw_queries: np.ndarray, doc_ids: Sequence[str],
                     qrels: Sequence[Mapping], k: int = 10, query_groups: np.ndarray | None = None,
                     doc_groups: np.ndarray | None = None) -> dict:
    """MRR@k / nDCG@k of labelled search: stored documents, raw queries, searched as ``shrink search`` does."""
    if query_groups is None:
        rows, _ = search(representation, stored_docs, raw_queries, k)
    else:
        rows, _ = _by_group(lambda q, c: search(representation, stored_docs[c], raw_queries[q], k),
                            len(raw_queries), k, np.asarray(query_groups), np.asarray(doc_groups))
    return labelled_retrieval([[doc_ids[i] for i in row if i >= 0] for row in rows], qrels, k)
