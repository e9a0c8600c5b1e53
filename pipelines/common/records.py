"""The on-disk record format shared by every job: tf.train.Example TFRecords.

Each record holds ``id`` (bytes), ``text`` (bytes, optional in reduced
outputs) and ``embedding`` (a fixed-length float list). A ``schema.pbtxt``
(tensorflow_metadata Schema) beside the shards describes them, so
tf.Transform, TFXIO and tf.data can all read them without guessing.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from apache_beam.io import filebasedsink
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

# TensorFlow is imported inside the functions that need it: Beam workers that
# only encode and write records (the embed job with the numpy encoder) then
# start without paying for a TensorFlow import.

ID = "id"
TEXT = "text"
EMBEDDING = "embedding"
SCHEMA_FILE = "schema.pbtxt"


def feature_spec(dim: int, with_text: bool = True) -> dict:
    """The tf.io parsing spec of one record with a ``dim``-long embedding."""
    import tensorflow as tf

    spec = {ID: tf.io.FixedLenFeature([], tf.string),
            EMBEDDING: tf.io.FixedLenFeature([dim], tf.float32)}
    if with_text:
        spec[TEXT] = tf.io.FixedLenFeature([], tf.string)
    return spec


def make_schema(dim: int, with_text: bool = True) -> schema_pb2.Schema:
    """The schema of ``feature_spec(dim, with_text)``, built from protos alone.

    Same message as tf.Transform's ``schema_from_feature_spec`` (a test checks
    it), without importing TensorFlow: the embed driver then never pays ~5 s
    for a TensorFlow import just to write this file.
    """
    schema = schema_pb2.Schema()
    names = [EMBEDDING, ID] + ([TEXT] if with_text else [])
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
    """Length of the fixed-length float ``embedding`` feature declared by ``schema``."""
    for feature in schema.feature:
        if feature.name == EMBEDDING:
            if feature.type != schema_pb2.FLOAT or len(feature.shape.dim) != 1:
                raise ValueError(f"schema's 'embedding' is not a fixed-length float vector: {feature}")
            return int(feature.shape.dim[0].size)
    raise ValueError("schema has no 'embedding' feature")


def encode_example(id_: str | bytes, vector: np.ndarray, text: str | bytes | None = None) -> bytes:
    """Serialize one record. ``vector`` is written as float32."""
    import tensorflow as tf

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
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    text = f[TEXT].bytes_list.value[0].decode("utf-8") if TEXT in f else None
    return {ID: f[ID].bytes_list.value[0].decode("utf-8"), TEXT: text,
            EMBEDDING: np.asarray(f[EMBEDDING].float_list.value, dtype=np.float32)}


def read_examples(file_pattern: str) -> list[dict]:
    """Read every record of a (small) dataset into memory; for tests and evaluation."""
    import tensorflow as tf

    files = [m.path for m in FileSystems.match([file_pattern])[0].metadata_list]
    out = []
    for path in sorted(files):
        for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
            out.append(decode_example(rec))
    return out


class BatchEncoder:
    """Serializes whole batches of records in one C++ call (tfx_bsl), same bytes as ``encode_example``."""

    def __init__(self):
        self._encoder = example_coder.RecordBatchToExamplesEncoder()

    def encode(self, ids: list[str], vectors: np.ndarray, texts: list[str] | None = None) -> list[bytes]:
        def singletons(values: list[str]) -> pa.Array:
            return pa.array([[v.encode("utf-8")] for v in values], pa.large_list(pa.large_binary()))

        vectors = np.asarray(vectors, np.float32)
        k = vectors.shape[1]
        columns = {ID: singletons(ids)}
        if texts is not None:
            columns[TEXT] = singletons(texts)
        offsets = np.arange(0, len(ids) * k + 1, k, dtype=np.int64)
        columns[EMBEDDING] = pa.LargeListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))
        return self._encoder.encode(pa.RecordBatch.from_pydict(columns))


class _TFRecordBatchSink(filebasedsink.FileBasedSink):
    """TFRecord files written a list of records at a time.

    ``WriteToTFRecord`` takes one element per record; handing it whole
    batches instead measured about a third faster for the reduce job
    (benchmarks/bench_pca_reduce.py). Same framing: Beam's TFRecord writer.
    """

    def write_record(self, file_handle, value):
        for record in value:
            _TFRecordUtil.write_record(file_handle, record)


def write_tfrecord_batches(prefix: str, num_shards: int):
    """A Beam write of elements that are lists of serialized records, as ``prefix-SSSSS-of-NNNNN.tfrecord``."""
    import apache_beam as beam

    return beam.io.Write(_TFRecordBatchSink(prefix, coder=None, file_name_suffix=".tfrecord",
                                            num_shards=num_shards))


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
