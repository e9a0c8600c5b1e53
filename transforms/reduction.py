"""Reducing vectors in Beam: apply a representation to column batches and emit output rows.

``ReduceBatch`` takes ``Columns`` batches (from ``ReadDataset``, or from
``BatchVectors`` for freshly embedded vectors) and
applies the reducer in fixed-size calls (padded to ``batch_size`` rows, so
the matmul kernels, hence the output bytes, never depend on how the runner
split the input), checks the outputs are finite, and emits rows in the
output format: lists of serialized records, or Arrow tables for Parquet.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from core import codecs, records
from core.errors import ArtifactError
from core.logs import Progress
from transforms.datasets import Columns
from transforms.sinks import DeadLetterCounter

NAMESPACE = "reduce"
NON_FINITE_OUTPUT = "non_finite_output"
DTYPES = ("float32", "float16")


def parquet_schema(representation: codecs.Representation, with_text: bool, with_metadata: bool = False) -> pa.Schema:
    """``id``, optional ``text`` and ``metadata`` (a JSON object), then ``embedding`` (fixed-size float list)
    or ``codes`` (fixed-size binary)."""
    fields = [pa.field(records.ID, pa.string(), nullable=False)]
    if with_text:
        fields.append(pa.field(records.TEXT, pa.string()))
    if with_metadata:
        fields.append(pa.field(records.METADATA, pa.string()))
    if representation.codes:
        fields.append(pa.field(records.CODES, pa.binary(representation.bytes_per_vector), nullable=False))
    else:
        value = pa.float16() if representation.precision == "float16" else pa.float32()
        fields.append(pa.field(records.EMBEDDING, pa.list_(value, representation.dim), nullable=False))
    return pa.schema(fields)






class ReduceBatch(beam.DoFn):
    """Columns -> ``(order, rows)`` in the output format (serialized records or an Arrow table) + dead letters.

    The representation (``spec``: a reducer, ``identity`` or a codec artifact)
    is applied in fixed-size calls padded to ``batch_size`` rows, so the
    kernels, hence the bytes, do not depend on how the runner split the input.
    Vectors that come out non-finite are dead-lettered; int8 values outside the
    calibrated ranges are clipped and counted (``clipped_values``).
    """

    def __init__(self, spec: str, precision: str, input_dim: int, keep_text: bool, out_format: str, batch_size: int,
                 total: int | None = None, share: int | None = 1, digest: str | None = None,
                 keep_metadata: bool = False):
        self.spec, self.precision, self.input_dim = spec, precision, input_dim
        self.keep_text, self.out_format, self.batch_size = keep_text, out_format, batch_size
        self.keep_metadata = keep_metadata
        self.total, self.share, self.digest = total, share, digest

    def setup(self):
        self.rep = codecs.open_representation(self.spec, self.precision, self.input_dim)
        source = self.rep.source()
        if self.digest is not None and (source[1] if source else "identity") != self.digest:
            raise ArtifactError(f"{self.spec} changed while the job ran (its digest is not the one the job "
                                "started with); run the job again")
        self.schema = parquet_schema(self.rep, self.keep_text, self.keep_metadata)
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
        metadata = [columns.metadata[i] for i in keep] if self.keep_metadata else None
        self.written.inc(len(ids))
        self.progress.add(len(ids))
        yield columns.order, self._rows(ids, texts, stored, metadata)

    def _rows(self, ids: list[str], texts: list[str] | None, stored: np.ndarray, metadata: list[str] | None):
        if self.out_format == "tfrecord":
            vectors = [row.tobytes() for row in stored] if self.rep.codes else stored
            return records.encode_examples(ids, vectors, texts, metadata)
        columns = {records.ID: ids}
        if texts is not None:
            columns[records.TEXT] = texts
        if metadata is not None:
            columns[records.METADATA] = metadata
        if self.rep.codes:
            columns[records.CODES] = pa.array([row.tobytes() for row in stored], self.schema.field(records.CODES).type)
        else:
            flat = pa.array(stored.reshape(-1), type=self.schema.field(records.EMBEDDING).type.value_type)
            columns[records.EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, self.rep.dim)
        return pa.Table.from_pydict(columns, schema=self.schema)
