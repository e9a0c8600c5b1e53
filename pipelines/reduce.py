"""reduce: rewrite an embedding dataset in a smaller representation.

    shrink reduce --input out/embeddings --reducer out/pca --output out/reduced
    shrink reduce --input out/embeddings --reducer out/ae --output out/r.pq --format parquet --dtype float16
    shrink reduce --input out/embeddings --reducer out/pq64 --output out/codes        # a codec artifact
    shrink reduce --text_input 'news/*.txt' --reducer out/pca --output out/reduced   # embeds on the fly

``--reducer`` takes a reducer artifact (fit-pca or train output) or
``identity`` (the raw vectors), written as ``--dtype`` float32 or float16;
or a codec artifact (fit-codec output), written as its int8 or PQ codes
(TFRecord ``codes`` bytes / Parquet ``fixed_size_binary``). Reads exactly
the shards the input's manifest lists and checks their record count.
Unusable records (undecodable, wrong length, NaN/Inf in or out) go to the
dead-letter output with a reason; read = written + dead_letter or the job
fails. Same inputs, artifact and batch size give byte-identical outputs.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core import codecs, containment, dataset, files, manifests, records, reducers
from core import config as cfg
from core.config import option
from core.dataset import EmbeddingDataset, shard_entries
from core.encoders import validate_spec
from core.errors import InputError
from core.outputs import OutputDir
from pipelines.cli import RUNTIME_FIELDS, CorpusFields, job_parser, parse_config
from transforms import corpus
from transforms.datasets import BatchVectors, ReadDataset, WriteDataset
from transforms.embedding import EmbedCorpus, reconcile_embedding
from transforms.reduction import DTYPES, NAMESPACE, ReduceBatch
from transforms.runner import (
    counter_values,
    create_pipeline,
    progress_share,
    run_and_wait,
    worker_processes,
)
from transforms.sinks import DEAD, DEADLETTER_DIR, WriteDeadLetters, reconcile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReduceConfig(CorpusFields):
    """With ``--text_input`` the corpus fields (``--text_field``...) mean what they mean in ``shrink embed``."""

    reducer: str = option(help="reducer artifact (fit-pca/train output), codec artifact (fit-codec output) or "
                               "'identity'")
    output: str = option(help="output directory (new, empty, or an earlier reduce output)")
    input: str | None = option(None, "embedding dataset directory (output of `shrink embed`)")
    text_input: tuple[str, ...] = option((), "raw corpus file pattern (repeatable), embedded on the fly as in "
                                             "`shrink embed`, instead of --input")
    format: str = option("tfrecord", "file format of the shards", choices=["tfrecord", "parquet"])
    dtype: str = option("float32", "precision of a reducer's output (a codec artifact decides its own); float16 "
                                   "halves the size (in TFRecords, float lists hold the float16-rounded values)",
                        choices=list(DTYPES))
    drop_text: bool = option(False, "write ids and vectors only")
    batch_size: int = option(1024, "rows per reducer call")
    num_shards: int = option(0, "output shards; 0: as many as the input has (one for --text_input)")
    overwrite: bool = option(False, "replace an earlier reduce output of different parameters in --output")

    def params(self) -> dict:
        return cfg.params(self, exclude=("output", "num_shards", "overwrite", "input", "reducer", *RUNTIME_FIELDS))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink reduce", __doc__, ReduceConfig)


def read_columns(p: beam.Pipeline, config: ReduceConfig, source: EmbeddingDataset | None,
                 options: PipelineOptions) -> tuple[beam.PCollection, list]:
    """Column batches of 512-d vectors: the dataset's shards, or the raw corpus embedded on the fly."""
    if source is not None:
        read = p | "ReadDataset" >> ReadDataset([source], NAMESPACE, config.batch_size, with_text=True)
        return read["columns"], [read[DEAD]]
    embedded = p | "EmbedCorpus" >> EmbedCorpus(config.read_corpus(config.text_input), config.encoder_handler(options),
                                                 config.embedding_dim, share=progress_share(options))
    return embedded["vectors"] | "BatchVectors" >> BatchVectors(config.batch_size), [embedded[DEAD]]


def build(p: beam.Pipeline, config: ReduceConfig, source: EmbeddingDataset | None, input_dim: int,
          keep_text: bool, options: PipelineOptions, artifact_digest: str | None = None,
          keep_metadata: bool = False) -> None:
    """read (shards or raw text) -> reduce in fixed-size calls -> TFRecord or Parquet, and dead letters."""
    columns, dead = read_columns(p, config, source, options)
    fn = ReduceBatch(config.reducer, config.dtype, input_dim, keep_text, config.format, config.batch_size,
                     source.records if source else None, progress_share(options), artifact_digest, keep_metadata)
    reduced = columns | "Reduce" >> beam.ParDo(fn).with_outputs(DEAD, main="rows")
    input_shards = len(source.shards) if source is not None else 1
    _ = reduced.rows | "WriteDataset" >> WriteDataset(files.join(config.output, dataset.DATA_PREFIX),
                                                      config.num_shards or input_shards, input_shards, config.format)
    _ = (reduced[DEAD], *dead) | "DeadLetters" >> WriteDeadLetters(config.output)


