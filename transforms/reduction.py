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

from core import deadletter as dl
from core import codecs, files, records
from core.errors import ArtifactError
from core.logs import Progress
from transforms.sinks import DEAD, DeadLetterCounter

NAMESPACE = "reduce"
CORRUPT_RECORD = "corrupt_record"
NON_FINITE_OUTPUT = "non_finite_output"
DTYPES = ("float32", "float16")


@dataclass
class Columns:
    """A batch of records as columns: ids, texts (or None) and a float32 ``[n, dim]`` matrix.

    ``order`` is the batch's place in the input (shard, batch number): outputs are written in that order.
    """
    ids: list[str]
    texts: list[str] | None
    vectors: np.ndarray
    order: tuple[int, int] = (0, 0)


def parquet_schema(representation: codecs.Representation, with_text: bool) -> pa.Schema:
    """``id``, optional ``text``, then ``embedding`` (fixed-size float list) or ``codes`` (fixed-size binary)."""
    fields = [pa.field(records.ID, pa.string(), nullable=False)]
    if with_text:
        fields.append(pa.field(records.TEXT, pa.string()))
    if representation.codes:
        fields.append(pa.field(records.CODES, pa.binary(representation.bytes_per_vector), nullable=False))
    else:
        value = pa.float16() if representation.precision == "float16" else pa.float32()
        fields.append(pa.field(records.EMBEDDING, pa.list_(value, representation.dim), nullable=False))
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
    """Columns -> ``(order, rows)`` in the output format (serialized records or an Arrow table) + dead letters.

    The representation (``spec``: a reducer, ``identity`` or a codec artifact)
    is applied in fixed-size calls padded to ``batch_size`` rows, so the
    kernels, hence the bytes, do not depend on how the runner split the input.
    Vectors that come out non-finite are dead-lettered; int8 values outside the
    calibrated ranges are clipped and counted (``clipped_values``).
    """

    def __init__(self, spec: str, precision: str, input_dim: int, keep_text: bool, out_format: str, batch_size: int,
                 total: int | None = None, share: int | None = 1, digest: str | None = None):
        self.spec, self.precision, self.input_dim = spec, precision, input_dim
        self.keep_text, self.out_format, self.batch_size = keep_text, out_format, batch_size
        self.total, self.share, self.digest = total, share, digest

    def setup(self):
        self.rep = codecs.open_representation(self.spec, self.precision, self.input_dim)
        source = self.rep.source()
        if self.digest is not None and (source[1] if source else "identity") != self.digest:
            raise ArtifactError(f"{self.spec} changed while the job ran (its digest is not the one the job "
                                "started with); run the job again")
        self.schema = parquet_schema(self.rep, self.keep_text)
        self.written = Metrics.counter(NAMESPACE, "written")
        self.clipped = Metrics.counter(NAMESPACE, "clipped_values")
        self.dead = DeadLetterCounter(NAMESPACE)
        self.progress = Progress("vectors reduced", self.total, self.share)

    def _fixed(self, fn, x: np.ndarray) -> np.ndarray:
        """``fn`` applied in calls of exactly ``batch_size`` rows (zero-padded), results concatenated."""
        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, x.shape[1]), x.dtype)
            padded[:len(chunk)] = chunk
            out.append(fn(padded)[:len(chunk)])
        return np.concatenate(out)

    def _store(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stored rows, finite mask): floats at the precision, or int8/PQ codes."""
        if not self.rep.dense:
            return self._fixed(self.rep.codec.encode, vectors), np.ones(len(vectors), bool)
        reduced = self._fixed(self.rep.query, vectors)
        finite = np.isfinite(reduced).all(axis=1)
        if self.rep.precision == "int8":
            codes, clipped = self.rep.codec.encode(reduced[finite])
            self.clipped.inc(clipped)
            return codes, finite
        return reduced[finite].astype(np.float16 if self.rep.precision == "float16" else np.float32), finite

    def process(self, columns: Columns):
        if not len(columns.ids):
            return
        stored, finite = self._store(columns.vectors)
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
        yield columns.order, self._rows(ids, texts, stored)

    def _rows(self, ids: list[str], texts: list[str] | None, stored: np.ndarray):
        if self.out_format == "tfrecord":
            vectors = [row.tobytes() for row in stored] if self.rep.codes else stored
            return records.encode_examples(ids, vectors, texts)
        columns = {records.ID: ids}
        if texts is not None:
            columns[records.TEXT] = texts
        if self.rep.codes:
            columns[records.CODES] = pa.array([row.tobytes() for row in stored], self.schema.field(records.CODES).type)
        else:
            flat = pa.array(stored.reshape(-1), type=self.schema.field(records.EMBEDDING).type.value_type)
            columns[records.EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, self.rep.dim)
        return pa.Table.from_pydict(columns, schema=self.schema)


ROW_GROUP_ROWS = 65_536  # Parquet rows per row group: large enough for fast scans, small enough to stream


def _part_path(prefix: str, order: tuple[int, int]) -> str:
    return f"{prefix}-part-{order[0]:05d}-{order[1]:015d}.tmp"


class _WritePart(beam.DoFn):
    """One batch of output rows -> its own part file (TFRecord frames or an Arrow stream); yields its path.

    Only paths travel to the shard writers, so nothing holds a shard's rows
    in memory (the local runner keeps a grouping step's input whole).
    """

    def __init__(self, prefix: str, out_format: str):
        self.prefix, self.out_format = prefix, out_format

    def process(self, element):
        order, rows = element
        path = _part_path(self.prefix, order)
        with files.create(path) as f:
            if self.out_format == "parquet":
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, rows.schema) as stream:
                    stream.write_table(rows)
                f.write(sink.getvalue().to_pybytes())  # some filesystems' handles take only bytes
            else:
                for record in rows:
                    _TFRecordUtil.write_record(f, record)
        yield order, path


class _WriteShard(beam.DoFn):
    """One output shard: its part files in input order, streamed into one file (atomically renamed)."""

    def __init__(self, prefix: str, num_shards: int, out_format: str):
        self.prefix, self.num_shards, self.out_format = prefix, num_shards, out_format

    def process(self, element):
        shard, parts = element
        ordered = [path for _, path in sorted(parts)]
        suffix = "parquet" if self.out_format == "parquet" else "tfrecord"
        path = f"{self.prefix}-{shard:05d}-of-{self.num_shards:05d}.{suffix}"
        with files.create(path + ".tmp") as f:
            if self.out_format == "parquet":
                self._parquet(f, ordered)
            else:
                for part in ordered:
                    f.write(files.read_bytes(part))
        files.rename(path + ".tmp", path)
        files.delete(ordered)
        yield path

    @staticmethod
    def _parquet(f, parts: list[str]) -> None:
        """Row groups of ``ROW_GROUP_ROWS`` rows (the last one shorter), whatever the batch size."""
        tables = (_read_arrow(part) for part in parts)
        first = next(tables)
        with pq.ParquetWriter(f, first.schema, use_compliant_nested_type=False) as writer:
            pending, rows = [first], first.num_rows
            for table in tables:
                if rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, rows = [], 0
                pending.append(table)
                rows += table.num_rows
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)


def _read_arrow(path: str) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(files.read_bytes(path))).read_all()


class WriteInOrder(beam.PTransform):
    """``(order, rows)`` -> ``prefix-SSSSS-of-NNNNN.{tfrecord,parquet}``, byte-identical on every run.

    Beam's file sinks spread rows over shards in whatever order bundles
    arrive; here an input batch at ``(shard, number)`` of ``input_shards``
    always lands in output shard ``(shard + number * input_shards) % num_shards``
    and shards hold their batches in input order. Each batch is first written
    to a part file (``prefix-part-*.tmp``), so memory does not grow with the corpus.
    """

    def __init__(self, prefix: str, num_shards: int, input_shards: int, out_format: str):
        super().__init__()
        self.prefix, self.num_shards, self.input_shards = prefix, num_shards, max(1, input_shards)
        self.out_format = out_format

    def expand(self, rows):
        n, s = self.num_shards, self.input_shards
        return (rows
                | "WritePart" >> beam.ParDo(_WritePart(self.prefix, self.out_format))
                | "KeyByShard" >> beam.Map(lambda item: ((item[0][0] + item[0][1] * s) % n, item))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.prefix, n, self.out_format)))
