"""Product-quantization codec (faiss OPQ + PQ): vectors -> ``m``-byte codes, and search over stored codes.

The codec is a trained, empty faiss index: ``IndexPreTransform(OPQ rotation,
IndexPQ)`` (or a bare ``IndexPQ`` without OPQ). Codes are faiss's own
``sa_encode`` bytes, so ``search_index`` can serve stored codes with
asymmetric distance computation (raw query vs coded corpus) without decoding
or re-encoding them. Serialized with faiss's own format; no pickle.

Search metric: L2 by default. On the financial USE slice (unit-norm vectors,
recall@10 against the exact cosine top-10) it beat inner product for every
codec measured: OPQ64 0.744 vs 0.736, plain PQ64 0.716 vs 0.702 (see
benchmarks/RESULTS.md, "Codecs: quality per stored byte"). The codes are the
same either way (PQ training is L2 k-means); L2 also charges a reconstruction
for its norm, which inner product rewards.
"""
from __future__ import annotations

import math
import re
import warnings

import faiss
import numpy as np

from core.errors import ArtifactError

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DEFAULT_METRIC = "l2"
# faiss's k-means asks for at least this many training rows per centroid.
MIN_ROWS_PER_CENTROID = 39


def _faiss_reason(error: Exception) -> str:
    """The useful part of a faiss C++ exception: its message without the source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    m = re.match(r"Error in .*? at \S+:\d+: (.*)", text)
    return m.group(1) if m else text


def _split(index: faiss.Index) -> tuple[faiss.Index, faiss.IndexPQ, bool]:
    """(outer index, its IndexPQ, has OPQ) of a codec index; ArtifactError if it is not one.

    ``index`` must be the owning Python object faiss returned (deserialize_index and
    clone_index give the concrete class); a ``downcast_index`` copy would not own it.
    """
    if isinstance(index, faiss.IndexPQ):
        return index, index, False
    if not isinstance(index, faiss.IndexPreTransform):
        raise ArtifactError(f"expected a faiss OPQ+PQ or PQ codec, got a {type(index).__name__}")
    if index.chain.size() != 1:
        raise ArtifactError(f"expected one OPQ rotation before the PQ, got {index.chain.size()} transforms")
    rotation = faiss.downcast_VectorTransform(index.chain.at(0))
    if not isinstance(rotation, faiss.LinearTransform) or rotation.d_in != rotation.d_out or rotation.have_bias:
        bias = ", with a bias" if rotation.have_bias else ""
        raise ArtifactError(f"expected a square OPQ rotation without bias, got a {type(rotation).__name__} "
                            f"({rotation.d_in} -> {rotation.d_out} dims{bias})")
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexPQ):
        raise ArtifactError(f"expected an IndexPQ after the OPQ rotation, got a {type(inner).__name__}")
    return index, inner, True


class PQCodec:
    """A trained (O)PQ codec: ``encode`` float32 [n, d] -> uint8 [n, code_size], ``decode`` back."""

    def __init__(self, index: faiss.Index):
        self.index, self._pq_index, self.opq = _split(index)
        pq = self._pq_index
        if not self.index.is_trained:
            raise ArtifactError("the PQ codec is not trained")
        if self.index.ntotal != 0:
            raise ArtifactError(f"expected an empty PQ codec, it holds {self.index.ntotal} vectors")
        if pq.metric_type not in METRICS.values():
            raise ArtifactError(f"PQ codec has unsupported metric type {pq.metric_type}")
        if pq.search_type != faiss.IndexPQ.ST_PQ:
            raise ArtifactError(f"PQ codec has search type {pq.search_type}, expected plain PQ (ADC)")
        if not np.isfinite(faiss.vector_to_array(pq.pq.centroids)).all():
            raise ArtifactError("PQ codec has NaN or infinite centroids")
        if self.opq and not np.isfinite(faiss.vector_to_array(
                faiss.downcast_VectorTransform(self.index.chain.at(0)).A)).all():
            raise ArtifactError("PQ codec's OPQ rotation holds NaN or infinite values")

    @property
    def d(self) -> int:
        return self.index.d

    @property
    def m(self) -> int:
        return self._pq_index.pq.M

    @property
    def nbits(self) -> int:
        return self._pq_index.pq.nbits

    @property
    def code_size(self) -> int:
        return self.index.sa_code_size()

    @property
    def metric(self) -> str:
        return next(name for name, value in METRICS.items() if value == self._pq_index.metric_type)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.index.sa_encode(_vectors(x, self.d))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.index.sa_decode(_codes(codes, self.code_size))

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, d: int | None = None, code_size: int | None = None) -> "PQCodec":
        """The codec ``to_bytes`` wrote; ArtifactError unless it is one (of dimension ``d``, ``code_size`` bytes)."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ArtifactError("PQ codec data is empty or not bytes")
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, MemoryError) as e:
            raise ArtifactError(f"PQ codec data is not a readable faiss index: {_faiss_reason(e)}") from None
        codec = cls(index)
        if d is not None and codec.d != d:
            raise ArtifactError(f"PQ codec has dimension {codec.d}, expected {d}")
        if code_size is not None and codec.code_size != code_size:
            raise ArtifactError(f"PQ codec writes {codec.code_size}-byte codes, expected {code_size}")
        return codec


