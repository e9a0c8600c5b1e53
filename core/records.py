"""The on-disk record format shared by every job: tf.train.Example TFRecords.

Each record holds ``id`` (bytes), ``text`` (bytes, optional in reduced
outputs) and either ``embedding`` (a fixed-length float list) or ``codes``
(bytes: int8 or product-quantization codes). A ``schema.pbtxt``
(tensorflow_metadata Schema) beside the shards describes them, so
tf.Transform, TFXIO and tf.data read them without guessing.

Records are serialized here, in plain Python, exactly as protobuf's
deterministic serialization does (features in name order): the bytes never
depend on the process, so re-runs write identical files.
"""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from core import files

ID = "id"
TEXT = "text"
EMBEDDING = "embedding"
CODES = "codes"
METADATA = "metadata"  # optional: the user's chosen fields of the source record, as a JSON object
SCHEMA_FILE = "schema.pbtxt"


def feature_spec(dim: int, with_text: bool = True, codes: bool = False, metadata: bool = False) -> dict:
    """The tf.io parsing spec of one record: a ``dim``-long float ``embedding``, or ``codes`` bytes.

    The one spec every reader uses (Beam jobs, datasets read in memory, the trainer's tf.data input).
    """
    import tensorflow as tf  # imported here: embed workers never need TensorFlow

    spec = {ID: tf.io.FixedLenFeature([], tf.string)}
    spec[CODES if codes else EMBEDDING] = (tf.io.FixedLenFeature([], tf.string) if codes
                                           else tf.io.FixedLenFeature([dim], tf.float32))
    if with_text:
        spec[TEXT] = tf.io.FixedLenFeature([], tf.string)
    if metadata:
        spec[METADATA] = tf.io.FixedLenFeature([], tf.string)
    return spec


def without_autotune(dataset):
    """``dataset`` (a ``tf.data.Dataset``) with tf.data's autotuner off.

    The autotuner runs a thread per iterator whose sleep between rounds grows to
    a minute, and destroying the iterator (an epoch's end, a shard read) waits
    for it: measured here, single iterators held the caller 40-90 s. Work marked
    ``AUTOTUNE`` still runs in parallel, at tf.data's fixed defaults.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def make_schema(dim: int, with_text: bool = True, codes: bool = False, metadata: bool = False) -> schema_pb2.Schema:
    """The schema of the records, built from protos alone (same message as tf.Transform derives; tested).

    With ``codes`` the vector is a ``codes`` bytes feature instead of a ``dim``-long float embedding.
    """
    schema = schema_pb2.Schema()
    names = sorted([CODES if codes else EMBEDDING, ID] + [TEXT] * with_text + [METADATA] * metadata)
    for name in names:  # sorted by name, as tf.Transform writes them
        feature = schema.feature.add(name=name)
        feature.presence.min_fraction = 1.0
        if name == EMBEDDING:
            feature.type = schema_pb2.FLOAT
            feature.shape.dim.add(size=dim)
        else:
            feature.type = schema_pb2.BYTES
            feature.shape.SetInParent()
    return schema


def write_schema(schema: schema_pb2.Schema, directory: str) -> str:
    path = files.join(directory, SCHEMA_FILE)
    files.write_text(path, text_format.MessageToString(schema))
    return path


def read_schema(directory: str) -> schema_pb2.Schema:
    path = files.join(directory, SCHEMA_FILE)
    if not files.exists(path):
        raise FileNotFoundError(f"no {SCHEMA_FILE} in {directory}: not an embedding/reduced dataset")
    return text_format.Parse(files.read_text(path), schema_pb2.Schema())


def schema_dim(schema: schema_pb2.Schema) -> int:
    """Length of the fixed-length float ``embedding`` feature declared by ``schema``."""
    for feature in schema.feature:
        if feature.name == EMBEDDING:
            if feature.type != schema_pb2.FLOAT or len(feature.shape.dim) != 1:
                raise ValueError(f"schema's 'embedding' is not a fixed-length float vector: {feature}")
            return int(feature.shape.dim[0].size)
    raise ValueError("schema has no 'embedding' feature")


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``tag`` already holds the field number and wire type)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _entry(name: str, feature: bytes) -> bytes:
    """One ``Features.feature`` map entry: key (field 1) and Feature (field 2)."""
    return _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, feature))


def _bytes_feature(value: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, value))  # Feature.bytes_list { value }


def _float_feature(vector: np.ndarray) -> bytes:
    packed = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return _field(0x12, _field(0x0A, packed) if packed else b"")  # Feature.float_list { packed value }


def encode_example(id_: str | bytes, vector: np.ndarray | bytes, text: str | bytes | None = None) -> bytes:
    """One serialized record: a float ``vector`` becomes ``embedding``, ``bytes`` become ``codes``."""
    feats = {ID: _bytes_feature(_b(id_))}
    if isinstance(vector, (bytes, bytearray)):
        feats[CODES] = _bytes_feature(bytes(vector))
    else:
        feats[EMBEDDING] = _float_feature(vector)
    if text is not None:
        feats[TEXT] = _bytes_feature(_b(text))
    return _field(0x0A, b"".join(_entry(name, feats[name]) for name in sorted(feats)))


def encode_examples(ids: list[str], vectors: np.ndarray | list[bytes], texts: list[str] | None = None,
                    metadata: list[str] | None = None) -> list[bytes]:
    """A batch of records, as ``encode_example`` writes each (``vectors``: float rows or per-record bytes).

    Float rows share one entry header (same length for every row), so a row
    costs one slice of the batch's bytes instead of a nested serialization.
    """
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2 and vectors.shape[1] > 0:
        rows = np.ascontiguousarray(vectors, dtype="<f4")
        width = rows.shape[1] * 4
        header = _entry(EMBEDDING, _float_feature(rows[0]))[:-width]
        flat = rows.tobytes()
        vector_entries = [header + flat[i:i + width] for i in range(0, len(flat), width)]
    else:
        vector_entries = [_entry(CODES, _bytes_feature(bytes(v))) if isinstance(v, (bytes, bytearray))
                          else _entry(EMBEDDING, _float_feature(v)) for v in vectors]
    entries = [[v, _entry(ID, _bytes_feature(_b(i)))] for v, i in zip(vector_entries, ids)]
    for column, values in ((METADATA, metadata), (TEXT, texts)):  # name order: codes/embedding < id < metadata < text
        if values is not None:
            for entry, value in zip(entries, values):
                entry.append(_entry(column, _bytes_feature(_b(value))))
    return [_field(0x0A, b"".join(entry)) for entry in entries]


def decode_example(serialized: bytes) -> dict:
    """Parse one record into ``{'id': str, 'text': str|None, 'embedding': float32 array | 'codes': bytes}``."""
    import tensorflow as tf

    f = tf.train.Example.FromString(serialized).features.feature
    out = {ID: f[ID].bytes_list.value[0].decode("utf-8"),
           TEXT: f[TEXT].bytes_list.value[0].decode("utf-8") if TEXT in f else None,
           METADATA: f[METADATA].bytes_list.value[0].decode("utf-8") if METADATA in f else None}
    if CODES in f:
        out[CODES] = f[CODES].bytes_list.value[0]
    else:
        out[EMBEDDING] = np.asarray(f[EMBEDDING].float_list.value, dtype=np.float32)
    return out



def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
