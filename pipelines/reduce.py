"""reduce: rewrite an embedding dataset as k-d vectors with a reducer artifact.

    shrink reduce --input out/embeddings --reducer out/pca --output out/reduced
    shrink reduce --input out/embeddings --reducer out/ae --output out/r.pq --format parquet --dtype float16
    shrink reduce --text_input 'news/*.txt' --reducer out/pca --output out/reduced   # embeds on the fly

Either reducer kind works (the artifact's manifest says which; see
pipelines.reducers). Records are reduced in fixed-size batches: each batch is
padded to ``--batch_size`` rows so the matmul kernels, and hence the output
bytes, never depend on how the runner happened to split the input.
Unusable records (undecodable, wrong length, NaN/Inf) go to the dead-letter
output with a reason; read = written + dead_letter or the job fails.
"""
from __future__ import annotations

import argparse
import logging
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.io.tfrecordio import ReadFromTFRecord
from apache_beam.metrics import Metrics

from pipelines.common import artifacts, records, reducers
from pipelines.common import deadletter as dl
from pipelines.common.beam_runner import ProgressLog, counter_values, create_pipeline, parse_job_args, run_and_wait
from pipelines.embed import processes_per_machine
from transforms.encoders import DEFAULT_ENCODER

log = logging.getLogger(__name__)
NAMESPACE = "reduce"
DEAD = "dead"
DATA_PREFIX = "data"
DEADLETTER_DIR = "deadletter"
CORRUPT_RECORD = "corrupt_record"
DTYPES = {"float32": np.float32, "float16": np.float16}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink reduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="embedding dataset directory (shards, schema, manifest)")
    source.add_argument("--text_input", action="append",
                        help="raw corpus file pattern (repeatable), embedded on the fly as in `shrink embed`")
    text = parser.add_argument_group("raw text input (with --text_input; same meaning as in `shrink embed`)")
    text.add_argument("--input_format", default="auto", choices=["auto", "text", "csv", "tsv", "jsonl", "parquet"])
    text.add_argument("--text_field")
    text.add_argument("--id_field")
    text.add_argument("--encoder", default=DEFAULT_ENCODER)
    text.add_argument("--embedding_dim", type=int, default=512)
    text.add_argument("--encoder_threads", type=int, default=0)
    text.add_argument("--max_chars", type=int, default=10_000)
    text.add_argument("--max_batch_size", type=int, default=1024, help="largest encoder batch")
    parser.add_argument("--reducer", required=True, help="reducer artifact directory (fit-pca or train output)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--format", default="tfrecord", choices=["tfrecord", "parquet"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="float16 halves the size; in TFRecords (float lists) values are rounded to float16")
    parser.add_argument("--drop_text", action="store_true", help="write ids and vectors only")
    parser.add_argument("--batch_size", type=int, default=1024, help="rows per reducer call")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards; 0 lets the runner decide")
    parser.add_argument("--overwrite", action="store_true", help="replace an output holding a different run")
    return parser


def parquet_schema(dim: int, dtype: str, with_text: bool) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field(records.ID, pa.string(), nullable=False)]
    if with_text:
        fields.append(pa.field(records.TEXT, pa.string()))
    fields.append(pa.field(records.EMBEDDING, pa.list_(value, dim), nullable=False))
    return pa.schema(fields)


