"""Fitting codecs in Beam: int8 calibration with tf.Transform, and PQ training on a seeded sample.

int8: the reducer (a SavedModel head, or the identity) runs in a Beam DoFn;
its outputs go to ``tft_beam.AnalyzeDataset`` as Arrow record batches, where
``tft.min`` and ``tft.max`` (reduce_instance_dims=False) give each
dimension's range in one streaming pass. The ranges are named tensors of the
written transform_fn, read back as numpy arrays.

PQ: rows are sampled by a seeded hash of their id (uniform, reproducible),
gathered on one worker (the sample, never the corpus, is in memory) and
trained with faiss; the trained codec is written in faiss's own format.
"""
from __future__ import annotations

import logging
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.metrics import Metrics
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.tfxio import tensor_adapter

from core import codecs, files
from core.pq import train_pq
from core.evaluation.sampling import seeded_keys
from core.errors import ArtifactError, InputError
from core.logs import Progress

REDUCED = "reduced"
LO = "int8_lo"
HI = "int8_hi"


def tensor_adapter_config(dim: int) -> tensor_adapter.TensorAdapterConfig:
    """How tf.Transform reads our record batches: one dense float32 feature ``reduced`` of ``dim`` values."""
    shape = schema_pb2.FixedShape(dim=[schema_pb2.FixedShape.Dim(size=dim)])
    representation = schema_pb2.TensorRepresentation(
        dense_tensor=schema_pb2.TensorRepresentation.DenseTensor(column_name=REDUCED, shape=shape))
    arrow_schema = pa.schema([pa.field(REDUCED, pa.large_list(pa.float32()))])
    return tensor_adapter.TensorAdapterConfig(arrow_schema, {REDUCED: representation})


def preprocessing_fn(inputs: dict) -> dict:
    """Per-dimension minimum and maximum of the reduced vectors, as named analyzer results."""
    x = inputs[REDUCED]
    lo = tf.identity(tft.min(x, reduce_instance_dims=False), name=LO)
    hi = tf.identity(tft.max(x, reduce_instance_dims=False), name=HI)
    return {REDUCED: tf.clip_by_value(x, lo, hi)}


class ReduceToArrow(beam.DoFn):
    """Column batches of raw vectors -> Arrow record batches of reduced vectors (counter ``rows_analyzed``)."""

    def __init__(self, reducer: str, input_dim: int, namespace: str, expected: int | None, digest: str):
        self.reducer_spec, self.input_dim = reducer, input_dim
        self.namespace, self.expected, self.digest = namespace, expected, digest

    def setup(self):
        self.reducer = codecs.load_reducer(self.reducer_spec, self.input_dim)
        if self.reducer.digest != self.digest:
            raise ArtifactError(f"{self.reducer_spec} changed while the job ran; run the job again")
        self.rows = Metrics.counter(self.namespace, "rows_analyzed")
        self.progress = Progress("rows calibrated", self.expected)

    def process(self, columns):
        reduced = np.ascontiguousarray(self.reducer(columns.vectors), dtype=np.float32)
        n, k = reduced.shape
        offsets = np.arange(0, n * k + 1, k, dtype=np.int64)
        self.rows.inc(n)
        self.progress.add(n)
        yield pa.RecordBatch.from_arrays([pa.LargeListArray.from_arrays(offsets, pa.array(reduced.reshape(-1)))],
                                         [REDUCED])


def read_ranges(transform_fn_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float32 [k] from a written transform_fn (TF1 graph, as fit-pca writes them too)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.load(session, ["transform"], transform_fn_dir)
        names = {}
        for wanted in (LO, HI):
            found = [op.name for op in graph.get_operations() if op.name.split("/")[-1] == wanted]
            if len(found) != 1:
                raise ArtifactError(f"{transform_fn_dir}: expected one '{wanted}' tensor, found {found}")
            names[wanted] = found[0] + ":0"
        values = session.run(names)
    return np.asarray(values[LO], np.float32), np.asarray(values[HI], np.float32)


def sample_rows(columns, fraction: float, seed: int):
    """The rows of a column batch whose seeded id key falls below ``fraction`` (all rows at 1)."""
    if fraction >= 1:
        return columns.vectors
    keep = seeded_keys(columns.ids, seed) < np.uint64(min(int(fraction * 2 ** 64), 2 ** 64 - 1))
    return columns.vectors[keep]


class TrainPQ(beam.DoFn):
    """The gathered sample -> a trained OPQ+PQ codec, written to ``path`` (faiss format).

    Counters ``sample_rows`` and ``train_ms`` (namespace ``namespace``) report what it did.
    """

    def __init__(self, path: str, dim: int, m: int, opq: bool, seed: int, namespace: str):
        self.path, self.dim, self.m, self.opq, self.seed = path, dim, m, opq, seed
        self.namespace = namespace

    def process(self, blocks: list[np.ndarray]):
        sample = np.concatenate([b for b in blocks if len(b)] or [np.zeros((0, self.dim), np.float32)])
        # faiss's OPQ training corrupts memory when it has fewer rows than dimensions (faiss 1.15.1,
        # reproduced with OPQMatrix alone): such small samples get plain PQ.
        opq = self.opq and len(sample) >= self.dim
        if self.opq and not opq:
            logging.getLogger(__name__).warning("only %d rows for a %d-d OPQ rotation: training plain PQ",
                                                len(sample), self.dim)
        start = time.monotonic()
        try:
            codec = train_pq(sample, self.m, opq=opq, seed=self.seed)
        except ValueError as e:
            raise InputError(f"cannot train a {self.m}-byte PQ codec on {len(sample)} rows: {e}") from None
        files.write_atomic(self.path, codec.to_bytes())
        Metrics.counter(self.namespace, "sample_rows").inc(len(sample))
        Metrics.counter(self.namespace, "train_ms").inc(int(1000 * (time.monotonic() - start)))
        yield self.path
