"""Representations: how a corpus vector is stored, how it is read back, and how a query meets it.

Two families:
- **dense**: a reducer (``identity`` for the raw vectors, a PCA or an
  autoencoder artifact) followed by a precision: float32, float16, or int8
  over per-dimension ranges calibrated on the fitting rows;
- **pq**: OPQ + product quantization of the raw vectors (faiss), ``m`` bytes.

float32 and float16 need nothing fitted. int8 and PQ are fitted by
``shrink fit-codec`` into a codec artifact (manifest kind ``codec``):
- int8: the ranges in the manifest, and ``head/``, a SavedModel whose
  signatures let any TF consumer code vectors exactly as the jobs do:
  ``serving_default`` (embedding -> reduced float32), ``quantize``
  (embedding -> int8 codes) and ``dequantize`` (codes -> float32);
- pq: ``index.faiss``, the trained empty faiss index in faiss's own format.
No pickle anywhere. Queries are searched asymmetrically: a query is reduced
(dense) or kept raw (pq) but never quantized; stored vectors are decoded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from core import files, manifests, quantization, reducers
from core.errors import ArtifactError
from core.pq import PQCodec

KIND = "codec"
PQ_INDEX = "index.faiss"
CODE_KINDS = ("int8", "pq")


@dataclass
class Representation:
    """One way to store vectors: ``name`` like ``pca-128/int8`` or ``pq-64``, and its byte cost."""

    name: str
    family: str  # raw, pca, autoencoder (dense) or pq
    precision: str  # float32, float16, int8 or pq
    bytes_per_vector: int
    reducer: object | None = None  # dense: callable [n, 512] -> [n, k]
    codec: object | None = None  # quantization codec (dense) or PQCodec
    artifact: str | None = None  # the codec artifact, when one was fitted

    @property
    def dense(self) -> bool:
        return self.precision != "pq"

    def query(self, x: np.ndarray) -> np.ndarray:
        """The float32 vectors queries are searched with: reduced, never quantized."""
        return np.asarray(self.reducer(x), np.float32) if self.dense else np.asarray(x, np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Stored form of raw vectors: float32/float16 rows, int8 codes or uint8 PQ codes."""
        if self.dense:
            return self.codec.encode(self.query(x))[0]
        return self.codec.encode(x)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Float32 vectors from stored rows (codes may come as raw uint8 bytes, as datasets hold them)."""
        if self.precision == "int8" and stored.dtype == np.uint8:
            stored = stored.view(np.int8)
        return self.codec.decode(stored).astype(np.float32, copy=False)

    @property
    def codes(self) -> bool:
        """Whether rows are stored as code bytes (int8, pq) rather than float vectors."""
        return self.precision in CODE_KINDS

    @property
    def dim(self) -> int:
        """Dimension of decoded vectors."""
        return self.reducer.output_dim if self.dense else self.codec.d

    def summary(self) -> dict:
        """What a reduced dataset's manifest records about how its rows are stored."""
        return {"name": self.name, "family": self.family, "precision": self.precision,
                "bytes_per_vector": self.bytes_per_vector, "codec": self.artifact,
                "reducer": self.reducer.summary() if self.dense else None}

    def scores(self, queries: np.ndarray, decoded: np.ndarray) -> np.ndarray:
        """Similarity of query rows to decoded rows, higher is closer, as ``shrink search`` ranks them.

        Dense: cosine. PQ: negative squared L2 (faiss's ADC metric, the better
        one measured), up to a per-query constant: ``q.d - |d|^2 / 2``.
        """
        if self.dense:
            q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
            d = decoded / np.maximum(np.linalg.norm(decoded, axis=1, keepdims=True), 1e-12)
            return q @ d.T
        return queries @ decoded.T - 0.5 * np.einsum("ij,ij->i", decoded, decoded)[None, :]


def name_of(family: str, dim: int, precision: str) -> str:
    return f"pq-{dim}" if precision == "pq" else f"{family}-{dim}/{precision}"


def dense(reducer, family: str, precision: str, codec=None, artifact: str | None = None) -> Representation:
    """A dense representation of a loaded reducer at ``precision`` (int8 needs its fitted codec)."""
    codec = codec or quantization.fit_codec(precision)
    dim = reducer.output_dim
    return Representation(name_of(family, dim, precision), family, precision,
                          quantization.bytes_per_vector(dim, precision), reducer, codec, artifact)


