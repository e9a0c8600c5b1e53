"""Frontier math: streaming top-k equals one-shot search, re-ranking, choosing within a budget, the plot."""
from __future__ import annotations

import io

import numpy as np
import pytest

from core.errors import InputError
from core.evaluation import frontier, metrics


def _chunked(scores: np.ndarray, k: int, chunk: int, exclude=None, reverse=False) -> tuple:
    acc = metrics.TopK(scores.shape[0], k, exclude)
    starts = list(range(0, scores.shape[1], chunk))
    for start in reversed(starts) if reverse else starts:
        acc.update(scores[:, start:start + chunk], start)
    return acc.result()


def _cosines(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return metrics.normalize_rows(q) @ metrics.normalize_rows(c).T


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("reverse", [False, True])
def test_topk_equals_one_shot_top_k_with_exclusion(chunk, reverse):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 24)).astype(np.float32)
    queries_at = rng.choice(300, 40, replace=False)
    exclude = queries_at.copy()
    exclude[::5] = -1  # some queries exclude nothing
    expected = metrics.top_k(corpus[queries_at], corpus, 10, exclude=exclude)
    got = _chunked(_cosines(corpus[queries_at], corpus), 10, chunk, exclude, reverse)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert not (got[0] == exclude[:, None]).any()
    assert (got[0][::5, 0] == queries_at[::5]).all()  # not excluded: finds itself


@pytest.mark.parametrize("chunk", [3, 50])
def test_topk_breaks_the_many_ties_by_lower_index(chunk):
    # +-1 vectors in 16 dims normalize to +-0.25: every cosine is an exact multiple of 1/16, many tie.
    rng = np.random.default_rng(1)
    corpus = rng.choice([-1.0, 1.0], size=(200, 16)).astype(np.float32)
    corpus[150:] = corpus[:50]  # exact duplicates too
    queries = rng.choice([-1.0, 1.0], size=(30, 16)).astype(np.float32)
    expected = metrics.top_k(queries, corpus, 15)
    got = _chunked(_cosines(queries, corpus), 15, chunk, reverse=True)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_topk_hand_example_with_signed_zero_and_padding():
    scores = np.array([[0.5, 2.0, 2.0, -0.0, 0.0, 2.0]], dtype=np.float32)
    acc = metrics.TopK(1, 5)
    acc.update(scores[:, 3:], 3)
    acc.update(scores[:, :3], 0)
    idx, val = acc.result()
    np.testing.assert_array_equal(idx, [[1, 2, 5, 0, 3]])  # 2.0 x3 by index, 0.5, then -0.0 == 0.0 by index
    np.testing.assert_array_equal(val, [[2, 2, 2, 0.5, 0]])
    acc = metrics.TopK(1, 4, exclude=np.array([1]))
    acc.update(scores[:, :2], 0)
    idx, val = acc.result()
    np.testing.assert_array_equal(idx, [[0, -1, -1, -1]])
    assert val[0, 0] == 0.5 and np.isneginf(val[0, 1:]).all()


def test_topk_with_fewer_rows_than_k_matches_top_k():
    rng = np.random.default_rng(2)
    corpus, queries = rng.normal(size=(6, 8)), rng.normal(size=(4, 8))
    exclude = np.array([0, -1, 5, 2])
    expected = metrics.top_k(queries, corpus, 10, exclude=exclude)
    got = _chunked(_cosines(queries, corpus), 10, 4, exclude)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_topk_rejects_bad_input():
    acc = metrics.TopK(2, 3)
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([[0.1, np.nan], [0.2, 0.3]]), 0)
    with pytest.raises(ValueError, match=r"\[2, chunk\]"):
        acc.update(np.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="out of"):
        acc.update(np.zeros((2, 4)), 2 ** 32 - 3)
    with pytest.raises(ValueError):
        metrics.TopK(2, 0)
    with pytest.raises(ValueError, match="one index per query"):
        metrics.TopK(2, 3, exclude=np.array([1]))


def _brute_rescore(candidates, queries, corpus, k):
    out = np.full((len(queries), k), -1)
    for i, row in enumerate(candidates):
        row = row[row >= 0]
        sims = _cosines(queries[i:i + 1], corpus[row])[0]
        order = np.lexsort((row, -sims))[:k]
        out[i, :len(order)] = row[order]
    return out


