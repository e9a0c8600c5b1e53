"""Embedding job: a corpus of sentences -> 512-d vectors in sharded TFRecords.

    python -m pipelines.embed --input 'corpus/*.txt' --output out/embeddings
    shrink embed --input news.csv --text_field headline --id_field story_id --output out/emb

Every input record ends in exactly one place: the TFRecord shards, the
dead-letter output (with a reason), or the duplicate count. The manifest's
counts reconcile (read = embedded + duplicate + already_embedded + dead_letter)
or the job fails.

Incremental mode (``--previous DIR``, repeatable): records whose id an earlier
output already holds are counted as ``already_embedded`` and not embedded
again, so a growing corpus is embedded one increment at a time.
"""
from __future__ import annotations

import argparse
import logging
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.tfrecordio import ReadFromTFRecord
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.common import artifacts, records
from pipelines.common import deadletter as dl
from pipelines.common.beam_runner import (LOCAL_RUNNERS, ProgressLog, counter_values, create_pipeline, parse_job_args,
                                  run_and_wait)
from transforms.encoders import DEFAULT_ENCODER, EncoderModelHandler, available_cores, validate_spec
from transforms.corpus import DEAD, NAMESPACE, ReadCorpus, check_patterns

log = logging.getLogger(__name__)
DATA_PREFIX = "data"
DEADLETTER_DIR = "deadletter"
PREVIOUS = "<previous run>"  # the source of records embedded by an earlier run


