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

import io
from dataclasses import dataclass

import numpy as np

from core import files, manifests, quantization, reducers
from core.errors import ArtifactError
from core.pq import PQCodec

KIND = "codec"
PQ_INDEX = "index.faiss"
RANGES = "codec.npz"
CODE_KINDS = ("int8", "pq")
LEARNED_PQ = "learned-pq"  # the family of a PQ codec fine-tuned by ranking distillation (core/learned_pq.py)


@dataclass
class Representation:
    """One way to store vectors: ``name`` like ``pca-128/int8`` or ``pq-64``, and its byte cost."""

    name: str
    family: str  # raw, pca, autoencoder (dense), pq or learned-pq
    precision: str  # float32, float16, int8 or pq
    bytes_per_vector: int
    reducer: object | None = None  # dense: callable [n, 512] -> [n, k]
    codec: object | None = None  # quantization codec (dense) or PQCodec
    artifact: str | None = None  # the codec artifact, when one was fitted
    digest: str | None = None  # the codec artifact's content digest

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

    def source(self) -> tuple[str, str] | None:
        """(path, content digest) of the artifact that decides the stored rows; None for the raw vectors."""
        if self.artifact is not None:
            return self.artifact, self.digest
        if isinstance(self.reducer, reducers.Identity):
            return None
        return self.reducer.path, self.reducer.digest

    def summary(self, dataset_dir: str) -> dict:
        """What a reduced dataset's manifest records about how its rows are stored, and with which artifact.

        The artifact is named by identity (its digest) and by location: absolute, and relative to the
        dataset (so a moved work directory keeps working).
        """
        source = self.source()
        return {"name": self.name, "family": self.family, "precision": self.precision,
                "bytes_per_vector": self.bytes_per_vector, "dim": self.dim,
                "artifact": manifests.reference(source[0], source[1], dataset_dir) if source else None,
                "reducer": self.reducer.summary() if self.dense else None}



def name_of(family: str, dim: int, precision: str) -> str:
    """``pq-64``, ``learned-pq-64`` (codes: ``dim`` is bytes) or ``pca-128/int8``."""
    return f"{family}-{dim}" if precision == "pq" else f"{family}-{dim}/{precision}"


def dense(reducer, family: str, precision: str, codec=None, artifact: str | None = None,
          digest: str | None = None) -> Representation:
    """A dense representation of a loaded reducer at ``precision`` (int8 needs its fitted codec)."""
    codec = codec or quantization.fit_codec(precision)
    dim = reducer.output_dim
    return Representation(name_of(family, dim, precision), family, precision,
                          quantization.bytes_per_vector(dim, precision), reducer, codec, artifact, digest)


def load(path: str, input_dim: int | None = None) -> Representation:
    """The representation a codec artifact holds (int8 over its reducer, or pq), every file checked."""
    manifest = manifests.read(path, KIND, verify="full")
    if manifest.get("codec") == "pq":
        codec = load_pq(path, manifest["input_dim"], manifest["bytes_per_vector"])
        family = LEARNED_PQ if manifest.get("family") == LEARNED_PQ else "pq"
        return Representation(name_of(family, codec.code_size, "pq"), family, "pq", codec.code_size, None, codec,
                              path, manifest["digest"])
    if manifest.get("codec") != "int8":
        raise ArtifactError(f"{path}: unknown codec {manifest.get('codec')!r}; expected one of {CODE_KINDS}")
    if manifest.get("head") is None:
        reducer = reducers.Identity(manifest["input_dim"])
    else:
        reducer = reducers.Reducer(path, manifest, reducers.Head.load(path, manifest["head"]), manifest["family"])
    codec = quantization.Int8Codec(*_ranges(path))
    if codec.dim != reducer.output_dim:
        raise ArtifactError(f"{path}: int8 ranges for {codec.dim} dims, the reducer writes {reducer.output_dim}")
    return dense(reducer, manifest["family"], "int8", codec, path, manifest["digest"])


def open_representation(spec: str, precision: str, input_dim: int) -> Representation:
    """What ``reduce --reducer SPEC --dtype PRECISION`` writes: a codec artifact's codes, or a reducer's floats.

    ``spec`` is a codec artifact (int8 or pq: it decides the output), a reducer
    artifact or ``identity`` (written as float32 or float16).
    """
    if spec != reducers.IDENTITY and manifests.read(spec, verify="none").get("kind") == KIND:
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


def from_summary(summary: dict, dataset_dir: str, input_dim: int) -> Representation:
    """The representation a reduced dataset was written in, from the artifact it names (digest checked)."""
    if not isinstance(summary, dict) or summary.get("precision") not in (*quantization.PRECISIONS, "pq"):
        raise ArtifactError(f"{manifests.path(dataset_dir)} is corrupt: no valid 'representation'")
    precision = summary["precision"] if summary["precision"] in ("float32", "float16") else "float32"
    if summary.get("artifact") is None:
        return dense(reducers.Identity(input_dim), "raw", precision)
    return open_representation(manifests.resolve_reference(summary["artifact"], dataset_dir), precision, input_dim)


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


def _ranges(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(files.read_bytes(files.join(path, RANGES))), allow_pickle=False) as data:
            return np.asarray(data["lo"]), np.asarray(data["hi"])
    except (ValueError, OSError, KeyError) as e:
        raise ArtifactError(f"{path}/{RANGES} is not a readable array file with 'lo' and 'hi': {e}") from None


def save_int8(directory: str, reducer, codec: quantization.Int8Codec) -> dict:
    """Write an int8 codec's arrays (its ranges, and its reducer's weights) and the serving export.

    Returns the manifest fields that say how to load it (``head``: the reducer's steps, or None for the raw vectors).
    """
    buffer = io.BytesIO()
    np.savez(buffer, lo=codec.lo, hi=codec.hi)
    files.write_atomic(files.join(directory, RANGES), buffer.getvalue())
    head = reducer.head
    entry = head.save(directory) if head is not None else None
    export_int8_saved_model(files.join(directory, reducers.HEAD_DIR), head, reducer.input_dim, codec)
    return {"head": entry, "ranges": RANGES}


def export_int8_saved_model(path: str, head, input_dim: int, codec: quantization.Int8Codec) -> None:
    """reduce + quantize / dequantize as one SavedModel with three signatures (for serving; never loaded here)."""
    import tensorflow as tf

    module = tf.Module(name="int8_head")
    module.reducer = reducers.tf_module(head) if head is not None else None
    module.lo, module.hi, module.scale = (tf.Variable(v, trainable=False, name=n)
                                          for v, n in ((codec.lo, "lo"), (codec.hi, "hi"), (codec.scale, "scale")))
    reduce = module.reducer.reduce if module.reducer is not None else tf.identity
    spec = tf.TensorSpec([None, input_dim], tf.float32, name=reducers.INPUT_NAME)

    def quantize(embedding):
        x = tf.clip_by_value(reduce(embedding), module.lo, module.hi)
        return {"codes": tf.cast(tf.round((x - module.lo) / module.scale) - 128.0, tf.int8)}

    def dequantize(codes):
        return {reducers.OUTPUT_NAME: (tf.cast(codes, tf.float32) + 128.0) * module.scale + module.lo}

    signatures = {reducers.SIGNATURE: tf.function(lambda embedding: {reducers.OUTPUT_NAME: reduce(embedding)},
                                                  input_signature=[spec]),
                  "quantize": tf.function(quantize, input_signature=[spec]),
                  "dequantize": tf.function(dequantize, input_signature=[
                      tf.TensorSpec([None, codec.dim], tf.int8, name="codes")])}
    tf.saved_model.save(module, path, signatures=signatures)