def test_rescore_reranks_candidates_by_exact_cosine_and_fetches_each_once():
    rng = np.random.default_rng(3)
    corpus = rng.normal(size=(500, 32)).astype(np.float32)
    queries = rng.normal(size=(20, 32)).astype(np.float32)
    candidates = np.stack([rng.choice(500, 40, replace=False) for _ in range(20)])
    candidates[3, 30:] = -1  # a short candidate list
    calls = []

    def lookup(indices):
        calls.append(indices)
        return corpus[indices]

    got = frontier.rescore(candidates, queries, lookup, 10, block=6)
    np.testing.assert_array_equal(got, _brute_rescore(candidates, queries, corpus, 10))
    assert len(calls) == 1
    assert np.array_equal(calls[0], np.unique(candidates[candidates >= 0]))
    assert not np.array_equal(got[:, 0], candidates[:, 0])  # the order really changed


def test_rescore_of_every_row_is_exact_search_and_pads_short_lists():
    rng = np.random.default_rng(4)
    corpus = rng.choice([-1.0, 1.0], size=(60, 16)).astype(np.float32)  # many ties
    queries = corpus[:5] * -1
    everything = np.tile(rng.permutation(60), (5, 1))
    np.testing.assert_array_equal(frontier.rescore(everything, queries, lambda i: corpus[i], 8),
                                  metrics.top_k(queries, corpus, 8)[0])
    short = np.array([[3, 1, -1], [-1, -1, -1], [2, -1, -1], [0, 5, 4], [7, 0, 9]])
    got = frontier.rescore(short, queries, lambda i: corpus[i], 4)
    assert got.shape == (5, 4) and (got[1] == -1).all() and (got[2] == [2, -1, -1, -1]).all()
    assert (got[:, 3] == -1).all()


def _rows():
    return [
        {"name": "raw float32", "family": "raw", "bytes_per_vector": 2048, "recall@10": 1.0, "sts_fidelity": 1.0},
        {"name": "raw int8", "family": "raw", "bytes_per_vector": 512, "recall@10": 0.995, "sts_fidelity": 0.9999},
        {"name": "PCA-256 int8", "family": "PCA", "bytes_per_vector": 256, "recall@10": 0.86},
        {"name": "OPQ128", "family": "PQ", "bytes_per_vector": 128, "recall@10": 0.87, "sts_fidelity": 0.97},
        {"name": "PCA-128 f32", "family": "PCA", "bytes_per_vector": 512, "recall@10": 0.995, "sts_fidelity": 0.99},
        {"name": "OPQ64", "family": "PQ", "bytes_per_vector": 64, "recall@10": 0.77, "sts_fidelity": 0.95},
    ]


def test_choose_best_recall_within_budget_and_tie_breaks():
    rows = _rows()
    assert frontier.choose(rows, 4096)["name"] == "raw float32"
    assert frontier.choose(rows, 600)["name"] == "raw int8"  # recall tie with PCA-128 f32: higher fidelity
    assert frontier.choose(rows, 300)["name"] == "OPQ128"  # 0.87 beats PCA-256's 0.86
    assert frontier.choose(rows, 64)["name"] == "OPQ64"  # budget is inclusive
    rows[1]["sts_fidelity"] = rows[4]["sts_fidelity"]
    rows[4]["bytes_per_vector"] = 500  # now a full tie but for bytes: fewer wins
    assert frontier.choose(rows, 600)["name"] == "PCA-128 f32"
    rows[4]["sts_fidelity"] = None  # a missing fidelity loses a recall tie
    assert frontier.choose(rows, 600)["name"] == "raw int8"


def test_choose_nothing_fits_names_the_smallest():
    with pytest.raises(InputError, match="fits 32 bytes per vector; the smallest is OPQ64 at 64 bytes"):
        frontier.choose(_rows(), 32)
    with pytest.raises(InputError):
        frontier.choose([], 1000)


def test_plot_frontier_writes_a_png(tmp_path):
    from matplotlib import image

    path = tmp_path / "frontier.png"
    frontier.plot_frontier(_rows(), "OPQ128", str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(str(path)).shape[:2] == (500, 800)
    buffer = io.BytesIO()
    frontier.plot_frontier(_rows(), "raw int8", buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and buffer.getvalue() != data
    with pytest.raises(ValueError, match="not among the rows"):
        frontier.plot_frontier(_rows(), "PCA-512", io.BytesIO())