def check_counts(result, config: ReduceConfig, source: EmbeddingDataset | None) -> dict:
    """Reconciled counts: every vector read (or embedded from text) was written or dead-lettered."""
    reduced = counter_values(result, NAMESPACE)
    clipped = {"clipped_values": reduced.get("clipped_values", 0)}
    if source is not None:
        counts = {**reconcile(reduced, "read", ("written", "dead_letter")), **clipped}
        source.check_count(counts["read"], "reduce")
    else:
        embedded = reconcile_embedding(counter_values(result, corpus.NAMESPACE), config.allow_partial_files,
                                       files.join(config.output, DEADLETTER_DIR))
        counts = {**reconcile({**reduced, "read": embedded["embedded"]}, "read", ("written", "dead_letter")),
                  **clipped, "embed": embedded}
    if counts["read"] and not counts["written"]:
        reasons = {k[len("dead_letter_"):]: v for k, v in counts.items() if k.startswith("dead_letter_") and v}
        raise InputError(f"none of the {counts['read']} vectors read could be written ({reasons}); their reasons "
                         f"are in {files.join(config.output, DEADLETTER_DIR)}")
    return counts


def _reads(config: ReduceConfig) -> list[str]:
    """What the job reads: the dataset or corpus files, and the artifact."""
    return [config.input, *config.text_input] + ([config.reducer] if config.reducer != reducers.IDENTITY else [])


def open_inputs(config: ReduceConfig) -> tuple[EmbeddingDataset | None, codecs.Representation, dict]:
    """The source dataset (or None for raw text), the representation, and the run's parameters; all checked."""
    if config.batch_size < 1:
        raise InputError("--batch_size must be positive")
    if bool(config.input) == bool(config.text_input):
        raise InputError("give --input (an embedding dataset) or --text_input (corpus files), one of the two")
    reads = _reads(config)
    OutputDir(config.output, "reduced", "", reads).check()
    source = EmbeddingDataset.open(config.input) if config.input else None
    if source is None:
        validate_spec(config.encoder)
        containment.check_files_outside(config.output, corpus.check_patterns(config.text_input))
    representation = codecs.open_representation(config.reducer, config.dtype,
                                                source.dim if source else config.embedding_dim)
    source_artifact = representation.source()
    params = {**config.params(), "artifact_digest": source_artifact[1] if source_artifact else reducers.IDENTITY}
    if source is not None:
        params.update(input_digest=source.digest)
    return source, representation, params


def run(config: ReduceConfig, options: PipelineOptions) -> dict:
    """Reduce the input into ``config.output``; returns the manifest."""
    source, representation, params = open_inputs(config)
    keep_text = (source.has_text if source else True) and not config.drop_text
    keep_metadata = keep_text and (source.has_metadata if source else bool(config.metadata_field))
    input_dim = source.dim if source else config.embedding_dim
    reads = _reads(config)
    out = OutputDir(config.output, "reduced", manifests.fingerprint(params), reads)
    with out.claim(config.overwrite):
        start = time.monotonic()
        p = create_pipeline(options)
        build(p, config, source, input_dim, keep_text, options, params["artifact_digest"], keep_metadata)
        result = run_and_wait(p)
        counts = check_counts(result, config, source)
        workers = worker_processes(result)
        elapsed = time.monotonic() - start
        if config.format == "tfrecord":
            records.write_schema(records.make_schema(representation.dim, keep_text, representation.codes,
                                                     keep_metadata),
                                 config.output)
        shards = out.written_shards()
        manifest = out.commit({
            **params, "worker_processes": workers, "dim": representation.dim, "input_dim": input_dim,
            "has_text": keep_text, "has_metadata": keep_metadata,
            "format": config.format, "codes": representation.codes,
            "representation": representation.summary(config.output),
            "bytes_per_vector": representation.bytes_per_vector,
            "encoder": source.encoder if source else config.encoder, "counts": counts, "records": counts["written"],
            "shards": shard_entries(config.output, shards), "seconds": round(elapsed, 2),
            "vectors_per_second": round(counts["written"] / max(elapsed, 1e-9), 1)})
    log.info("wrote %d vectors as %s (%d bytes each; %d dead-lettered) in %.1fs -> %s", counts["written"],
             representation.name, representation.bytes_per_vector, counts["dead_letter"], elapsed, config.output)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_config(make_parser(), ReduceConfig, argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.reduce")
