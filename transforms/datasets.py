"""Datasets in Beam: read exactly the shards a manifest lists, write shards in input order.

``ReadDataset`` reads each listed shard (TFRecord or Parquet) whole on one
worker, in batches of ``batch_size`` records, and parses them into
``Columns`` (ids, texts, a float32 ``[n, dim]`` matrix or uint8 codes) with
their place in the input, ``(shard, batch number)``; records that cannot be
used are dead-lettered with a reason. The batches depend only on the shard
list, so every fixed-size computation on them (reduce) gives the same bytes.

``WriteDataset`` writes ``(order, rows)`` elements (lists of serialized
records, or Arrow tables for Parquet and Avro; for JSON Lines, a table of
lines in a ``json`` column) as
``prefix-SSSSS-of-NNNNN.<format>``:
each batch to a part file first, then each shard streamed together from its
parts in input order, so memory does not grow with the corpus and re-runs
write identical files. This is the only module that uses Beam internals
(the TFRecord framing).
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
from core import files, records
from core.dataset import EmbeddingDataset
from core.errors import DataError
from transforms.runner import count_worker
from transforms.sinks import DEAD, DeadLetterCounter

CORRUPT_RECORD = "corrupt_record"
SUFFIXES = {"tfrecord": "tfrecord", "parquet": "parquet", "jsonl": "json", "avro": "avro"}
ROW_GROUP_ROWS = 65_536  # Parquet rows per row group: large enough for fast scans, small enough to stream


@dataclass
class Columns:
    """A batch of records as columns: ids, texts (or None), a ``[n, dim]`` float32 matrix (uint8 codes) and the
    records' metadata (JSON objects, or None).

    ``order`` is the batch's place in the input (shard, batch number): outputs are written in that order.
    """
    ids: list[str]
    texts: list[str] | None
    vectors: np.ndarray
    order: tuple[int, int] = (0, 0)
    metadata: list[str] | None = None

    def take(self, keep: np.ndarray) -> Columns:
        """The rows at ``keep`` (indices), in the same place of the input."""
        pick = lambda values: None if values is None else [values[i] for i in keep]  # noqa: E731
        return Columns(pick(self.ids), pick(self.texts), self.vectors[keep], self.order, pick(self.metadata))


def _columns(batch) -> Columns:
    """A batch of freshly embedded rows; ordered by its smallest id (embedding batches follow the runner)."""
    ids, texts, vectors, metadata = zip(*batch)
    first = int(hashlib.sha256(min(ids).encode("utf-8")).hexdigest()[:12], 16)
    return Columns(list(ids), list(texts), np.stack(vectors).astype(np.float32), (0, first),
                   None if metadata[0] is None else list(metadata))


class BatchVectors(beam.PTransform):
    """``(id, text, vector, metadata)`` tuples (just embedded) -> Columns batches."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def expand(self, vectors):
        return (vectors
                | "Batch" >> beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
                | "ToColumns" >> beam.Map(_columns))


def to_records(columns: Columns) -> tuple[tuple[int, int], list[bytes]]:
    """``(order, serialized records)`` of a batch of float vectors, for ``WriteDataset``."""
    return columns.order, records.encode_examples(columns.ids, columns.vectors, columns.texts, columns.metadata)


def read_tfrecords(path: str):
    """Every serialized record of one TFRecord shard, in order; DataError naming the shard on damage."""
    n = 0
    with files.open_read(path) as f:
        while True:
            try:
                record = _TFRecordUtil.read_record(f)
            except ValueError as e:  # Beam's message carries a hex dump of the bytes: keep its first words
                raise DataError(f"{path}: damaged record after {n} good ones ({str(e).split(':')[0]})") from None
            if record is None:
                return
            n += 1
            yield record


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class _Layout:
    """How a dataset's records are laid out: what the parser needs to know."""
    dim: int
    codes: bool
    parquet: bool
    with_text: bool
    metadata: bool = False


class _ReadShard(beam.DoFn):
    """``(shard index, path, layout)`` -> ``((shard, batch number), raw batch)``: serialized records or a table."""

    def __init__(self, namespace: str, batch_size: int):
        self.namespace, self.batch_size = namespace, batch_size

    def setup(self):
        self.read = Metrics.counter(self.namespace, "read")
        self.counted = False

    def process(self, element):
        self.counted = self.counted or count_worker()
        shard, path, layout = element
        for number, raw in enumerate(self._raw(path, layout)):
            self.read.inc(len(raw))
            yield (shard, number), raw, layout

    def _raw(self, path: str, layout: _Layout):
        if not layout.parquet:
            yield from _batches(read_tfrecords(path), self.batch_size)
            return
        names = [records.ID, records.CODES if layout.codes else records.EMBEDDING] + \
            [records.TEXT] * layout.with_text + [records.METADATA] * layout.metadata
        with files.open_read(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.batch_size, columns=names):
                yield pa.Table.from_batches([batch])