class ReduceBatch(beam.DoFn):
    """A batch of serialized records -> its reduced rows (a list of tf.Examples or an Arrow table) + dead letters."""

    def __init__(self, reducer_path: str, input_dim: int, with_text: bool, keep_text: bool,
                 out_format: str, dtype: str, batch_size: int):
        self.reducer_path, self.input_dim = reducer_path, input_dim
        self.with_text, self.keep_text = with_text, keep_text and with_text
        self.out_format, self.dtype, self.batch_size = out_format, dtype, batch_size

    def setup(self):
        self.reducer = reducers.load_reducer(self.reducer_path)
        self.spec = records.feature_spec(self.input_dim, self.with_text)
        self.schema = parquet_schema(self.reducer.output_dim, self.dtype, self.keep_text)
        self.encoder = records.BatchEncoder()
        self.read = Metrics.counter(NAMESPACE, "read")
        self.written = Metrics.counter(NAMESPACE, "written")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter")
        self.progress = ProgressLog("vectors reduced")

    def _dead(self, reason: str, raw: bytes, detail: str, id_: str | None = None):
        self.dead.inc()
        Metrics.counter(NAMESPACE, f"dead_letter_{reason}").inc()
        return beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(reason, "input", raw, id_=id_, detail=detail))

    def _parse(self, batch: list[bytes]):
        """ids, texts, vectors of the good records; dead letters for the rest."""
        try:  # fast path: the whole batch in one C++ call
            parsed = tf.io.parse_example(batch, self.spec)
            ids = [b.decode("utf-8") for b in parsed[records.ID].numpy()]
            texts = ([b.decode("utf-8") for b in parsed[records.TEXT].numpy()] if self.with_text
                     else [None] * len(batch))
            vectors, raws, dead = parsed[records.EMBEDDING].numpy(), batch, []
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
            ids, texts, vectors, raws, dead = [], [], [], [], []
            for raw in batch:
                try:
                    row = records.decode_example(raw)
                except Exception as e:  # noqa: BLE001 - any decoding failure is this record's fault
                    dead.append(self._dead(CORRUPT_RECORD, raw, f"{type(e).__name__}: {e}"))
                    continue
                if row[records.EMBEDDING].shape != (self.input_dim,):
                    dead.append(self._dead(dl.WRONG_DIMENSION, raw, f"shape {row[records.EMBEDDING].shape}, "
                                           f"expected ({self.input_dim},)", row[records.ID]))
                    continue
                if self.with_text and row[records.TEXT] is None:
                    dead.append(self._dead(dl.MISSING_FIELD, raw, "no 'text' feature", row[records.ID]))
                    continue
                ids.append(row[records.ID])
                texts.append(row[records.TEXT])
                vectors.append(row[records.EMBEDDING])
                raws.append(raw)
            vectors = np.asarray(vectors, np.float32).reshape(-1, self.input_dim)
        finite = np.isfinite(vectors).all(axis=1)
        for i in np.flatnonzero(~finite):
            dead.append(self._dead(dl.NON_FINITE, raws[i], "NaN or Inf in the vector", ids[i]))
        keep = np.flatnonzero(finite)
        return [ids[i] for i in keep], [texts[i] for i in keep], vectors[keep], dead

    def _reduce(self, vectors: np.ndarray) -> np.ndarray:
        """Reducer output for ``vectors``, computed in fixed-shape batches (see module docstring)."""
        out = []
        for start in range(0, len(vectors), self.batch_size):
            chunk = vectors[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, self.input_dim), np.float32)
            padded[:len(chunk)] = chunk
            out.append(self.reducer(padded)[:len(chunk)])
        reduced = np.concatenate(out) if out else np.zeros((0, self.reducer.output_dim), np.float32)
        return reduced.astype(DTYPES[self.dtype])

    def process(self, batch):
        self.read.inc(len(batch))
        ids, texts, vectors, dead = self._parse(list(batch))
        yield from dead
        if not ids:
            return
        reduced = self._reduce(vectors)
        self.written.inc(len(ids))
        self.progress.add(len(ids))
        if self.out_format == "parquet":
            columns = {records.ID: ids}
            if self.keep_text:
                columns[records.TEXT] = texts
            flat = pa.array(reduced.reshape(-1), type=self.schema.field(records.EMBEDDING).type.value_type)
            columns[records.EMBEDDING] = pa.FixedSizeListArray.from_arrays(flat, self.reducer.output_dim)
            yield pa.Table.from_pydict(columns, schema=self.schema)
        else:
            yield self.encoder.encode(ids, reduced, texts if self.keep_text else None)

