"""Scores of stored representations (numpy): what coding does to STS pairs, labelled search and neighbours.

A representation is anything with ``encode(x) -> stored``, ``decode(stored)
-> float32``, ``query(x) -> float32`` and ``scores(queries, decoded) ->
[n_queries, n]`` (``core.codecs.Representation``). Stored
vectors are what a corpus keeps, so both sentences of an STS pair and every
golden-set document go through encode/decode; queries are only reduced.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from core.evaluation import metrics
from core.evaluation.metrics import TopK


def stored(representation, x: np.ndarray) -> np.ndarray:
    """What reading back the stored form of ``x`` gives."""
    return representation.decode(representation.encode(x))


def sts_scores(representation, raw_a: np.ndarray, raw_b: np.ndarray, human: np.ndarray) -> dict:
    """Fidelity (raw vs stored pair cosines) and correlation with the human scores."""
    a, b = stored(representation, raw_a), stored(representation, raw_b)
    return {"fidelity": metrics.sts_fidelity(raw_a, raw_b, a, b), "human": metrics.human_correlation(a, b, human)}


def ranked(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Top-k indices of each row of a score matrix (ties to the lower index; ``-1`` pads)."""
    top = TopK(scores.shape[0], k, exclude)
    top.update(np.where(np.isfinite(scores), scores, -np.inf), 0)
    return top.result()[0]


def golden_scores(representation, docs: np.ndarray, queries: np.ndarray, doc_ids: Sequence[str],
                  qrels: Sequence[Mapping], k: int = 10, query_groups=None, doc_groups=None) -> dict:
    """MRR@k / nDCG@k of labelled search with stored documents and reduced queries."""
    scores = representation.scores(representation.query(queries), stored(representation, docs))
    if query_groups is not None:
        scores = np.where(np.asarray(query_groups)[:, None] == np.asarray(doc_groups)[None, :], scores, -np.inf)
    top = ranked(scores, k)
    return metrics.labelled_retrieval([[doc_ids[i] for i in row if i >= 0] for row in top], qrels, k)


class Search:
    """Exact search of one representation over a corpus that arrives in chunks, timed.

    ``add(chunk raw vectors, offset)`` codes the chunk, decodes it and merges
    its scores into the running top-``k``; ``result()`` gives the indices.
    """

    def __init__(self, representation, queries: np.ndarray, exclude: np.ndarray, k: int):
        self.representation = representation
        self.queries = representation.query(queries)
        self.top = TopK(len(queries), k, exclude)
        self.encode_s = self.search_s = 0.0
        self.rows = 0

    def add(self, chunk: np.ndarray, offset: int) -> None:
        start = time.perf_counter()
        decoded = stored(self.representation, chunk)
        middle = time.perf_counter()
        self.top.update(self.representation.scores(self.queries, decoded), offset)
        self.encode_s += middle - start
        self.search_s += time.perf_counter() - middle
        self.rows += len(chunk)

    def result(self) -> np.ndarray:
        return self.top.result()[0]

    def timings(self) -> dict:
        return {"encode_us_per_vector": round(1e6 * self.encode_s / max(self.rows, 1), 3),
                "search_ms_per_query": round(1e3 * self.search_s / max(len(self.queries), 1), 3)}