def _vectors(x: np.ndarray, d: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"expected vectors of shape [n, {d}], got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    return x


def _codes(codes: np.ndarray, code_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != code_size or codes.dtype != np.uint8:
        raise ValueError(f"expected uint8 codes of shape [n, {code_size}], got {codes.dtype} {codes.shape}")
    return np.ascontiguousarray(codes)


def _rng(seed: int, purpose: int) -> np.random.Generator:
    """A stream of its own per purpose: never the ``default_rng(seed)`` stream that may have made the data."""
    return np.random.default_rng([seed, purpose])


def _random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(_rng(seed, 1).standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _pq_index(d: int, m: int, nbits: int, metric: str, n: int, seed: int, niter: int) -> faiss.IndexPQ:
    index = faiss.IndexPQ(d, m, nbits, METRICS[metric])
    cp = index.pq.cp
    cp.seed, cp.niter = seed, niter
    cp.max_points_per_centroid = math.ceil(n / (1 << nbits))  # train on the whole sample, no subsampling
    cp.min_points_per_centroid = 1  # small samples: one Python warning instead of m faiss lines
    return index


def _opq_rotation(x: np.ndarray, m: int, nbits: int, seed: int, niter: int) -> faiss.OPQMatrix:
    """An OPQ rotation trained on the rows of ``x``; its random start and inner PQ follow ``seed``."""
    d = x.shape[1]
    opq = faiss.OPQMatrix(d, m)
    opq.niter, opq.max_train_points = niter, len(x)
    faiss.copy_array_to_vector(_random_rotation(d, seed).ravel(), opq.A)  # faiss's own start: fixed seed 1234
    inner = faiss.ProductQuantizer(d, m, nbits)
    inner.cp.seed, inner.cp.min_points_per_centroid = seed, 1
    opq.pq = inner  # a borrowed pointer, used only while training
    opq.train(x)
    opq.pq = None
    return opq


def train_pq(sample: np.ndarray, m: int, nbits: int = 8, opq: bool = True, seed: int = 0,
             niter: int = 25, opq_niter: int = 50, metric: str = DEFAULT_METRIC) -> PQCodec:
    """Train an OPQ+PQ (or plain PQ) codec of ``m`` sub-quantizers x ``nbits`` on the rows of ``sample``.

    The PQ k-means (``niter`` iterations) and the OPQ rotation (``opq_niter``
    alternating rotation/PQ rounds: each round re-trains a PQ, so the rotation
    costs about ``opq_niter / 5`` PQ trainings) use every row. Equal inputs and seed give
    an equal codec. Codes take ``ceil(m * nbits / 8)`` bytes.
    """
    x = np.asarray(sample)
    if x.ndim != 2:
        raise ValueError(f"sample must be a 2-d array [n, d], got shape {x.shape}")
    x = _vectors(x, x.shape[1])
    n, d = x.shape
    if m < 1 or d % m:
        raise ValueError(f"the dimension {d} must be a multiple of m={m}")
    if not 1 <= nbits <= 16:
        raise ValueError(f"nbits must be in 1..16, got {nbits}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if n < (1 << nbits):
        raise ValueError(f"training needs at least 2**nbits = {1 << nbits} rows, got {n}")
    if n < MIN_ROWS_PER_CENTROID * (1 << nbits):
        warnings.warn(f"PQ trained on {n} rows; faiss recommends >= {MIN_ROWS_PER_CENTROID * (1 << nbits)}",
                      stacklevel=2)
    index = _pq_index(d, m, nbits, metric, n, seed, niter)
    if opq:
        index = faiss.IndexPreTransform(_opq_rotation(x, m, nbits, seed, opq_niter), index)
    index.train(x)  # the rotation is trained already: this trains the PQ on the rotated rows
    # A serialization round trip leaves an index that owns everything (no borrowed OPQ pointer).
    return PQCodec.from_bytes(faiss.serialize_index(index).tobytes())


def search_index(codec: PQCodec, codes: np.ndarray) -> faiss.Index:
    """A faiss index holding ``codes`` (row i = id i) for ADC search with raw float32 queries.

    Equivalent to ``add()``-ing the vectors the codes came from, without re-encoding.
    """
    codes = _codes(codes, codec.code_size)
    index, pq_index, _ = _split(faiss.clone_index(codec.index))
    pq_index.add_sa_codes(codes)
    index.ntotal = pq_index.ntotal
    return index
