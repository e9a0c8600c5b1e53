"""Feeding a fit (PCA, codec calibration, PQ training): exactly the listed rows, seeded sampling.

``FitRows`` reads datasets with ``ReadDataset`` (every listed shard,
counted; rows holding NaN/Inf dead-lettered so one bad vector can never
poison a fit), optionally repeats a query dataset, and keeps the rows whose
seeded hash of the id falls below the sample fraction (reproducible,
streaming, no shuffle). It yields float32 ``[n, dim]`` arrays.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from core.dataset import EmbeddingDataset
from core.evaluation.sampling import seeded_keys
from core.logs import Progress
from transforms.datasets import Columns, ReadDataset
from transforms.sinks import DEAD


def in_sample(columns: Columns, fraction: float, seed: int) -> np.ndarray:
    """The vectors of a batch whose seeded id key falls below ``fraction`` (all of them at 1)."""
    if fraction >= 1:
        return columns.vectors
    keep = seeded_keys(columns.ids, seed) < np.uint64(min(int(fraction * 2 ** 64), 2 ** 64 - 1))
    return columns.vectors[keep]


class _Count(beam.DoFn):
    """Counts the rows that reach the fit (``rows_analyzed``) and logs progress; drops empty arrays."""

    def __init__(self, namespace: str, expected: int | None):
        self.namespace, self.expected = namespace, expected

    def setup(self):
        self.analyzed = Metrics.counter(self.namespace, "rows_analyzed")
        self.progress = Progress("rows fitted on", self.expected)

    def process(self, vectors: np.ndarray):
        self.analyzed.inc(len(vectors))
        self.progress.add(len(vectors))
        if len(vectors):
            yield vectors


class FitRows(beam.PTransform):
    """Datasets -> ``{'vectors': float32 arrays, 'dead': json lines}``; counters ``<namespace>/read``,
    ``<namespace>/rows_analyzed`` (and ``<namespace>_queries/read``).

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
        read = pbegin | "ReadDataset" >> ReadDataset(self.datasets, self.namespace, self.batch_size)
        columns, dead = read["columns"], [read[DEAD]]
        if self.queries:
            dataset, repeat = self.queries
            queries = pbegin | "ReadQueries" >> ReadDataset([dataset], f"{self.namespace}_queries", self.batch_size)
            repeated = queries["columns"] | "RepeatQueries" >> beam.FlatMap(lambda c: [c] * repeat)
            columns = (columns, repeated) | "WithQueries" >> beam.Flatten()
            dead.append(queries[DEAD])
        vectors = (columns
                   | "Sample" >> beam.Map(in_sample, self.fraction, self.seed)
                   | "Count" >> beam.ParDo(_Count(self.namespace, self._expected())))
        return {"vectors": vectors, DEAD: dead | "FitDeadLetters" >> beam.Flatten()}