class ReduceRecords(beam.PTransform):
    """Serialized embedding records -> ``{'rows': output elements, 'dead': JSON lines}``."""

    def __init__(self, fn: ReduceBatch):
        super().__init__()
        self.fn = fn

    def expand(self, raw):
        out = (raw
               | "Batch" >> beam.BatchElements(min_batch_size=self.fn.batch_size, max_batch_size=self.fn.batch_size)
               | "Reduce" >> beam.ParDo(self.fn).with_outputs(DEAD, main="rows"))
        return {"rows": out.rows, DEAD: out[DEAD]}


def reconcile(counts: dict[str, int]) -> dict[str, int]:
    full = {k: counts.get(k, 0) for k in ("read", "written", "dead_letter")}
    full.update({k: v for k, v in counts.items() if k.startswith("dead_letter_")})
    if full["read"] != full["written"] + full["dead_letter"]:
        raise RuntimeError(f"counts do not reconcile: read {full['read']} != written + dead_letter ({full})")
    return full


def _dataset_params(opts: argparse.Namespace) -> tuple[dict, int, bool]:
    """Params, vector dim and has-text of the --input dataset, checked before the job starts."""
    source = artifacts.read_manifest(opts.input, kind="embeddings")
    schema = records.read_schema(opts.input)
    shards = artifacts.list_files(artifacts.join(opts.input, "data-*.tfrecord*"))
    if not shards:
        raise artifacts.ArtifactError(f"{opts.input} holds no data-*.tfrecord shards")
    params = {"input": opts.input, "input_fingerprint": source.get("fingerprint"), "source_shards": shards}
    return params, records.schema_dim(schema), any(f.name == records.TEXT for f in schema.feature)


class EmbedText(beam.PTransform):
    """Raw corpus -> ``{'records': serialized 512-d records, 'dead': JSON lines}``, as `shrink embed` does."""

    def __init__(self, opts: argparse.Namespace, processes_per_machine: int):
        super().__init__()
        self.opts, self.processes_per_machine = opts, processes_per_machine

    def expand(self, pbegin):
        from pipelines import embed
        from transforms.encoders import EncoderModelHandler

        opts = self.opts
        handler = EncoderModelHandler(opts.encoder, threads=opts.encoder_threads or None,
                                      processes_per_machine=self.processes_per_machine,
                                      max_batch_size=opts.max_batch_size)
        corpus = pbegin | "ReadCorpus" >> embed.ReadCorpus(opts.text_input, opts.input_format, opts.text_field,
                                                          opts.id_field, opts.max_chars)
        deduped = corpus["records"] | "Deduplicate" >> embed.Deduplicate()
        embedded = deduped.unique | "Embed" >> embed.EmbedSentences(handler, opts.embedding_dim)
        serialized = embedded["vectors"] | "ToExample" >> beam.MapTuple(
            lambda id_, text, vec: records.encode_example(id_, vec, text))
        dead = (corpus[embed.DEAD], deduped[embed.DEAD], embedded[embed.DEAD]) | "EmbedDead" >> beam.Flatten()
        return {"records": serialized, DEAD: dead}


def _text_params(opts: argparse.Namespace) -> dict:
    from transforms.encoders import validate_spec
    from transforms.corpus import check_patterns

    validate_spec(opts.encoder)
    check_patterns(opts.text_input)
    return {"text_input": opts.text_input, "input_format": opts.input_format, "text_field": opts.text_field,
            "id_field": opts.id_field, "encoder": opts.encoder, "max_chars": opts.max_chars}