class _Parse(beam.DoFn):
    """A raw batch -> ``Columns`` of its usable rows; unusable ones are dead-lettered with a reason."""

    def __init__(self, namespace: str, finite: bool):
        self.namespace, self.finite = namespace, finite

    def setup(self):
        self.dead = DeadLetterCounter(self.namespace)

    def process(self, element):
        order, raw, layout = element
        if layout.parquet:
            yield from self._checked(_from_table(raw, layout, order), raw)
            return
        import tensorflow as tf

        try:  # fast path: the whole batch in one C++ call
            parsed = tf.io.parse_example(raw, records.feature_spec(layout.dim, layout.with_text, layout.codes,
                                                                   layout.metadata))
            yield from self._checked(_from_parsed(parsed, layout, order), raw)
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError, ValueError):
            yield from self._one_by_one(raw, layout, order)

    def _one_by_one(self, raw: list[bytes], layout: _Layout, order: tuple[int, int]):
        """Slow path for a batch holding a bad record: find it, keep the others."""
        good = []
        for record in raw:
            try:
                row = records.decode_example(record)
            except Exception as e:  # noqa: BLE001 - any decoding failure is this record's fault
                yield self.dead.output(CORRUPT_RECORD, "input", record, detail=f"{type(e).__name__}: {e}")
                continue
            problem = _problem(row, layout)
            if problem:
                yield self.dead.output(problem[0], "input", record, id_=row[records.ID], detail=problem[1])
            else:
                good.append(record)
        if good:
            yield from self.process((order, good, layout))

    def _checked(self, columns: Columns, raw):
        """Dead-letter rows with NaN/Inf (a fit or reduction must never see them); yield the rest."""
        if not self.finite or columns.vectors.dtype == np.uint8:
            yield columns
            return
        finite = np.isfinite(columns.vectors).all(axis=1)
        for i in np.flatnonzero(~finite):
            yield self.dead.output(dl.NON_FINITE, "input", None if isinstance(raw, pa.Table) else raw[i],
                                   id_=columns.ids[i], detail="NaN or Inf in the vector")
        if finite.any():
            yield columns if finite.all() else columns.take(np.flatnonzero(finite))


def _problem(row: dict, layout: _Layout) -> tuple[str, str] | None:
    if layout.codes and row.get(records.CODES) is None:
        return dl.WRONG_DIMENSION, "expected codes"
    if not layout.codes and (row.get(records.EMBEDDING) is None or row[records.EMBEDDING].shape != (layout.dim,)):
        return dl.WRONG_DIMENSION, f"expected a {layout.dim}-d embedding"
    if layout.with_text and row[records.TEXT] is None:
        return dl.MISSING_FIELD, "no 'text'"
    if layout.metadata and row[records.METADATA] is None:
        return dl.MISSING_FIELD, "no 'metadata'"
    return None


def _from_parsed(parsed: dict, layout: _Layout, order: tuple[int, int]) -> Columns:
    strings = lambda name: [b.decode("utf-8") for b in parsed[name].numpy()]  # noqa: E731
    texts = strings(records.TEXT) if layout.with_text else None
    metadata = strings(records.METADATA) if layout.metadata else None
    if layout.codes:
        raw = parsed[records.CODES].numpy()
        vectors = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), -1)
    else:
        vectors = parsed[records.EMBEDDING].numpy()
    return Columns(strings(records.ID), texts, vectors, order, metadata)


def _from_table(table: pa.Table, layout: _Layout, order: tuple[int, int]) -> Columns:
    ids = table.column(records.ID).to_pylist()
    texts = table.column(records.TEXT).to_pylist() if layout.with_text else None
    metadata = table.column(records.METADATA).to_pylist() if layout.metadata else None
    values = table.column(records.CODES if layout.codes else records.EMBEDDING).combine_chunks()
    if layout.codes:
        width = values.type.byte_width
        vectors = np.frombuffer(values.buffers()[1], np.uint8, count=len(values) * width,
                                offset=values.offset * width).reshape(len(values), width)
    else:
        vectors = values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1).astype(np.float32)
    return Columns(ids, texts, vectors, order, metadata)


