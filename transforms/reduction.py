"""Reducing vectors in Beam: parse batches of records, apply a reducer artifact, write rows.

``ParseRecords`` turns lists of serialized embedding records into column
batches (dead-lettering records that cannot be used); ``BatchVectors`` does
the same for freshly embedded ``(id, text, vector)`` tuples; ``ReduceBatch``
applies the reducer in fixed-size calls (padded to ``batch_size`` rows, so
the matmul kernels, hence the output bytes, never depend on how the runner
split the input), checks the outputs are finite, and emits rows in the
output format: lists of serialized records, or Arrow tables for Parquet.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipelines.common import deadletter as dl
from pipelines.common import files, records, reducers
from pipelines.common.logs import Progress
from transforms.sinks import DEAD, DeadLetterCounter

NAMESPACE = "reduce"
CORRUPT_RECORD = "corrupt_record"
NON_FINITE_OUTPUT = "non_finite_output"
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class Columns:
    """A batch of records as columns: ids, texts (or None) and a float32 ``[n, dim]`` matrix.

    ``order`` is the batch's place in the input (shard, batch number): outputs are written in that order.
    """
    ids: list[str]
    texts: list[str] | None
    vectors: np.ndarray
    order: tuple[int, int] = (0, 0)


def parquet_schema(dim: int, dtype: str, with_text: bool) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field(records.ID, pa.string(), nullable=False)]
    if with_text:
        fields.append(pa.field(records.TEXT, pa.string()))
    fields.append(pa.field(records.EMBEDDING, pa.list_(value, dim), nullable=False))
    return pa.schema(fields)


class _ParseRecords(beam.DoFn):
    def __init__(self, dim: int, with_text: bool):
        self.dim, self.with_text = dim, with_text

    def setup(self):
        self.spec = records.feature_spec(self.dim, self.with_text)
        self.dead = DeadLetterCounter(NAMESPACE)

    def process(self, positioned: tuple[tuple[int, int], list[bytes]]):
        import tensorflow as tf

        order, batch = positioned
        try:  # fast path: the whole batch in one C++ call
            parsed = tf.io.parse_example(batch, self.spec)
            ids = [b.decode("utf-8") for b in parsed[records.ID].numpy()]
            texts = [b.decode("utf-8") for b in parsed[records.TEXT].numpy()] if self.with_text else None
            yield from self._finite(Columns(ids, texts, parsed[records.EMBEDDING].numpy(), order), batch)
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
            yield from self._one_by_one(batch, order)

    def _one_by_one(self, batch: list[bytes], order: tuple[int, int]):
        """Slow path for a batch holding a bad record: find it, keep the others."""
        ids, texts, vectors, raws = [], [], [], []
        for raw in batch:
            try:
                row = records.decode_example(raw)
            except Exception as e:  # noqa: BLE001 - any decoding failure is this record's fault
                yield self.dead.output(CORRUPT_RECORD, "input", raw, detail=f"{type(e).__name__}: {e}")
                continue
            vector = row.get(records.EMBEDDING)
            if vector is None or vector.shape != (self.dim,):
                yield self.dead.output(dl.WRONG_DIMENSION, "input", raw, id_=row[records.ID],
                                       detail=f"expected a {self.dim}-d embedding")
            elif self.with_text and row[records.TEXT] is None:
                yield self.dead.output(dl.MISSING_FIELD, "input", raw, id_=row[records.ID], detail="no 'text'")
            else:
                ids.append(row[records.ID])
                texts.append(row[records.TEXT])
                vectors.append(vector)
                raws.append(raw)
        columns = Columns(ids, texts if self.with_text else None, np.asarray(vectors, np.float32).reshape(-1, self.dim),
                          order)
        yield from self._finite(columns, raws)

    def _finite(self, columns: Columns, raws: list[bytes]):
        """Dead-letter rows with NaN/Inf (a fit or reduction must never see them); yield the rest."""
        finite = np.isfinite(columns.vectors).all(axis=1)
        for i in np.flatnonzero(~finite):
            yield self.dead.output(dl.NON_FINITE, "input", raws[i], id_=columns.ids[i],
                                   detail="NaN or Inf in the vector")
        if finite.all():
            yield columns
        elif finite.any():
            keep = np.flatnonzero(finite)
            yield Columns([columns.ids[i] for i in keep],
                          None if columns.texts is None else [columns.texts[i] for i in keep], columns.vectors[keep],
                          columns.order)


class ParseRecords(beam.PTransform):
    """Lists of serialized records -> ``{'columns': Columns, 'dead': json lines}``."""

    def __init__(self, dim: int, with_text: bool):
        super().__init__()
        self.dim, self.with_text = dim, with_text

    def expand(self, batches):
        out = batches | "Parse" >> beam.ParDo(_ParseRecords(self.dim, self.with_text)).with_outputs(
            DEAD, main="columns")
        return {"columns": out.columns, DEAD: out[DEAD]}


def _columns(batch) -> Columns:
    """A batch of freshly embedded rows; ordered by its smallest id (embedding batches follow the runner)."""
    ids, texts, vectors = zip(*batch)
    first = int(hashlib.sha256(min(ids).encode("utf-8")).hexdigest()[:12], 16)
    return Columns(list(ids), list(texts), np.stack(vectors).astype(np.float32), (0, first))


class BatchVectors(beam.PTransform):
    """``(id, text, vector)`` tuples (just embedded) -> Columns batches."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def expand(self, vectors):
        return (vectors
                | "Batch" >> beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
                | "ToColumns" >> beam.Map(_columns))