def make_parser() -> argparse.ArgumentParser:
    """The embedding job's own flags; standard Beam pipeline options pass through."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", action="append", required=True,
                        help="file pattern to read (repeatable); local or any Beam filesystem")
    parser.add_argument("--output", required=True, help="output directory for shards, schema and manifest")
    parser.add_argument("--input_format", default="auto",
                        choices=["auto", "text", "csv", "tsv", "jsonl", "parquet"],
                        help="auto: by file extension (.txt .csv .tsv .jsonl .parquet), else text")
    parser.add_argument("--text_field", help="column/field holding the sentence (CSV, TSV, JSONL, Parquet)")
    parser.add_argument("--id_field", help="optional column/field with a record id; "
                                           "default: a hash of the normalized sentence")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER,
                        help="'use-m3' (offline USE multilingual v3) or 'tfhub:<handle or SavedModel path>'")
    parser.add_argument("--embedding_dim", type=int, default=512,
                        help="dimension the encoder must return; other vectors are dead-lettered")
    parser.add_argument("--encoder_threads", type=int, default=0,
                        help="BLAS threads per worker process; 0 = its share of the machine's cores")
    parser.add_argument("--max_chars", type=int, default=10_000,
                        help="longer sentences (after normalization) are dead-lettered, not truncated")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards; 0 lets the runner decide")
    parser.add_argument("--max_batch_size", type=int, default=1024, help="largest encoder batch")
    parser.add_argument("--previous", action="append", default=[],
                        help="earlier embedding output whose ids are not embedded again (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output directory that holds a different run")
    return parser


class Deduplicate(beam.PTransform):
    """``(id, (sentence, source))`` -> one ``(id, sentence)`` per id still to embed.

    Records repeating an id with the same sentence are counted as duplicates.
    Records reusing an id for a different sentence (only possible with
    ``--id_field``) are dead-lettered as conflicts; the smallest sentence is
    kept so that re-runs agree. With ``previous`` (ids and sentences embedded
    by earlier runs, incremental mode), ids already embedded are counted as
    ``already_embedded`` and not embedded again.
    """

    def __init__(self, previous: beam.PCollection | None = None):
        super().__init__()
        self.previous = previous

    class _Resolve(beam.DoFn):
        def setup(self):
            self.duplicate = Metrics.counter(NAMESPACE, "duplicate")
            self.already = Metrics.counter(NAMESPACE, "already_embedded")
            self.dead = Metrics.counter(NAMESPACE, "dead_letter")
            self.conflict = Metrics.counter(NAMESPACE, f"dead_letter_{dl.CONFLICTING_ID}")

        def process(self, element):
            id_, values = element
            new = [v for v in values if v[1] != PREVIOUS]
            earlier = [sentence for sentence, source in values if source == PREVIOUS]
            kept = earlier[0] if earlier else min(sentence for sentence, _ in new)
            for sentence, source in new:
                if sentence != kept:
                    self.dead.inc()
                    self.conflict.inc()
                    detail = "id already embedded by a previous run for another sentence" if earlier else \
                        "id already used by another sentence"
                    yield beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(
                        dl.CONFLICTING_ID, source, sentence, id_=id_, detail=detail))
            same = sum(1 for sentence, _ in new if sentence == kept)
            if earlier:
                self.already.inc(same)
            elif same:
                self.duplicate.inc(same - 1)
                yield id_, kept

    def expand(self, keyed):
        if self.previous is not None:
            keyed = (keyed, self.previous) | "WithPrevious" >> beam.Flatten()
        return (keyed
                | "GroupById" >> beam.GroupByKey()
                | "Resolve" >> beam.ParDo(self._Resolve()).with_outputs(DEAD, main="unique"))


def _previous_record(serialized: bytes) -> tuple[str, tuple[str, str]]:
    record = records.decode_example(serialized)
    return record[records.ID], (record[records.TEXT], PREVIOUS)


class ReadPrevious(beam.PTransform):
    """Ids and sentences of earlier embedding outputs, keyed like new records."""

    def __init__(self, shard_patterns: list[str]):
        super().__init__()
        self.shard_patterns = shard_patterns

    def expand(self, pbegin):
        reads = [pbegin | f"ReadPrevious{i}" >> ReadFromTFRecord(pattern, validate=False)
                 for i, pattern in enumerate(self.shard_patterns)]
        return reads | "FlattenPrevious" >> beam.Flatten() | "ParsePrevious" >> beam.Map(_previous_record)


class _CheckVector(beam.DoFn):
    """Keeps finite vectors of the expected dimension; dead-letters the rest."""

    def __init__(self, dim: int):
        self.dim = dim

    def setup(self):
        self.embedded = Metrics.counter(NAMESPACE, "embedded")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter")
        self.reasons = {r: Metrics.counter(NAMESPACE, f"dead_letter_{r}")
                        for r in (dl.WRONG_DIMENSION, dl.NON_FINITE, dl.ENCODER_ERROR)}
        self.progress = ProgressLog("sentences embedded")

    def _dead(self, reason: str, id_: str, text: str, detail: str):
        self.dead.inc()
        self.reasons[reason].inc()
        return beam.pvalue.TaggedOutput(DEAD, dl.dead_letter(reason, "encoder", text, id_=id_, detail=detail))

    def process(self, element):
        id_, result = element
        text, vector = result.example, result.inference
        if isinstance(vector, str):
            yield self._dead(dl.ENCODER_ERROR, id_, text, vector)
        elif vector.shape != (self.dim,):
            yield self._dead(dl.WRONG_DIMENSION, id_, text, f"shape {vector.shape}, expected ({self.dim},)")
        elif not np.all(np.isfinite(vector)):
            yield self._dead(dl.NON_FINITE, id_, text, "NaN or Inf in the vector")
        else:
            self.embedded.inc()
            self.progress.add()
            yield id_, text, vector


class _EncodeBatch(beam.DoFn):
    """A batch of ``(id, sentence, vector)`` -> their serialized records, in one C++ call."""

    def setup(self):
        self.encoder = records.BatchEncoder()

    def process(self, batch):
        ids, texts, vectors = zip(*batch)
        yield self.encoder.encode(list(ids), np.stack(vectors), list(texts))


class EmbedSentences(beam.PTransform):
    """``(id, sentence)`` -> ``{'vectors': (id, sentence, float32 vector), 'dead': json line}``."""

    def __init__(self, handler: EncoderModelHandler, dim: int):
        super().__init__()
        self.handler, self.dim = handler, dim

    def expand(self, unique):
        results = unique | "Encode" >> RunInference(KeyedModelHandler(self.handler))
        checked = results | "CheckVectors" >> beam.ParDo(_CheckVector(self.dim)).with_outputs(DEAD, main="vectors")
        return {"vectors": checked.vectors, DEAD: checked[DEAD]}


def processes_per_machine(options: PipelineOptions) -> int:
    """How many SDK worker processes share a machine's cores, for thread sizing."""
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return available_cores()  # Dataflow/Flink run about one Python process per core
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        return max(1, direct.direct_num_workers or 1)
    return 1


