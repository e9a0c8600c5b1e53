"""embed: a corpus of sentences -> 512-d vectors in sharded TFRecords.

    shrink embed --input 'corpus/*.txt' --output out/embeddings
    shrink embed --input news.csv --text_field headline --id_field story_id --output out/emb

Every input record ends in exactly one place: the TFRecord shards, the
dead-letter output (with a reason), or the duplicate / already-embedded
counts; the manifest's counts reconcile (read = embedded + duplicate +
already_embedded + dead_letter) or the job fails. A compressed input that
ends early or cannot be read fails the job too, unless
``--allow_partial_files`` accepts what was read from it.

Incremental mode (``--previous DIR``, repeatable): records whose id an earlier
output already holds are counted as ``already_embedded`` and not embedded
again, so a growing corpus is embedded one increment at a time.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core import config as cfg
from core import containment, dataset, files, manifests, records
from core.config import option
from core.dataset import EmbeddingDataset, open_all, shard_entries
from core.encoders import validate_spec
from core.errors import ArtifactError, InputError
from core.outputs import OutputDir
from pipelines.cli import RUNTIME_FIELDS, CorpusFields, job_parser, parse_config
from transforms.corpus import NAMESPACE, check_patterns
from transforms.datasets import BatchVectors, WriteDataset, to_records
from transforms.dedupe import ReadPrevious
from transforms.embedding import EmbedCorpus, EncoderModelHandler, reconcile_embedding
from transforms.runner import (
    counter_values,
    create_pipeline,
    progress_share,
    run_and_wait,
    with_local_workers,
    worker_processes,
)
from transforms.sinks import DEAD, DEADLETTER_DIR, WriteDeadLetters

log = logging.getLogger(__name__)


INPUT_BYTES_PER_SHARD = 8 * 2**20  # ~80,000 news sentences: shards of ~200 MB of vectors
MAX_SHARDS = 1000


@dataclass(frozen=True)
class EmbedConfig(CorpusFields):
    input: tuple[str, ...] = option(help="file pattern to read (repeatable); local or any Beam filesystem; "
                                         ".gz/.bz2 decompressed")
    output: str = option(help="output directory (new, empty, or an earlier embed output)")
    previous: tuple[str, ...] = option((), "earlier embedding output whose ids are not embedded again (repeatable)")
    num_shards: int = option(0, f"output shards; 0: one per {INPUT_BYTES_PER_SHARD // 2**20} MiB of input "
                                f"(1 to {MAX_SHARDS})")
    overwrite: bool = option(False, "replace an earlier embed output of different parameters in --output")

    def params(self) -> dict:
        """What decides the output (runtime knobs such as threads and shards do not)."""
        return cfg.params(self, exclude=("output", "num_shards", "overwrite", "previous", *RUNTIME_FIELDS))


def make_parser() -> argparse.ArgumentParser:
    """The embedding job's own flags; standard Beam pipeline options pass through."""
    return job_parser("shrink embed", __doc__, EmbedConfig)


def default_shards(paths: list[str]) -> int:
    """Enough shards for readers to spread over workers, each a few hundred MB."""
    total = sum(size or 0 for size in files.sizes(paths).values())
    return max(1, min(MAX_SHARDS, -(-total // INPUT_BYTES_PER_SHARD)))


def build(p: beam.Pipeline, config: EmbedConfig, handler: EncoderModelHandler, num_shards: int,
          previous: list[EmbeddingDataset] = (), share: int | None = 1) -> None:
    """read corpus -> dedupe (against previous outputs) -> embed -> shards, and dead letters."""
    read = config.read_corpus(config.input)
    earlier = p | "Previous" >> ReadPrevious(list(previous)) if previous else None
    embedded = p | "EmbedCorpus" >> EmbedCorpus(read, handler, config.embedding_dim, earlier, share)
    _ = (embedded["vectors"]
         | "BatchVectors" >> BatchVectors(config.max_batch_size)
         | "ToRecords" >> beam.Map(to_records)
         | "WriteDataset" >> WriteDataset(files.join(config.output, dataset.DATA_PREFIX), num_shards, 1, "tfrecord"))
    _ = (embedded[DEAD],) | "DeadLetters" >> WriteDeadLetters(config.output)


def open_previous(config: EmbedConfig) -> list[EmbeddingDataset]:
    """Earlier outputs usable for incremental mode: same encoder and dimension as this run."""
    previous = open_all(list(config.previous)) if config.previous else []
    for d in previous:
        if (d.encoder, d.dim) != (config.encoder, config.embedding_dim):
            raise ArtifactError(
                f"--previous {d.directory} was embedded with {d.encoder} ({d.dim}-d), this run uses "
                f"{config.encoder} ({config.embedding_dim}-d): vectors would not be comparable")
    return previous


def check_counts(result, config: EmbedConfig, previous: list[EmbeddingDataset]) -> dict[str, int]:
    """Reconciled counts; fails on lost records, short previous outputs or (unless allowed) partial files."""
    counts = reconcile_embedding(counter_values(result, NAMESPACE), config.allow_partial_files,
                                 files.join(config.output, DEADLETTER_DIR))
    if counts["read"] and not (counts["embedded"] or counts["duplicate"] or counts["already_embedded"]):
        reasons = {k[len("dead_letter_"):]: v for k, v in counts.items() if k.startswith("dead_letter_") and v}
        raise InputError(f"all {counts['read']} records read were dead-lettered ({reasons}); nothing was embedded. "
                         f"Their reasons are in {files.join(config.output, DEADLETTER_DIR)}")
    if previous:
        read = counter_values(result, "previous").get("read", 0)
        if read != sum(d.records for d in previous):
            raise InputError(f"read {read} records from the --previous outputs, their manifests list "
                             f"{sum(d.records for d in previous)}: one of them is damaged")
    return counts


def run(config: EmbedConfig, options: PipelineOptions) -> dict:
    """Embed the corpus into ``config.output``; returns the manifest."""
    validate_spec(config.encoder)
    OutputDir(config.output, "embeddings", "", [*config.input, *config.previous]).check()
    paths = check_patterns(config.input)
    containment.check_files_outside(config.output, paths)
    previous = open_previous(config)
    params = {**config.params(), "previous": [[files.absolute(d.directory), d.digest] for d in previous]}
    out = OutputDir(config.output, "embeddings", manifests.fingerprint(params), [*config.input, *config.previous])
    options = with_local_workers(options, paths)
    with out.claim(config.overwrite):
        handler = config.encoder_handler(options)
        start = time.monotonic()
        p = create_pipeline(options)
        build(p, config, handler, config.num_shards or default_shards(paths), previous, progress_share(options))
        result = run_and_wait(p)
        counts = check_counts(result, config, previous)
        workers = worker_processes(result)
        elapsed = time.monotonic() - start
        records.write_schema(records.make_schema(config.embedding_dim, metadata=bool(config.metadata_field)),
                             config.output)
        shards = out.written_shards()
        manifest = out.commit({
            **params, "worker_processes": workers, "counts": counts, "records": counts["embedded"],
            "dim": config.embedding_dim,
            "has_text": True, "has_metadata": bool(config.metadata_field),
            "shards": shard_entries(config.output, shards),
            "seconds": round(elapsed, 2), "sentences_per_second": round(counts["embedded"] / max(elapsed, 1e-9), 1),
        })
    log.info("embedded %d sentences (%d duplicates, %d already embedded, %d dead-lettered) in %.1fs -> %s",
             counts["embedded"], counts["duplicate"], counts["already_embedded"], counts["dead_letter"],
             elapsed, config.output)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_config(make_parser(), EmbedConfig, argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.embed")
