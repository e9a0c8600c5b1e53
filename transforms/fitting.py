"""Feeding a fit (PCA, codec calibration): seeded sampling, Arrow batches, non-finite rows kept out.

``FitRows`` turns datasets into Arrow record batches of ``id`` and
``embedding`` for tf.Transform's analyzers: it reads exactly the listed
shards (counted), optionally repeats a query dataset, samples by a seeded
hash of each record (reproducible, streaming, no shuffle), and dead-letters
rows with NaN/Inf so that one bad vector can never poison a fit.
"""
from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.metrics import Metrics
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from core import deadletter as dl
from core import records
from core.dataset import EmbeddingDataset
from core.logs import Progress
from transforms.shards import ReadShards
from transforms.sinks import DEAD, DeadLetterCounter


def keep_in_sample(record: bytes, threshold: int, key: bytes) -> bool:
    """A seeded hash of the record's bytes below ``threshold`` (``fraction * 2**64``): same seed, same rows."""
    digest = hashlib.blake2b(record, digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < threshold


class _Sample(beam.DoFn):
    def __init__(self, fraction: float, seed: int):
        self.threshold = int(fraction * 2 ** 64)
        self.key = seed.to_bytes(8, "little", signed=True)

    def process(self, batch: list[bytes]):
        yield [r for r in batch if keep_in_sample(r, self.threshold, self.key)]


class _DropNonFinite(beam.DoFn):
    """Arrow batches without rows holding NaN/Inf (those are dead-lettered); counts analyzed rows."""

    def __init__(self, namespace: str, dim: int, expected: int | None):
        self.namespace, self.dim, self.expected = namespace, dim, expected

    def setup(self):
        self.analyzed = Metrics.counter(self.namespace, "rows_analyzed")
        self.dead = DeadLetterCounter(self.namespace)
        self.progress = Progress("rows fitted on", self.expected)

    def process(self, batch: pa.RecordBatch):
        column = batch.column(batch.schema.get_field_index(records.EMBEDDING))
        values = np.asarray(column.flatten()).reshape(-1, self.dim)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            ids = batch.column(batch.schema.get_field_index(records.ID)).to_pylist()
            for i in np.flatnonzero(~finite):
                yield self.dead.output(dl.NON_FINITE, "input", None, id_=ids[i][0].decode("utf-8", "replace"),
                                       detail="NaN or Inf in the vector: left out of the fit")
            batch = batch.filter(pa.array(finite))
        self.analyzed.inc(batch.num_rows)
        self.progress.add(batch.num_rows)
        if batch.num_rows:
            yield batch


def tfxio_source(datasets: list[EmbeddingDataset]) -> tfxio.TFExampleRecord:
    """The TFXIO decoder of the datasets' ``id`` + ``embedding`` records (texts are skipped).

    Only its decoder and tensor adapter are used: the shards are read by ``ReadShards``.
    """
    dim = datasets[0].dim
    schema = schema_utils.schema_from_feature_spec({
        records.ID: tf.io.FixedLenFeature([], tf.string),
        records.EMBEDDING: tf.io.FixedLenFeature([dim], tf.float32)})
    return tfxio.TFExampleRecord(file_pattern=[s for d in datasets for s in d.shards], schema=schema,
                                 telemetry_descriptors=["use-shrink", "fit"])


class FitRows(beam.PTransform):
    """Datasets -> ``{'batches': Arrow record batches, 'dead': json lines}``; counters ``<namespace>/read``...

    ``queries`` (a dataset and a repeat count) are read once and repeated, so
    that they weigh ``repeat`` times in the fit (query-aware PCA).
    """

    def __init__(self, datasets: list[EmbeddingDataset], namespace: str, fraction: float = 1.0, seed: int = 0,
                 queries: tuple[EmbeddingDataset, int] | None = None, batch_size: int = 1000):
        super().__init__()
        self.datasets, self.namespace, self.fraction, self.seed = datasets, namespace, fraction, seed
        self.queries, self.batch_size = queries, batch_size

    def _expected(self) -> int:
        """About how many rows reach the fit (for the progress ETA of a local run)."""
        queries = self.queries[0].records * self.queries[1] if self.queries else 0
        return int((sum(d.records for d in self.datasets) + queries) * self.fraction)

    def expand(self, pbegin):
        dim = self.datasets[0].dim
        raw = (pbegin
               | "ReadShards" >> ReadShards(self.datasets, self.namespace, self.batch_size)
               | "Records" >> beam.Values())
        if self.queries:
            dataset, repeat = self.queries
            queries = (pbegin
                       | "ReadQueries" >> ReadShards([dataset], f"{self.namespace}_queries", self.batch_size)
                       | "RepeatQueries" >> beam.FlatMap(lambda positioned: [positioned[1]] * repeat))
            raw = (raw, queries) | "WithQueries" >> beam.Flatten()
        if self.fraction < 1:
            raw = raw | "Sample" >> beam.ParDo(_Sample(self.fraction, self.seed))
        batches = (raw
                   | "OneRecordEach" >> beam.FlatMap(lambda batch: batch)
                   | "ToRecordBatches" >> tfxio_source(self.datasets).RawRecordToRecordBatch(self.batch_size)
                   | "DropNonFinite" >> beam.ParDo(_DropNonFinite(self.namespace, dim, self._expected())).with_outputs(
                       DEAD, main="batches"))
        return {"batches": batches.batches, DEAD: batches[DEAD]}