def load(path: str, input_dim: int | None = None) -> Representation:
    """The representation a codec artifact holds (int8 over its reducer, or pq)."""
    manifest = manifests.read(path, KIND)
    if manifest.get("codec") == "pq":
        codec = load_pq(path, manifest["input_dim"], manifest["bytes_per_vector"])
        return Representation(name_of("pq", codec.code_size, "pq"), "pq", "pq", codec.code_size, None, codec, path)
    if manifest.get("codec") != "int8":
        raise ArtifactError(f"{path}: unknown codec {manifest.get('codec')!r}; expected one of {CODE_KINDS}")
    reducer = load_reducer(manifest["reducer"], manifest["input_dim"])
    codec = quantization.codec_from_dict({"precision": "int8", "lo": manifest["lo"], "hi": manifest["hi"]})
    return dense(reducer, manifest["family"], "int8", codec, path)


def open_representation(spec: str, precision: str, input_dim: int) -> Representation:
    """What ``reduce --reducer SPEC --dtype PRECISION`` writes: a codec artifact's codes, or a reducer's floats.

    ``spec`` is a codec artifact (int8 or pq: it decides the output), a reducer
    artifact or ``identity`` (written as float32 or float16).
    """
    if spec != reducers.IDENTITY and manifests.read(spec).get("kind") == KIND:
        representation = load(spec, input_dim)
    else:
        if precision not in ("float32", "float16"):
            raise ArtifactError(f"{precision} needs a codec artifact (shrink fit-codec), not a reducer: {spec}")
        reducer = load_reducer(spec, input_dim)
        representation = dense(reducer, family_of(reducer), precision)
    input_of = representation.reducer.input_dim if representation.dense else representation.codec.d
    if input_of != input_dim:
        raise ArtifactError(f"{spec} takes {input_of}-d vectors, the data holds {input_dim}-d vectors")
    return representation


def load_pq(path: str, input_dim: int, code_size: int | None = None) -> PQCodec:
    """The PQ codec in a codec artifact directory (checked: dimension and code size)."""
    where = files.join(path, PQ_INDEX)
    if not files.exists(where):
        raise ArtifactError(f"{path} has no {PQ_INDEX}")
    return PQCodec.from_bytes(files.read_bytes(where), d=input_dim, code_size=code_size)


def load_reducer(spec: str, input_dim: int | None = None):
    """A reducer artifact, or the identity (``identity``: the raw vectors) of ``input_dim``."""
    if spec == reducers.IDENTITY:
        if input_dim is None:
            raise ValueError("the identity reducer needs the input dimension")
        return reducers.Identity(input_dim)
    return reducers.load_reducer(spec)


def family_of(reducer) -> str:
    return "raw" if isinstance(reducer, reducers.Identity) else reducer.kind


def save_int8_head(directory: str, reducer, codec: quantization.Int8Codec) -> str:
    """Export reduce + quantize / dequantize as one SavedModel (``head/``) with three signatures."""
    module = Int8Head(reducer, codec)
    path = files.join(directory, reducers.HEAD_DIR)
    tf.saved_model.save(module, path, signatures={reducers.SIGNATURE: module.serve, "quantize": module.quantize,
                                                  "dequantize": module.dequantize})
    return path


class Int8Head(tf.Module):
    """Computes exactly ``quantization.Int8Codec`` on top of the reducer's own head (none for identity)."""

    def __init__(self, reducer, codec: quantization.Int8Codec):
        super().__init__(name="int8_head")
        self.head = None if isinstance(reducer, reducers.Identity) else reducer.loaded
        self.lo = tf.Variable(codec.lo, trainable=False, name="lo")
        self.hi = tf.Variable(codec.hi, trainable=False, name="hi")
        self.scale = tf.Variable(codec.scale, trainable=False, name="scale")
        spec = tf.TensorSpec([None, reducer.input_dim], tf.float32, name=reducers.INPUT_NAME)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.quantize = tf.function(self._quantize, input_signature=[spec])
        self.dequantize = tf.function(self._dequantize,
                                      input_signature=[tf.TensorSpec([None, codec.dim], tf.int8, name="codes")])

    def _reduce(self, embedding):
        if self.head is None:
            return embedding
        return self.head.signatures[reducers.SIGNATURE](**{reducers.INPUT_NAME: embedding})[reducers.OUTPUT_NAME]

    def _serve(self, embedding):
        return {reducers.OUTPUT_NAME: self._reduce(embedding)}

    def _quantize(self, embedding):
        x = tf.clip_by_value(self._reduce(embedding), self.lo, self.hi)
        return {"codes": tf.cast(tf.round((x - self.lo) / self.scale) - 128.0, tf.int8)}

    def _dequantize(self, codes):
        return {reducers.OUTPUT_NAME: (tf.cast(codes, tf.float32) + 128.0) * self.scale + self.lo}
