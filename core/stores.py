"""Loading an export into a database: LanceDB (embedded) and PostgreSQL with pgvector (a server).

Both read the export's Parquet shards of float vectors in order and stream
them in, so memory stays at one row group. A re-export replaces the table
as a whole: LanceDB writes a new table in the export's own directory;
PostgreSQL loads a staging table with COPY, builds the index there and swaps
it in one transaction, and replaces only a table an earlier export of this
tool created (marked with a comment), never anyone else's.
"""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from core import exports, files
from core.errors import InputError

MARK = "use-shrink export"  # the comment on tables this tool created


def _batches(shards: list[str], batch_size: int = 65_536):
    for shard in shards:
        with files.open_read(shard) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)


def load_lancedb(database: str, table: str, shards: list[str], schema: pa.Schema, metric: str, index: str,
                 sub_vectors: int, rows: int) -> None:
    """Write the table into the LanceDB database directory; optionally an IVF_PQ index with ``sub_vectors``."""
    import lancedb

    db = lancedb.connect(database)
    created = db.create_table(table, data=pa.RecordBatchReader.from_batches(schema, _batches(shards)))
    if index == "ivf_pq":
        if rows < 256:
            raise InputError(f"an IVF_PQ index needs at least 256 rows to train, the export has {rows}")
        created.create_index(metric=metric, num_partitions=max(1, round(math.sqrt(rows))),
                             num_sub_vectors=sub_vectors, index_type="IVF_PQ", vector_column_name="embedding")


def load_pgvector(dsn: str, table: str, shards: list[str], dim: int, half: bool, metric: str, index: str,
                  with_text: bool, with_metadata: bool, identity: str) -> int:
    """COPY the rows into a staging table, index it, and swap it in for ``table``; rows loaded."""
    import psycopg
    from psycopg import sql

    staging = f"{table}__shrink_load"
    with psycopg.connect(dsn, autocommit=False) as conn:
        _check_replaceable(conn, table)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"DROP TABLE IF EXISTS {staging}")
        conn.execute(exports.pg_create_table(staging, dim, half, with_text, with_metadata))
        loaded = _copy(conn, staging, shards, with_text, with_metadata)
        if index != "none":
            conn.execute(exports.pg_create_index(staging, index, metric, half))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(staging),
                                                                   sql.Literal(f"{MARK} {identity}")))
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"ALTER TABLE {staging} RENAME TO {table}")
        if index != "none":
            conn.execute(f"ALTER INDEX {staging}_embedding_{index} RENAME TO {table}_embedding_{index}")
        conn.commit()
    return loaded


def _check_replaceable(conn, table: str) -> None:
    """Refuse to replace a table this tool did not create."""
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL",
                       (table, table)).fetchone()
    comment, exists = row
    if exists and not (comment or "").startswith(MARK):
        raise InputError(f"table {table} exists and was not created by this tool's export; choose another "
                         "--table, or drop it yourself")


def _copy(conn, table: str, shards: list[str], with_text: bool, with_metadata: bool) -> int:
    columns = ["id", "embedding"] + ["text"] * with_text + ["metadata"] * with_metadata
    loaded = 0
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for batch in _batches(shards):
            data = batch.to_pydict()
            vectors = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
            for i, id_ in enumerate(data["id"]):
                row = [id_, exports.pg_vector_text(vectors[i])]
                row += [data["text"][i]] * with_text + [data["metadata"][i]] * with_metadata
                copy.write_row(row)
            loaded += batch.num_rows
    return loaded