class ReduceBatch(beam.DoFn):
    """Columns -> reduced rows (a list of serialized records, or an Arrow table) + dead letters."""

    def __init__(self, reducer_path: str, keep_text: bool, out_format: str, dtype: str, batch_size: int,
                 total: int | None = None, share: int | None = 1):
        self.reducer_path, self.keep_text = reducer_path, keep_text
        self.out_format, self.dtype, self.batch_size = out_format, dtype, batch_size
        self.total, self.share = total, share

    def setup(self):
        self.reducer = reducers.load_reducer(self.reducer_path)
        self.schema = parquet_schema(self.reducer.output_dim, self.dtype, self.keep_text)
        self.written = Metrics.counter(NAMESPACE, "written")
        self.dead = DeadLetterCounter(NAMESPACE)
        self.progress = Progress("vectors reduced", self.total, self.share)

    def _reduce(self, vectors: np.ndarray) -> np.ndarray:
        """Reducer output for ``vectors``, computed in fixed-shape calls (see module docstring)."""
        out = []
        for start in range(0, len(vectors), self.batch_size):
            chunk = vectors[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, self.reducer.input_dim), np.float32)
            padded[:len(chunk)] = chunk
            out.append(self.reducer(padded)[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.reducer.output_dim), np.float32)

    def process(self, columns: Columns):
        reduced = self._reduce(columns.vectors).astype(DTYPES[self.dtype])
        finite = np.isfinite(reduced).all(axis=1)
        for i in np.flatnonzero(~finite):
            yield self.dead.output(NON_FINITE_OUTPUT, "reducer", None, id_=columns.ids[i],
                                   detail="the reducer produced NaN or Inf for this vector")
        keep = np.flatnonzero(finite)
        if not len(keep):
            return
        ids = [columns.ids[i] for i in keep]
        texts = [columns.texts[i] for i in keep] if self.keep_text else None
        self.written.inc(len(ids))
        self.progress.add(len(ids))
        yield columns.order, self._rows(ids, texts, reduced[keep])

    def _rows(self, ids: list[str], texts: list[str] | None, reduced: np.ndarray):
        if self.out_format == "tfrecord":
            return records.encode_examples(ids, reduced, texts)
        columns = {records.ID: ids}
        if texts is not None:
            columns[records.TEXT] = texts
        flat = pa.array(reduced.reshape(-1), type=self.schema.field(records.EMBEDDING).type.value_type)
        columns[records.EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, self.reducer.output_dim)
        return pa.Table.from_pydict(columns, schema=self.schema)


class _WriteShard(beam.DoFn):
    """One output shard: its batches sorted by input position, written whole (atomically renamed)."""

    def __init__(self, prefix: str, num_shards: int, out_format: str):
        self.prefix, self.num_shards, self.out_format = prefix, num_shards, out_format

    def process(self, element):
        shard, batches = element
        ordered = [rows for _, rows in sorted(batches, key=lambda b: b[0])]
        suffix = "parquet" if self.out_format == "parquet" else "tfrecord"
        path = f"{self.prefix}-{shard:05d}-of-{self.num_shards:05d}.{suffix}"
        with files.create(path + ".tmp") as f:
            if self.out_format == "parquet":
                pq.write_table(pa.concat_tables(ordered), f, use_compliant_nested_type=False)
            else:
                for rows in ordered:
                    for record in rows:
                        _TFRecordUtil.write_record(f, record)
        files.rename(path + ".tmp", path)
        yield path


class WriteInOrder(beam.PTransform):
    """``(order, rows)`` -> ``prefix-SSSSS-of-NNNNN.{tfrecord,parquet}``, byte-identical on every run.

    Beam's file sinks spread rows over shards in whatever order bundles
    arrive; here an input batch at ``(shard, number)`` of ``input_shards``
    always lands in output shard ``(shard + number * input_shards) % num_shards``
    and shards hold their batches in input order.
    """

    def __init__(self, prefix: str, num_shards: int, input_shards: int, out_format: str):
        super().__init__()
        self.prefix, self.num_shards, self.input_shards = prefix, num_shards, max(1, input_shards)
        self.out_format = out_format

    def expand(self, rows):
        n, s = self.num_shards, self.input_shards
        return (rows
                | "KeyByShard" >> beam.Map(lambda item: ((item[0][0] + item[0][1] * s) % n, item))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.prefix, n, self.out_format)))