def build(p: beam.Pipeline, opts: argparse.Namespace, handler: EncoderModelHandler,
          previous_shards: list[str] = ()) -> None:
    corpus = p | "ReadCorpus" >> ReadCorpus(opts.input, opts.input_format, opts.text_field,
                                            opts.id_field, opts.max_chars)
    previous = p | "Previous" >> ReadPrevious(previous_shards) if previous_shards else None
    deduped = corpus["records"] | "Deduplicate" >> Deduplicate(previous)
    embedded = deduped.unique | "Embed" >> EmbedSentences(handler, opts.embedding_dim)
    _ = (embedded["vectors"]
         | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=1024)
         | "ToExamples" >> beam.ParDo(_EncodeBatch())
         | "WriteShards" >> records.write_tfrecord_batches(artifacts.join(opts.output, DATA_PREFIX),
                                                           opts.num_shards))
    _ = ((corpus[DEAD], deduped[DEAD], embedded[DEAD])
         | "AllDeadLetters" >> beam.Flatten()
         | "WriteDeadLetters" >> beam.io.WriteToText(
             artifacts.join(opts.output, DEADLETTER_DIR, "deadletter"), file_name_suffix=".jsonl"))


def reconcile(counts: dict[str, int]) -> dict[str, int]:
    """All counts, zero-filled; raises if any input record is unaccounted for."""
    full = {k: counts.get(k, 0) for k in ("read", "embedded", "duplicate", "already_embedded", "dead_letter")}
    full.update({k: v for k, v in counts.items() if k.startswith("dead_letter_")})
    accounted = full["embedded"] + full["duplicate"] + full["already_embedded"] + full["dead_letter"]
    if full["read"] != accounted:
        raise RuntimeError(f"counts do not reconcile: read {full['read']} != embedded + duplicate + "
                           f"already_embedded + dead_letter = {accounted} ({full})")
    return full


def check_previous(directory: str, opts: argparse.Namespace) -> tuple[str, dict]:
    """An earlier output usable for incremental mode: same encoder and dimension."""
    manifest = artifacts.read_manifest(directory, "embeddings")
    if (manifest.get("encoder"), manifest.get("dim")) != (opts.encoder, opts.embedding_dim):
        raise artifacts.ArtifactError(
            f"--previous {directory} was embedded with {manifest.get('encoder')} ({manifest.get('dim')}-d), "
            f"this run uses {opts.encoder} ({opts.embedding_dim}-d): vectors would not be comparable")
    return directory, manifest


def run(argv: list[str] | None = None) -> dict:
    opts, options = parse_job_args(make_parser(), argv)
    validate_spec(opts.encoder)
    check_patterns(opts.input)
    previous = [check_previous(d, opts) for d in opts.previous]
    params = {"input": opts.input, "input_format": opts.input_format, "text_field": opts.text_field,
              "id_field": opts.id_field, "encoder": opts.encoder, "dim": opts.embedding_dim,
              "max_chars": opts.max_chars, "previous": [[d, m.get("fingerprint")] for d, m in previous]}
    fp = artifacts.fingerprint(params)
    artifacts.prepare_output(opts.output, fp, opts.overwrite)

    handler = EncoderModelHandler(opts.encoder, threads=opts.encoder_threads or None,
                                  processes_per_machine=processes_per_machine(options),
                                  max_batch_size=opts.max_batch_size)
    start = time.monotonic()
    p = create_pipeline(options)
    build(p, opts, handler, [shard for _, m in previous for shard in m["shards"]])
    result = run_and_wait(p)
    elapsed = time.monotonic() - start

    counts = reconcile(counter_values(result, NAMESPACE))
    records.write_schema(records.make_schema(opts.embedding_dim), opts.output)
    manifest = artifacts.write_manifest(opts.output, "embeddings", {
        **params, "fingerprint": fp, "counts": counts, "seconds": round(elapsed, 2),
        "sentences_per_second": round(counts["embedded"] / max(elapsed, 1e-9), 1),
        "shards": artifacts.list_files(artifacts.join(opts.output, f"{DATA_PREFIX}-*")),
        "deadletter": artifacts.list_files(artifacts.join(opts.output, DEADLETTER_DIR, "*")),
    })
    log.info("embedded %d sentences (%d duplicates, %d already embedded, %d dead-lettered) in %.1fs -> %s",
             counts["embedded"], counts["duplicate"], counts["already_embedded"], counts["dead_letter"],
             elapsed, opts.output)
    return manifest


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.embed")
