"""Exporting a stored corpus in Beam: decode what is stored to floats, shape rows as a vector store loads them.

``ToStoreRows`` takes ``Columns`` batches of a dataset (floats, int8 or PQ
codes), decodes them with the representation the dataset was written in
(its artifact found by digest) and emits ``(order, Arrow table)`` rows in the
target's shape, for ``WriteDataset``; it also emits the ids it exported (for
Vertex AI's ``delete/`` folder on the next export) and dead letters.
"""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from core import codecs, exports, reducers
from core import deadletter as dl
from core.logs import Progress
from transforms.datasets import Columns
from transforms.sinks import DeadLetterCounter

NAMESPACE = "export"
IDS = "ids"


def representation_of(dataset_dir: str, manifest: dict) -> codecs.Representation:
    """How a dataset's rows are stored: raw float32 for an embed output, its manifest's for a reduce output."""
    if manifest["kind"] == "embeddings":
        return codecs.dense(reducers.Identity(int(manifest["dim"])), "raw", "float32")
    return codecs.from_summary(manifest.get("representation"), dataset_dir, int(manifest["input_dim"]))


class ToStoreRows(beam.DoFn):
    """Columns -> ``(order, table)`` in the target's shape, ids exported, and dead letters."""

    def __init__(self, dataset_dir: str, manifest: dict, target: str, settings: dict, total: int | None = None):
        self.dataset_dir, self.manifest, self.target, self.settings = dataset_dir, manifest, target, settings
        self.total = total

    def setup(self):
        self.rep = representation_of(self.dataset_dir, self.manifest)
        self.exported = Metrics.counter(NAMESPACE, "exported")
        self.dead = DeadLetterCounter(NAMESPACE)
        self.progress = Progress("vectors exported", self.total)

    def process(self, columns: Columns):
        stored = columns.vectors.view(np.int8) if self.rep.precision == "int8" else columns.vectors
        if self.rep.precision == "float16":
            stored = stored.astype(np.float16)
        vectors = self.rep.decode(stored)
        keep = [i for i, id_ in enumerate(columns.ids) if not (self.target == "vertex" and "\n" in id_)]
        for i in sorted(set(range(len(columns.ids))) - set(keep)):
            yield self.dead.output(dl.INVALID_ID, "export", None, id_=columns.ids[i],
                                   detail="an id with a line break cannot be listed in Vertex AI's delete files")
        if not keep:
            return
        batch = columns.take(np.asarray(keep)) if len(keep) < len(columns.ids) else columns
        try:
            table = self._table(batch, vectors[keep])
        except ValueError as e:
            raise ValueError(f"{self.dataset_dir}: {e}") from None
        self.exported.inc(len(keep))
        self.progress.add(len(keep))
        yield columns.order, table
        yield beam.pvalue.TaggedOutput(IDS, batch.ids)

    def _table(self, batch: Columns, vectors: np.ndarray) -> pa.Table:
        if self.target == "vertex":
            return self._vertex(batch, vectors)
        half = self.target == "pgvector" and self.settings.get("halfvec")
        values = vectors.astype(np.float16 if half else np.float32)
        if self.target == "bigquery":
            column = pa.array(list(values.astype(np.float64)), pa.list_(pa.float64()))
        else:
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        data = {"id": pa.array(batch.ids, pa.string()), "embedding": column}
        if batch.texts is not None:
            data["text"] = pa.array(batch.texts, pa.string())
        if batch.metadata is not None:
            data["metadata"] = pa.array(batch.metadata, pa.string())
        return pa.table(data)

    def _vertex(self, batch: Columns, vectors: np.ndarray) -> pa.Table:
        s = self.settings
        avro = s["format"] == "avro"
        records = [exports.vertex_record(id_, row.tolist(), exports.metadata_of(meta), s["restrict_field"],
                                         s["numeric_restrict_field"], s["crowding_field"], avro)
                   for id_, row, meta in zip(batch.ids, vectors.astype(np.float32),
                                             batch.metadata or [None] * len(batch.ids))]
        if avro:
            return pa.Table.from_pylist(records)
        return pa.table({"json": [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records]})


class DeletedIds(beam.PTransform):
    """Ids the previous export held and this one does not: Vertex AI's ``delete/`` folder."""

    def __init__(self, previous_ids: list[str]):
        super().__init__()
        self.previous_ids = previous_ids

    def expand(self, current_ids):
        previous = (current_ids.pipeline
                    | "PreviousIdFiles" >> beam.Create(self.previous_ids)
                    | "ReadPreviousIds" >> beam.io.ReadAllFromText(strip_trailing_newlines=True)
                    | "KeyPrevious" >> beam.Map(lambda i: (i, "previous")))
        current = current_ids | "KeyCurrent" >> beam.Map(lambda i: (i, "current"))
        return ((previous, current)
                | "Both" >> beam.Flatten()
                | "ById" >> beam.GroupByKey()
                | "OnlyPrevious" >> beam.FlatMap(lambda kv: [kv[0]] if "current" not in kv[1] else []))
