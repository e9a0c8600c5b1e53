"""OPQ+PQ codec: agrees with faiss used directly, serializes safely, searches stored codes, is reproducible."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from core import pq
from core.errors import ArtifactError

pytestmark = pytest.mark.filterwarnings("ignore:PQ trained on")
D, M = 64, 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """faiss's OpenMP threads spin-wait on busy shared cores: tiny trainings ran 10x slower with 2."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """2,000 correlated 64-d vectors: variance decays over a random basis, so a rotation matters."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(D, D)))
    return ((rng.normal(size=(2000, D)) * np.exp(-np.arange(D) / 10)) @ basis).astype(np.float32)


@pytest.fixture(scope="module")
def opq_codec(x) -> pq.PQCodec:
    return pq.train_pq(x, M, opq_niter=5)


@pytest.fixture(scope="module")
def pq_codec(x) -> pq.PQCodec:
    return pq.train_pq(x, M, opq=False)


def _relative_error(codec: pq.PQCodec, x: np.ndarray) -> float:
    return float(((codec.decode(codec.encode(x)) - x) ** 2).sum() / (x ** 2).sum())


def test_codec_shape_and_properties(opq_codec, pq_codec, x):
    for codec, has_opq in ((opq_codec, True), (pq_codec, False)):
        assert (codec.d, codec.m, codec.nbits, codec.code_size, codec.opq) == (D, M, 8, M, has_opq)
        assert codec.metric == pq.DEFAULT_METRIC
        codes = codec.encode(x)
        assert codes.dtype == np.uint8 and codes.shape == (len(x), M)
        assert codec.decode(codes).shape == x.shape
    # The OPQ rotation balances the variance across sub-spaces: much lower distortion here.
    assert _relative_error(opq_codec, x) < 0.7 * _relative_error(pq_codec, x) < 0.7 * 0.3


def test_plain_pq_equals_faiss_index_pq_trained_directly(pq_codec, x):
    ref = faiss.IndexPQ(D, M, 8, faiss.METRIC_INNER_PRODUCT)
    ref.pq.cp.seed, ref.pq.cp.niter = 0, 25
    ref.pq.cp.max_points_per_centroid, ref.pq.cp.min_points_per_centroid = len(x) // 256 + 1, 1
    ref.train(x)
    np.testing.assert_array_equal(pq_codec.encode(x), ref.sa_encode(x))
    np.testing.assert_array_equal(pq_codec.decode(pq_codec.encode(x)), ref.sa_decode(ref.sa_encode(x)))


def test_opq_codes_are_the_pq_codes_of_the_rotated_vectors(opq_codec, x):
    rotation = faiss.downcast_VectorTransform(opq_codec.index.chain.at(0))
    product_quantizer = faiss.downcast_index(opq_codec.index.index).pq
    rotated = rotation.apply(x)
    assert not np.allclose(rotated, x, atol=1e-3)
    np.testing.assert_array_equal(opq_codec.encode(x), product_quantizer.compute_codes(rotated))
    codes = opq_codec.encode(x)
    back = rotation.reverse_transform(product_quantizer.decode(codes))
    np.testing.assert_allclose(opq_codec.decode(codes), back, atol=1e-6)


@pytest.mark.parametrize("which", ["opq_codec", "pq_codec"])
def test_search_index_equals_faiss_after_add(request, which, x):
    codec = request.getfixturevalue(which)
    stored = pq.search_index(codec, codec.encode(x))
    added = faiss.clone_index(codec.index)
    added.add(x)
    assert stored.ntotal == added.ntotal == len(x)
    queries = x[:100] + 0.01
    d1, i1 = stored.search(queries, 10)
    d2, i2 = added.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    assert codec.index.ntotal == 0  # the codec itself stays empty


def test_bytes_round_trip(opq_codec, pq_codec, x):
    for codec in (opq_codec, pq_codec):
        data = codec.to_bytes()
        assert isinstance(data, bytes)
        loaded = pq.PQCodec.from_bytes(data, d=D, code_size=M)
        assert loaded.to_bytes() == data and loaded.opq == codec.opq
        np.testing.assert_array_equal(loaded.encode(x), codec.encode(x))
        np.testing.assert_array_equal(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)))


def test_from_bytes_checks_expected_dimension_and_code_size(opq_codec):
    with pytest.raises(ArtifactError, match="dimension 64, expected 128"):
        pq.PQCodec.from_bytes(opq_codec.to_bytes(), d=128)
    with pytest.raises(ArtifactError, match="8-byte codes, expected 16"):
        pq.PQCodec.from_bytes(opq_codec.to_bytes(), code_size=16)


def _garbage(data: bytes) -> list:
    rng = np.random.default_rng(0)
    return [b"", b"garbage" * 20, data[:50], data[:len(data) // 2], data[:-1],
            rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not bytes", None]


def test_garbage_bytes_raise_artifact_error(opq_codec):
    for bad in _garbage(opq_codec.to_bytes()):
        with pytest.raises(ArtifactError):
            pq.PQCodec.from_bytes(bad)


def _serialized(index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def test_other_faiss_indexes_are_rejected(x):
    untrained = faiss.IndexPQ(D, M, 8)
    filled = faiss.IndexPQ(D, M, 4)
    filled.train(x)
    filled.add(x[:10])
    pca = faiss.IndexPreTransform(faiss.PCAMatrix(D, 32), faiss.IndexPQ(32, M, 4))
    pca.train(x)
    flat_inside = faiss.IndexPreTransform(faiss.RandomRotationMatrix(D, D), faiss.IndexFlatL2(D))
    flat_inside.train(x)
    cases = [(faiss.IndexFlatL2(D), "IndexFlat"), (untrained, "not trained"), (filled, "holds 10 vectors"),
             (pca, "square"), (flat_inside, "IndexPQ after")]
    for index, message in cases:
        with pytest.raises(ArtifactError, match=message):
            pq.PQCodec.from_bytes(_serialized(index))


def test_training_is_reproducible_for_a_seed(x):
    a, b, c = (pq.train_pq(x, M, seed=seed, niter=5, opq_niter=2) for seed in (3, 3, 4))
    assert a.to_bytes() == b.to_bytes()
    assert a.to_bytes() != c.to_bytes()
    assert not np.array_equal(a.encode(x), c.encode(x))


def test_nbits_sets_the_code_size(x):
    codec = pq.train_pq(x, 16, nbits=4, opq=False)
    assert codec.code_size == 8 and codec.encode(x[:3]).shape == (3, 8)


@pytest.mark.parametrize("kwargs, message", [({"m": 7}, "multiple of m=7"), ({"m": 8, "nbits": 0}, "nbits"),
                                             ({"m": 8, "metric": "cosine"}, "metric")])
def test_train_rejects_bad_arguments(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pq.train_pq(x, **kwargs)


def test_train_rejects_too_few_or_bad_rows(x):
    with pytest.raises(ValueError, match="at least 2\\*\\*nbits = 256"):
        pq.train_pq(x[:200], M)
    with pytest.raises(ValueError, match="2-d"):
        pq.train_pq(x[0], M)
    with pytest.warns(UserWarning, match="faiss recommends >= 624"):
        pq.train_pq(x[:300], M, nbits=4, opq=False)


def test_encode_decode_validate_shapes(opq_codec, x):
    with pytest.raises(ValueError, match=r"\[n, 64\]"):
        opq_codec.encode(x[:, :32])
    with pytest.raises(ValueError, match=r"uint8 codes of shape \[n, 8\]"):
        opq_codec.decode(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pq.search_index(opq_codec, np.zeros((2, 8), np.int8))
