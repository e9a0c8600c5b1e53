"""The on-disk record format shared by every job: tf.train.Example TFRecords.

Each record holds ``id`` (bytes), ``text`` (bytes, optional in reduced
outputs) and ``embedding`` (a fixed-length float list). A ``schema.pbtxt``
(tensorflow_metadata Schema) beside the shards describes them, so
tf.Transform, TFXIO and tf.data can all read them without guessing.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils

ID = "id"
TEXT = "text"
EMBEDDING = "embedding"
SCHEMA_FILE = "schema.pbtxt"


def feature_spec(dim: int, with_text: bool = True) -> dict:
    """The tf.io parsing spec of one record with a ``dim``-long embedding."""
    spec = {ID: tf.io.FixedLenFeature([], tf.string),
            EMBEDDING: tf.io.FixedLenFeature([dim], tf.float32)}
    if with_text:
        spec[TEXT] = tf.io.FixedLenFeature([], tf.string)
    return spec


def make_schema(dim: int, with_text: bool = True) -> schema_pb2.Schema:
    return schema_utils.schema_from_feature_spec(feature_spec(dim, with_text))


def write_schema(schema: schema_pb2.Schema, directory: str) -> str:
    path = FileSystems.join(directory, SCHEMA_FILE)
    with FileSystems.create(path) as f:
        f.write(text_format.MessageToString(schema).encode("utf-8"))
    return path


def read_schema(directory: str) -> schema_pb2.Schema:
    path = FileSystems.join(directory, SCHEMA_FILE)
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"no {SCHEMA_FILE} in {directory}: not an embedding/reduced dataset")
    with FileSystems.open(path) as f:
        return text_format.Parse(f.read().decode("utf-8"), schema_pb2.Schema())


def schema_dim(schema: schema_pb2.Schema) -> int:
    """Length of the ``embedding`` feature declared by ``schema``."""
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    if EMBEDDING not in spec:
        raise ValueError("schema has no 'embedding' feature")
    return int(spec[EMBEDDING].shape[0])


def encode_example(id_: str | bytes, vector: np.ndarray, text: str | bytes | None = None) -> bytes:
    """Serialize one record. ``vector`` is written as float32."""
    feats = {
        ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[_b(id_)])),
        EMBEDDING: tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(vector, dtype=np.float32).tolist())),
    }
    if text is not None:
        feats[TEXT] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[_b(text)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def decode_example(serialized: bytes) -> dict:
    """Parse one record into ``{'id': str, 'text': str|None, 'embedding': float32 array}``."""
    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    text = f[TEXT].bytes_list.value[0].decode("utf-8") if TEXT in f else None
    return {ID: f[ID].bytes_list.value[0].decode("utf-8"), TEXT: text,
            EMBEDDING: np.asarray(f[EMBEDDING].float_list.value, dtype=np.float32)}


def read_examples(file_pattern: str) -> list[dict]:
    """Read every record of a (small) dataset into memory; for tests and evaluation."""
    files = [m.path for m in FileSystems.match([file_pattern])[0].metadata_list]
    out = []
    for path in sorted(files):
        for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
            out.append(decode_example(rec))
    return out


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
