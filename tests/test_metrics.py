"""Evaluation math against values worked out by hand on tiny inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.evaluation import metrics


def test_paired_cosine_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(metrics.paired_cosine(a, b), [0.0, 1.0, 0.0, -1.0])
    with pytest.raises(ValueError):
        metrics.paired_cosine(a, b[:2])


def test_pearson_hand_value():
    # x = 1,2,3 ; y = 1,3,2 -> centered (-1,0,1), (-1,1,0): r = 1 / (sqrt2*sqrt2) = 0.5
    assert metrics.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.pearson([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        metrics.pearson([1, 2], [1, 2, 3])


def test_rankdata_averages_ties():
    np.testing.assert_array_equal(metrics.rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    np.testing.assert_array_equal(metrics.rankdata([3, 1, 2]), [3, 1, 2])


def test_spearman_with_ties_hand_value():
    # ranks x: 1, 2.5, 2.5, 4 ; ranks y: 1,2,3,4
    # centered: (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5): cov 4.5; |x|^2 4.5; |y|^2 5
    expected = 4.5 / math.sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(expected)
    # Monotone but non-linear: Spearman 1, Pearson < 1.
    x = np.array([1.0, 2, 3, 4, 5])
    assert metrics.spearman(x, x ** 3) == pytest.approx(1.0)
    assert metrics.pearson(x, x ** 3) < 0.99


def test_sts_fidelity_identity_and_rotation_and_damage():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    fid = metrics.sts_fidelity(a, b, a @ q, b @ q)  # a rotation keeps every cosine
    assert fid["pearson"] == pytest.approx(1.0) and fid["spearman"] == pytest.approx(1.0)
    cut = metrics.sts_fidelity(a, b, a[:, :2], b[:, :2])  # dropping dims changes cosines
    assert cut["pearson"] < 0.9


def test_human_correlation_hand_value():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 0.7071, 0
    out = metrics.human_correlation(a, b, [5.0, 4.0, 0.0])
    assert out["spearman"] == pytest.approx(1.0)
    c = np.array([1.0, math.sqrt(0.5), 0.0]); s = np.array([5.0, 4.0, 0.0])
    cc, sc = c - c.mean(), s - s.mean()
    assert out["pearson"] == pytest.approx(cc @ sc / math.sqrt((cc @ cc) * (sc @ sc)))


def test_neighbour_fidelity_hand_values():
    raw = np.array([[5, 6, 7]])
    # Identical lists: everything 1.
    same = metrics.neighbour_fidelity(raw, raw, k=3)
    assert same["mrr@3"] == 1.0 and same["recall@3"] == 1.0 and same["ndcg@3"] == pytest.approx(1.0)
    # Reduced list [6, 9, 5]: raw top-1 (5) at rank 3 -> MRR 1/3; overlap {5,6} -> recall 2/3.
    # grades: 5->3, 6->2, 7->1. DCG = 2/log2(2) + 0 + 3/log2(4) = 2 + 1.5 = 3.5
    # IDCG = 3 + 2/log2(3) + 1/log2(4) = 3 + 1.26186 + 0.5
    out = metrics.neighbour_fidelity(raw, np.array([[6, 9, 5]]), k=3)
    assert out["mrr@3"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["ndcg@3"] == pytest.approx(3.5 / (3 + 2 / math.log2(3) + 0.5))
    # Averaging over two queries.
    two = metrics.neighbour_fidelity(np.array([[5, 6, 7], [1, 2, 3]]), np.array([[6, 9, 5], [1, 2, 3]]), k=3)
    assert two["mrr@3"] == pytest.approx((1 / 3 + 1) / 2) and two["queries"] == 2


def test_labelled_retrieval_hand_values():
    rankings = [["d3", "d1", "d2"], ["x", "y", "z"]]
    qrels = [{"d1": 2, "d2": 1, "d9": 0}, {"z": 1}]
    out = metrics.labelled_retrieval(rankings, qrels, k=3)
    # q1: first relevant at rank 2 -> 1/2; DCG = 2/log2(3) + 1/log2(4); IDCG = 2 + 1/log2(3)
    # q2: relevant at rank 3 -> 1/3; DCG = 1/log2(4) = .5; IDCG = 1
    q1 = (2 / math.log2(3) + 0.5) / (2 + 1 / math.log2(3))
    assert out["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["ndcg@3"] == pytest.approx((q1 + 0.5) / 2)
    # Cut at k: a relevant document at rank 4 does not count.
    cut = metrics.labelled_retrieval([["a", "b", "c", "d1"]], [{"d1": 1}], k=3)
    assert cut["mrr@3"] == 0.0 and cut["ndcg@3"] == 0.0
    # Integer ids with -1 padding (within-report rankings) are fine.
    padded = metrics.labelled_retrieval([[4, 2, -1]], [{2: 1}], k=3)
    assert padded["mrr@3"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no relevant"):
        metrics.labelled_retrieval([["a"]], [{"a": 0}])


def test_neighbour_fidelity_recall_confidence_half_width():
    one = metrics.neighbour_fidelity(np.array([[5, 6, 7]]), np.array([[6, 9, 5]]), k=3)
    assert one["recall@3_ci95"] is None  # one query: no spread to estimate
    two = metrics.neighbour_fidelity(np.array([[5, 6, 7], [1, 2, 3]]), np.array([[6, 9, 5], [1, 2, 3]]), k=3)
    # recalls 2/3 and 1: sample std (1/3)/sqrt(2), half-width 1.96 * std / sqrt(2) = 1.96/6
    assert two["recall@3_ci95"] == pytest.approx(1.96 / 6)
