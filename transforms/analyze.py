"""tf.Transform over column batches of vectors: the one adapter fit-pca and fit-codec share.

``Analyze`` takes a PCollection of float32 ``[n, dim]`` arrays, feeds them to
``tft_beam.AnalyzeDataset`` as Arrow record batches of one dense feature, and
writes the resulting transform_fn where the job says. The values come back
as numpy arrays through ``core.transform_fn.read``.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa


def tensor_adapter_config(feature: str, dim: int):
    """How tf.Transform reads the record batches: one dense float32 feature of ``dim`` values."""
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.tfxio import tensor_adapter

    shape = schema_pb2.FixedShape(dim=[schema_pb2.FixedShape.Dim(size=dim)])
    representation = schema_pb2.TensorRepresentation(
        dense_tensor=schema_pb2.TensorRepresentation.DenseTensor(column_name=feature, shape=shape))
    arrow_schema = pa.schema([pa.field(feature, pa.large_list(pa.float32()))])
    return tensor_adapter.TensorAdapterConfig(arrow_schema, {feature: representation})


def to_record_batch(vectors: np.ndarray, feature: str) -> pa.RecordBatch:
    """float32 ``[n, dim]`` rows as an Arrow record batch of one list column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, k = vectors.shape
    offsets = np.arange(0, n * k + 1, k, dtype=np.int64)
    return pa.RecordBatch.from_arrays([pa.LargeListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))],
                                      [feature])


class Analyze(beam.PTransform):
    """Arrays ``[n, dim]`` -> tf.Transform analyzers of ``preprocessing_fn`` -> a transform_fn in ``output_dir``.

    TF1 graph mode, so the written transform_fn is one graph whose named
    analyzer results ``core.transform_fn.read`` can find.
    """

    def __init__(self, preprocessing_fn, feature: str, dim: int, temp_dir: str, output_dir: str):
        super().__init__()
        self.preprocessing_fn, self.feature, self.dim = preprocessing_fn, feature, dim
        self.temp_dir, self.output_dir = temp_dir, output_dir

    def expand(self, arrays):
        import tensorflow_transform.beam as tft_beam  # imported when a pipeline is built, not to show --help

        batches = arrays | "ToRecordBatches" >> beam.Map(to_record_batch, self.feature)
        with tft_beam.Context(temp_dir=self.temp_dir, force_tf_compat_v1=True):
            transform_fn = ((batches, tensor_adapter_config(self.feature, self.dim))
                            | "AnalyzeDataset" >> tft_beam.AnalyzeDataset(self.preprocessing_fn))
            return transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self.output_dir)
