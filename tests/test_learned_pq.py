"""Learned PQ: the export is a standard faiss codec, and distillation lowers its own loss."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from core import learned_pq, pq

pytestmark = pytest.mark.filterwarnings("ignore:PQ trained on")
D, M = 32, 4


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """1,500 unit rows around 30 centres: neighbourhoods that a coarse code can blur."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, D))
    rows = centres[rng.integers(0, 30, 1500)] + 0.6 * rng.normal(size=(1500, D))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def codec(x) -> pq.PQCodec:
    return pq.train_pq(x, M, opq_niter=5)


def test_parts_round_trip_to_the_same_codec(codec, x):
    rotation, codebooks = learned_pq.parts(codec)
    rebuilt = learned_pq.to_codec(rotation, codebooks)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(D), atol=1e-5)
    np.testing.assert_array_equal(rebuilt.encode(x), codec.encode(x))
    np.testing.assert_allclose(rebuilt.decode(rebuilt.encode(x)), codec.decode(codec.encode(x)), atol=1e-6)


@pytest.mark.parametrize("assignment", ["straight-through", "fixed"])
def test_fine_tune_lowers_the_distillation_loss_and_exports_an_inner_product_codec(codec, x, assignment):
    schedule = learned_pq.Schedule(steps=300, batch=32, positives=10, negatives=64, learning_rate=1e-3,
                                   assignment=assignment, reencode_every=50)
    curve: list = []
    tuned = learned_pq.fine_tune(codec, x, schedule, curve)
    assert tuned.code_size == codec.code_size and tuned.metric == "ip"
    assert [step for step, _ in curve] == [50, 100, 150, 200, 250, 300]
    queries = np.arange(0, len(x), 5)  # the objective measured with hard codes, as search scores
    before = learned_pq.distillation_loss(codec, x, queries, positives=10, negatives=64)
    after = learned_pq.distillation_loss(tuned, x, queries, positives=10, negatives=64)
    assert after < 0.9 * before, (before, after, curve)
    rotation, _ = learned_pq.parts(tuned)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(D), atol=1e-4)
    index = pq.search_index(tuned, tuned.encode(x))
    assert faiss.downcast_index(index.index).metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.parametrize("assignment", ["straight-through", "fixed"])
def test_fine_tune_is_deterministic(codec, x, assignment):
    schedule = learned_pq.Schedule(steps=20, batch=16, positives=5, negatives=16, assignment=assignment,
                                   reencode_every=10)
    a, b = (learned_pq.fine_tune(codec, x, schedule) for _ in range(2))
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
