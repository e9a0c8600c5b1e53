"""export: a stored corpus in the exact format a vector store loads, and loaded where the store is a database.

    shrink export --input out/reduced --target vertex --output out/vertex --restrict_field topic
    shrink export --input out/reduced --target vertex --format avro --output out/vertex2 --previous out/vertex
    shrink export --input out/reduced --target bigquery --output gs://BUCKET/bq --table mydataset.news
    shrink export --input out/reduced --target lancedb --output out/lance --table news --index ivf_pq
    shrink export --input out/reduced --target pgvector --output out/pg --dsn postgresql://... --table news

Reads any embed or reduce output (float32, float16, int8 or PQ codes) through
the manifest and the artifact it was written with (checked by digest), and
decodes codes to the floats the project's own search scores: stores hold
floats, so the store's bytes per vector are the float type's (the command
says how many). Ids, texts and ``--metadata_field`` values of embed travel
with the vectors. Targets:

- ``vertex``: Vertex AI Vector Search batch import. The batch root is
  ``OUTPUT/vertex/``: JSON Lines (``.json``) or Avro records ``{id, embedding,
  restricts, numeric_restricts, crowding_tag}`` (restricts from
  ``--restrict_field``/``--numeric_restrict_field``, crowding from
  ``--crowding_field``), at most 5,000 files, and with ``--previous`` (the
  last export) a ``delete/`` folder of the ids removed since;
- ``bigquery``: ``OUTPUT/bigquery/*.parquet`` loading as ``id STRING,
  embedding ARRAY<FLOAT64>`` (+ ``text``, ``metadata`` JSON), with
  ``schema.json`` and the ``bq load`` command in ``load_command.txt``;
- ``lancedb``: a table in the LanceDB database ``OUTPUT/lancedb`` with a
  ``fixed_size_list<float32>`` vector column ``embedding``; ``--index
  ivf_pq`` builds its IVF_PQ index (with a PQ corpus's own number of
  sub-quantizers);
- ``pgvector``: a PostgreSQL table ``(id, embedding vector(d) or
  halfvec(d), text, metadata jsonb)`` loaded with COPY (``--halfvec``, the
  default for a float16 corpus), with an optional HNSW or IVFFlat index.

Search the store as ``shrink search`` does: queries embedded, then reduced
with the artifact the manifest names (never quantized); cosine for dense
representations, L2 for PQ (``query_metric`` in the manifest).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core import config as cfg
from core import exports, files, manifests, stores
from core.config import option
from core.dataset import KINDS, EmbeddingDataset
from core.errors import InputError
from core.outputs import OutputDir
from pipelines.cli import job_parser, parse_config
from transforms.datasets import ReadDataset, WriteDataset
from transforms.export import IDS, NAMESPACE, DeletedIds, ToStoreRows, representation_of
from transforms.runner import counter_values, create_pipeline, run_and_wait, worker_processes
from transforms.sinks import DEAD, WriteDeadLetters, reconcile

log = logging.getLogger(__name__)
INDEXES = {"vertex": ("none",), "bigquery": ("none",), "lancedb": ("none", "ivf_pq"),
           "pgvector": ("none", "hnsw", "ivfflat")}


@dataclass(frozen=True)
class ExportConfig:
    input: str = option(help="an embed or reduce output directory")
    output: str = option(help="export directory (new, empty, or an earlier export)")
    target: str = option(help="the vector store to export for", choices=list(exports.TARGETS))
    format: str = option("jsonl", "vertex: JSON Lines (.json) or Avro", choices=["jsonl", "avro"])
    restrict_field: tuple[str, ...] = option((), "vertex: metadata field turned into a categorical restrict "
                                                 "(repeatable; a list value allows each item)")
    numeric_restrict_field: tuple[str, ...] = option((), "vertex: metadata field turned into a numeric restrict "
                                                         "(repeatable)")
    crowding_field: str | None = option(None, "vertex: metadata field used as the crowding tag")
    previous: str | None = option(None, "vertex: the previous export of this corpus; its ids missing now go to "
                                        "delete/")
    table: str | None = option(None, "lancedb/pgvector: table name; bigquery: DATASET.TABLE for the load command")
    dsn: str | None = option(None, "pgvector: PostgreSQL connection string (never written to the manifest)")
    index: str = option("none", "lancedb: ivf_pq; pgvector: hnsw or ivfflat",
                        choices=sorted({i for v in INDEXES.values() for i in v}))
    halfvec: bool | None = option(None, "pgvector: store halfvec(d) (2 bytes per value); default: when the "
                                        "corpus is stored as float16")
    num_shards: int = option(0, "output files; 0: as many as the input has shards (vertex: at most 5,000)")
    batch_size: int = option(4096, "rows per batch read")
    overwrite: bool = option(False, "replace an earlier export of different parameters in --output")

    def params(self) -> dict:
        return cfg.params(self, exclude=("input", "output", "previous", "dsn", "num_shards", "batch_size",
                                         "overwrite"))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink export", __doc__, ExportConfig)


def check(config: ExportConfig, dataset: EmbeddingDataset) -> None:
    """Flags that cannot work together fail before any work."""
    if config.index not in INDEXES[config.target]:
        raise InputError(f"--index {config.index} is not one {config.target} builds; choose from "
                         f"{', '.join(INDEXES[config.target])}")
    vertex_only = (config.restrict_field or config.numeric_restrict_field or config.crowding_field
                   or config.previous or config.format != "jsonl")
    if config.target != "vertex" and vertex_only:
        raise InputError("--restrict_field, --numeric_restrict_field, --crowding_field, --previous and --format "
                         "are for --target vertex")
    fields = config.restrict_field + config.numeric_restrict_field + tuple(filter(None, [config.crowding_field]))
    if fields and not dataset.has_metadata:
        raise InputError(f"{config.input} holds no metadata to take {fields[0]!r} from (embed with --metadata_field)")
    if config.target in ("lancedb", "pgvector") and not config.table:
        raise InputError(f"--target {config.target} needs --table")
    if config.table:
        for part in config.table.split(".") if config.target == "bigquery" else [config.table]:
            exports.check_identifier(part, "--table")
    if config.target == "pgvector" and not config.dsn:
        raise InputError("--target pgvector needs --dsn (e.g. postgresql://user@host/db)")
    if config.target == "vertex" and config.num_shards > exports.VERTEX_MAX_FILES:
        raise InputError(f"Vertex AI reads at most {exports.VERTEX_MAX_FILES} files from a batch root")


def previous_ids(config: ExportConfig) -> list[str]:
    """The id files of the previous Vertex AI export (its manifest's own listing, checked)."""
    if not config.previous:
        return []
    manifest = manifests.read(config.previous, "export")
    if manifest.get("target") != "vertex":
        raise InputError(f"--previous {config.previous} is a {manifest.get('target')} export, not a vertex one")
    return [files.join(config.previous, e["path"]) for e in manifest["files"] if e["path"].startswith("ids/")]


def build(p: beam.Pipeline, config: ExportConfig, dataset: EmbeddingDataset, settings: dict,
          earlier_ids: list[str]) -> None:
    """read -> decode to floats -> rows in the store's format (and ids, deletions, dead letters)."""
    read = p | "ReadDataset" >> ReadDataset([dataset], NAMESPACE, config.batch_size, with_text=True)
    rows = read["columns"] | "ToStoreRows" >> beam.ParDo(
        ToStoreRows(dataset.directory, dataset.manifest, config.target, settings, dataset.records)).with_outputs(
        DEAD, IDS, main="rows")
    folder = {"vertex": "vertex", "bigquery": "bigquery"}.get(config.target, "vectors")
    fmt = {"vertex": config.format, "bigquery": "parquet"}.get(config.target, "parquet")
    shards = min(config.num_shards or len(dataset.shards), exports.VERTEX_MAX_FILES)
    _ = rows.rows | "WriteDataset" >> WriteDataset(files.join(config.output, folder, "data"), shards,
                                                   len(dataset.shards), fmt, compliant_lists=True,
                                                   avro_schema=exports.VERTEX_AVRO_SCHEMA)
    if config.target == "vertex":
        ids = rows[IDS] | "Ids" >> beam.FlatMap(lambda batch: batch)
        _ = ids | "WriteIds" >> beam.io.WriteToText(files.join(config.output, "ids", "ids"), file_name_suffix=".txt")
        if earlier_ids:
            _ = (ids | "Deleted" >> DeletedIds(earlier_ids)
                 | "WriteDeleted" >> beam.io.WriteToText(files.join(config.output, "vertex", "delete", "deleted"),
                                                        file_name_suffix=".txt", num_shards=1))
    _ = (read[DEAD], rows[DEAD]) | "DeadLetters" >> WriteDeadLetters(config.output)


def load(config: ExportConfig, out: OutputDir, dataset: EmbeddingDataset, rep, half: bool, metric: str,
         identity: str) -> dict:
    """Where the store is a database, load the written vectors into it; returns what the manifest records."""
    if config.target == "vertex":
        return {}
    if config.target == "bigquery":
        schema = exports.bigquery_schema(dataset.has_text, dataset.has_metadata)
        files.write_text(out.path("bigquery", "schema.json"), json.dumps(schema, indent=2) + "\n")
        command = exports.bq_load_command(config.table or "DATASET.TABLE", out.path("bigquery", "*.parquet"),
                                          "schema.json")
        files.write_text(out.path("bigquery", "load_command.txt"), command + "\n")
        return {"load_command": command}
    shards = sorted(p for p in files.list_tree(out.path("vectors")) if p.endswith(".parquet"))
    if config.target == "lancedb":
        schema = _parquet_schema(shards)
        sub_vectors = rep.codec.m if rep.precision == "pq" else max(1, rep.dim // 16)
        stores.load_lancedb(out.path("lancedb"), config.table, shards, schema, metric, config.index, sub_vectors,
                            dataset.records)
        return {"database": "lancedb", "table": config.table}
    loaded = stores.load_pgvector(config.dsn, config.table, shards, rep.dim, half, metric, config.index,
                                  dataset.has_text, dataset.has_metadata, identity)
    return {"table": config.table, "rows_loaded": loaded}


def _parquet_schema(shards: list[str]):
    import pyarrow.parquet as pq

    with files.open_read(shards[0]) as f:
        return pq.ParquetFile(f).schema_arrow


def run(config: ExportConfig, options: PipelineOptions) -> dict:
    """Export the dataset for the target (and load it where the target is a database); returns the manifest."""
    dataset = EmbeddingDataset.open(config.input, KINDS)
    check(config, dataset)
    rep = representation_of(dataset.directory, dataset.manifest)
    half = config.halfvec if config.halfvec is not None else rep.precision == "float16"
    if rep.precision == "pq" and rep.codec.metric != "l2":
        raise InputError(f"{config.input} is stored as {rep.name}, whose codes are searched by inner product; the "
                         "exports serve L2 (PQ) and cosine (dense) only: export a dataset written in another "
                         "representation")
    metric = "l2" if rep.precision == "pq" else "cosine"
    settings = {"format": config.format, "restrict_field": config.restrict_field, "halfvec": half,
                "numeric_restrict_field": config.numeric_restrict_field, "crowding_field": config.crowding_field}
    earlier = previous_ids(config)
    params = {**config.params(), "input_digest": dataset.digest, "halfvec": half,
              "previous_digest": manifests.identity(config.previous)["digest"] if config.previous else None}
    out = OutputDir(config.output, "export", manifests.fingerprint(params), [config.input, config.previous])
    with out.claim(config.overwrite):
        start = time.monotonic()
        p = create_pipeline(options)
        build(p, config, dataset, settings, earlier)
        result = run_and_wait(p)
        counts = reconcile(counter_values(result, NAMESPACE), "read", ("exported", "dead_letter"))
        dataset.check_count(counts["read"], "export")
        loaded = load(config, out, dataset, rep, half, metric, dataset.digest)
        store_bytes = exports.store_bytes(config.target, rep.dim, half)
        manifest = out.commit({
            **params, "target": config.target, "records": counts["exported"], "counts": counts, "dim": rep.dim,
            "representation": rep.summary(config.output), "query_metric": metric,
            "bytes_per_vector": {"project": rep.bytes_per_vector, "store": store_bytes}, **loaded,
            "worker_processes": worker_processes(result), "seconds": round(time.monotonic() - start, 2)})
    print(f"{counts['exported']:,} vectors stored as {rep.name} ({rep.bytes_per_vector} bytes each here) exported "
          f"for {config.target}: {store_bytes} bytes each in the store"
          + (" (stores hold floats: codes are exported decoded)" if rep.codes else "") + f" -> {config.output}",
          flush=True)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_config(make_parser(), ExportConfig, argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.export")