class ReadDataset(beam.PTransform):
    """Datasets -> ``{'columns': Columns, 'dead': json lines}``; counter ``<namespace>/read`` (all records).

    ``with_text`` reads the texts too; ``finite`` dead-letters vectors holding NaN/Inf.
    """

    def __init__(self, datasets: list[EmbeddingDataset], namespace: str, batch_size: int = 1024,
                 with_text: bool = False, finite: bool = True):
        super().__init__()
        self.shards = [(path, _Layout(d.dim, d.codes, d.parquet, with_text and d.has_text,
                                      with_text and d.has_metadata)) for d in datasets for path in d.shards]
        self.namespace, self.batch_size, self.finite = namespace, batch_size, finite

    def expand(self, pbegin):
        parsed = (pbegin
                  | "ShardList" >> beam.Create([(i, path, layout) for i, (path, layout) in enumerate(self.shards)])
                  | "SpreadShards" >> beam.Reshuffle()
                  | "ReadShard" >> beam.ParDo(_ReadShard(self.namespace, self.batch_size))
                  | "Parse" >> beam.ParDo(_Parse(self.namespace, self.finite)).with_outputs(DEAD, main="columns"))
        return {"columns": parsed.columns, DEAD: parsed[DEAD]}


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
            if self.out_format != "tfrecord":  # Arrow tables, written in the shard's format at the end
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

    def __init__(self, prefix: str, num_shards: int, out_format: str, compliant_lists: bool = False,
                 avro_schema: dict | None = None):
        self.prefix, self.num_shards, self.out_format = prefix, num_shards, out_format
        self.compliant_lists, self.avro_schema = compliant_lists, avro_schema

    def process(self, element):
        shard, parts = element
        ordered = [path for _, path in sorted(parts)]
        path = f"{self.prefix}-{shard:05d}-of-{self.num_shards:05d}.{SUFFIXES[self.out_format]}"
        with files.create(path + ".tmp") as f:
            if self.out_format == "tfrecord":
                for part in ordered:
                    f.write(files.read_bytes(part))
            elif self.out_format == "parquet":
                self._parquet(f, ordered)
            elif self.out_format == "jsonl":  # rows hold their line, serialized where it was made
                for part in ordered:
                    f.write("".join(line + "\n" for line in _read_arrow(part).column("json").to_pylist())
                            .encode("utf-8"))
            else:
                self._avro(f, ordered, shard)
        files.rename(path + ".tmp", path)
        files.delete(ordered)
        yield path

    def _avro(self, f, parts: list[str], shard: int) -> None:
        """An Avro container file; its sync marker is fixed by the shard, so re-runs write the same bytes."""
        import fastavro

        marker = hashlib.sha256(f"{self.prefix}:{shard}".encode()).digest()[:16]
        rows = (row for part in parts for row in _rows(part))
        fastavro.writer(f, fastavro.parse_schema(self.avro_schema), rows, codec="deflate", sync_marker=marker)

    def _parquet(self, f, parts: list[str]) -> None:
        """Row groups of ``ROW_GROUP_ROWS`` rows (the last one shorter), whatever the batch size."""
        tables = (_read_arrow(part) for part in parts)
        first = next(tables)
        with pq.ParquetWriter(f, first.schema, use_compliant_nested_type=self.compliant_lists) as writer:
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


def _rows(part: str) -> list[dict]:
    return _read_arrow(part).to_pylist()


class WriteDataset(beam.PTransform):
    """``(order, rows)`` -> ``prefix-SSSSS-of-NNNNN.{tfrecord,parquet}``, byte-identical on every run.

    Beam's file sinks spread rows over shards in whatever order bundles
    arrive; here an input batch at ``(shard, number)`` of ``input_shards``
    always lands in output shard ``(shard + number * input_shards) % num_shards``
    and shards hold their batches in input order.
    """

    def __init__(self, prefix: str, num_shards: int, input_shards: int, out_format: str, compliant_lists: bool = False,
                 avro_schema: dict | None = None):
        super().__init__()
        self.prefix, self.num_shards, self.input_shards = prefix, max(1, num_shards), max(1, input_shards)
        self.out_format, self.compliant_lists, self.avro_schema = out_format, compliant_lists, avro_schema

    def expand(self, rows):
        n, s = self.num_shards, self.input_shards
        return (rows
                | "WritePart" >> beam.ParDo(_WritePart(self.prefix, self.out_format))
                | "KeyByShard" >> beam.Map(lambda item: ((item[0][0] + item[0][1] * s) % n, item))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.prefix, n, self.out_format, self.compliant_lists,
                                                         self.avro_schema)))
