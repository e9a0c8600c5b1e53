"""The one search engine: exact over what is stored, chunks merge exactly, ties to the lower row, two stages."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import codecs, reducers, search
from core.evaluation import metrics
from core.pq import train_pq


def _brute(queries: np.ndarray, corpus: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Cosine top-k by sorting every score: best first, ties to the lower row, excluded rows left out."""
    scores = metrics.normalize_rows(queries) @ metrics.normalize_rows(corpus).T
    out = np.full((len(queries), k), -1)
    for i, row in enumerate(scores):
        order = [j for j in np.lexsort((np.arange(len(row)), -row)) if exclude is None or j != exclude[i]][:k]
        out[i, :len(order)] = order
    return out


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_search_equals_one_exact_search_with_exclusion(chunk):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 24)).astype(np.float32)
    at = rng.choice(300, 40, replace=False)
    exclude = at.copy()
    exclude[::5] = -1  # some queries exclude nothing
    got, scores = search.search(search.Cosine(24), corpus, corpus[at], 10, chunk_rows=chunk, exclude=exclude)
    np.testing.assert_array_equal(got, _brute(corpus[at], corpus, 10, exclude))
    assert not (got == exclude[:, None]).any() and (got[::5, 0] == at[::5]).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("chunk", [3, 50, 1000])
def test_the_many_ties_go_to_the_lower_row(chunk):
    # +-1 vectors in 16 dims: every cosine is a multiple of 1/16, many tie; rows 150.. duplicate rows 0..49.
    rng = np.random.default_rng(1)
    corpus = rng.choice([-1.0, 1.0], size=(200, 16)).astype(np.float32)
    corpus[150:] = corpus[:50]
    queries = rng.choice([-1.0, 1.0], size=(30, 16)).astype(np.float32)
    got, _ = search.search(search.Cosine(16), corpus, queries, 15, chunk_rows=chunk)
    np.testing.assert_array_equal(got, _brute(queries, corpus, 15))


def test_fewer_rows_than_k_are_padded_and_groups_rank_within_themselves():
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.1]], np.float32)
    rows, scores = search.top_k(np.array([[1.0, 0.0]]), corpus, 6)
    np.testing.assert_array_equal(rows, [[0, 3, 2, 1, -1, -1]])
    assert np.isneginf(scores[0, 4:]).all()
    rows, scores = search.top_k(np.array([[1.0, 0.0]]), corpus, 3, query_groups=np.array(["r1"]),
                                corpus_groups=np.array(["r1", "r2", "r1", "r2"]))
    np.testing.assert_array_equal(rows, [[0, 2, -1]])
    assert np.isneginf(scores[0, 2])


@pytest.mark.parametrize("metric, opq", [("l2", False), ("ip", False), ("ip", True)])
def test_pq_codes_are_searched_asymmetrically_as_stored(metric, opq):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    codec = train_pq(x, 8, opq=opq, seed=0, metric=metric, opq_niter=5)
    rep = codecs.Representation("pq-8", "pq", "pq", 8, None, codec)
    stored = rep.encode(x)
    queries = x[:5] + 0.01
    rows, scores = search.search(rep, stored, queries, 10, chunk_rows=333)
    decoded = codec.decode(stored)
    # higher is better: minus squared L2, or the inner product for an inner-product codec
    similarity = queries @ decoded.T if metric == "ip" else -((queries[:, None, :] - decoded[None]) ** 2).sum(-1)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :10]
    assert (rows == expected).mean() > 0.95  # float rounding may swap near-ties
    np.testing.assert_allclose(scores[:, 0], similarity[np.arange(5), rows[:, 0]], rtol=1e-4)


def test_rerank_orders_candidates_by_cosine_and_fetches_each_once():
    rng = np.random.default_rng(3)
    corpus = rng.normal(size=(500, 32)).astype(np.float32)
    queries = rng.normal(size=(20, 32)).astype(np.float32)
    candidates = np.stack([rng.choice(500, 40, replace=False) for _ in range(20)])
    candidates[3, 30:] = -1
    calls = []

    def lookup(rows):
        calls.append(rows)
        return corpus[rows]

    got, _ = search.rerank(candidates, queries, lookup, 10)
    for i, row in enumerate(candidates):
        row = row[row >= 0]
        np.testing.assert_array_equal(got[i], row[_brute(queries[i:i + 1], corpus[row], 10)[0]])
    assert len(calls) == 1 and np.array_equal(calls[0], np.unique(candidates[candidates >= 0]))
    everything = np.tile(rng.permutation(500), (20, 1))
    np.testing.assert_array_equal(search.rerank(everything, queries, lookup, 8)[0], _brute(queries, corpus, 8))


def test_dense_representations_are_searched_by_cosine_of_what_is_stored():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    rep = codecs.dense(reducers.Identity(16), "raw", "int8",
                       codecs.quantization.Int8Codec(x.min(axis=0), x.max(axis=0)))
    stored = rep.encode(x)
    rows, _ = search.search(rep, stored, x[:10], 5)
    np.testing.assert_array_equal(rows, _brute(x[:10], rep.decode(stored), 5))


def test_golden_retrieval_global_and_within_group():
    docs = np.array([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0]], np.float32)
    ids = ["a", "b", "c"]
    query = np.array([[1.0, 0.05]], np.float32)
    out = search.golden_retrieval(search.Cosine(2), docs, query, ids, [{"b": 1}], k=2)
    assert out["mrr@2"] == pytest.approx(0.5) and out["ndcg@2"] == pytest.approx(1 / math.log2(3))
    within = search.golden_retrieval(search.Cosine(2), docs, query, ids, [{"b": 1}], k=2,
                                     query_groups=np.array([2]), doc_groups=np.array([1, 2, 2]))
    assert within["mrr@2"] == 1.0 and within["ndcg@2"] == pytest.approx(1.0)


def test_topk_merges_candidates_in_any_order_with_signed_zero_and_padding():
    top = metrics.TopK(1, 5)
    top.add(np.array([[3, 4, 5]]), np.array([[-0.0, 0.0, 2.0]], np.float32))
    top.add(np.array([[0, 1, 2, -1]]), np.array([[0.5, 2.0, 2.0, 9.0]], np.float32))
    rows, scores = top.result()
    np.testing.assert_array_equal(rows, [[1, 2, 5, 0, 3]])
    np.testing.assert_array_equal(scores, [[2, 2, 2, 0.5, 0]])
    with pytest.raises(ValueError, match="two"):
        top.add(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        metrics.TopK(2, 0)