def build(p: beam.Pipeline, opts: argparse.Namespace, fn: ReduceBatch, output_dim: int, keep_text: bool,
          processes_per_machine: int = 1) -> None:
    """The reduce pipeline: read (shards, or raw text embedded on the fly), reduce in batches, write."""
    dead = []
    if opts.input:
        raw = p | "Read" >> ReadFromTFRecord(artifacts.join(opts.input, "data-*.tfrecord*"), validate=False)
    else:
        embedded = p | "EmbedText" >> EmbedText(opts, processes_per_machine)
        raw, dead = embedded["records"], [embedded[DEAD]]
    reduced = raw | "ReduceRecords" >> ReduceRecords(fn)
    prefix = artifacts.join(opts.output, DATA_PREFIX)
    if opts.format == "parquet":
        _ = reduced["rows"] | "WriteParquet" >> WriteToParquetBatched(
            prefix, schema=parquet_schema(output_dim, opts.dtype, keep_text),
            file_name_suffix=".parquet", num_shards=opts.num_shards)
    else:
        _ = reduced["rows"] | "WriteTFRecord" >> records.write_tfrecord_batches(prefix, opts.num_shards)
    _ = ((reduced[DEAD], *dead)
         | "AllDeadLetters" >> beam.Flatten()
         | "WriteDeadLetters" >> beam.io.WriteToText(
             artifacts.join(opts.output, DEADLETTER_DIR, "deadletter"), file_name_suffix=".jsonl"))


def run(argv: list[str] | None = None) -> dict:
    opts, options = parse_job_args(make_parser(), argv)
    if opts.batch_size < 1:
        raise ValueError("--batch_size must be positive")
    if opts.input:
        source_params, input_dim, with_text = _dataset_params(opts)
    else:
        source_params, input_dim, with_text = _text_params(opts), opts.embedding_dim, True
    data_path = opts.input or ", ".join(opts.text_input)
    reducer = reducers.load_reducer(opts.reducer)
    reducers.check_input_dim(reducer, input_dim, data_path)
    keep_text = with_text and not opts.drop_text

    params = {**{k: v for k, v in source_params.items() if k != "source_shards"}, "reducer": opts.reducer,
              "reducer_fingerprint": reducer.manifest.get("fingerprint"),
              "reducer_created": reducer.manifest.get("created_utc"), "format": opts.format,
              "dtype": opts.dtype, "drop_text": opts.drop_text, "batch_size": opts.batch_size}
    fp = artifacts.fingerprint(params)
    artifacts.prepare_output(opts.output, fp, opts.overwrite)

    fn = ReduceBatch(opts.reducer, input_dim, with_text, keep_text, opts.format, opts.dtype, opts.batch_size)
    start = time.monotonic()
    p = create_pipeline(options)
    build(p, opts, fn, reducer.output_dim, keep_text, processes_per_machine(options))
    result = run_and_wait(p)
    elapsed = time.monotonic() - start

    counts = reconcile(counter_values(result, NAMESPACE))
    if opts.text_input:
        from pipelines import embed
        counts["embed"] = embed.reconcile(counter_values(result, embed.NAMESPACE))
    if opts.format == "tfrecord":
        records.write_schema(records.make_schema(reducer.output_dim, keep_text), opts.output)
    manifest = artifacts.write_manifest(opts.output, "reduced", {
        **params, "fingerprint": fp, "dim": reducer.output_dim, "input_dim": input_dim,
        "reducer_summary": reducer.summary(), "counts": counts, "seconds": round(elapsed, 2),
        "vectors_per_second": round(counts["written"] / max(elapsed, 1e-9), 1),
        "source_shards": source_params.get("source_shards", []),
        "shards": artifacts.list_files(artifacts.join(opts.output, f"{DATA_PREFIX}-*")),
        "deadletter": artifacts.list_files(artifacts.join(opts.output, DEADLETTER_DIR, "*")),
    })
    log.info("reduced %d vectors %d -> %d (%d dead-lettered) in %.1fs -> %s", counts["written"], input_dim,
             reducer.output_dim, counts["dead_letter"], elapsed, opts.output)
    return manifest


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.reduce")
