"""What each vector store loads, as its documentation describes it: records, schemas and load statements.

- **Vertex AI Vector Search** batch import: JSON Lines or Avro records
  ``{"id", "embedding", "restricts", "numeric_restricts", "crowding_tag"}``
  in files directly under the batch root (at most 5,000), and a ``delete/``
  folder of text files with one id per line;
- **BigQuery**: Parquet that loads as ``id STRING, embedding ARRAY<FLOAT64>``
  (plus ``text`` STRING and ``metadata`` JSON), with its schema file and the
  ``bq load`` command;
- **LanceDB**: a table with a ``fixed_size_list<float32>`` vector column;
- **PostgreSQL + pgvector**: ``vector(d)`` (or ``halfvec(d)`` for float16)
  loaded with COPY, with an optional HNSW or IVFFlat index.

Stores hold floats: int8 and PQ codes are exported decoded (the floats the
project's own search scores), so the store's bytes per vector are those of
the float type, not of the codes.
"""
from __future__ import annotations

import json
import math
import re

from core.errors import InputError

TARGETS = ("vertex", "bigquery", "lancedb", "pgvector")
VERTEX_MAX_FILES = 5000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

VERTEX_AVRO_SCHEMA = {
    "type": "record", "name": "FeatureVector",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "embedding", "type": {"type": "array", "items": "float"}},
        {"name": "restricts", "default": [], "type": {"type": "array", "items": {
            "type": "record", "name": "Restrict",
            "fields": [{"name": "namespace", "type": "string"},
                       {"name": "allow", "type": {"type": "array", "items": "string"}, "default": []},
                       {"name": "deny", "type": {"type": "array", "items": "string"}, "default": []}]}}},
        {"name": "numeric_restricts", "default": [], "type": {"type": "array", "items": {
            "type": "record", "name": "NumericRestrict",
            "fields": [{"name": "namespace", "type": "string"},
                       {"name": "value_int", "type": ["null", "long"], "default": None},
                       {"name": "value_float", "type": ["null", "float"], "default": None},
                       {"name": "value_double", "type": ["null", "double"], "default": None}]}}},
        {"name": "crowding_tag", "type": ["null", "string"], "default": None},
    ]}


def vertex_record(id_: str, vector: list[float], metadata: dict, restrict: tuple[str, ...],
                  numeric: tuple[str, ...], crowding: str | None, avro: bool) -> dict:
    """One datapoint: categorical restricts from ``restrict`` fields (a list value allows each of its items),
    numeric restricts from ``numeric`` fields (int or float), the crowding tag from ``crowding``."""
    record = {"id": id_, "embedding": vector}
    tokens = [{"namespace": f, "allow": [str(v) for v in _values(metadata.get(f))]} for f in restrict]
    tokens = [t for t in tokens if t["allow"]]
    numbers = [_numeric(f, metadata.get(f)) for f in numeric if metadata.get(f) is not None]
    if avro:
        tokens = [{**t, "deny": []} for t in tokens]
        numbers = [{"value_int": None, "value_float": None, "value_double": None, **n} for n in numbers]
    if tokens or avro:
        record["restricts"] = tokens
    if numbers or avro:
        record["numeric_restricts"] = numbers
    tag = metadata.get(crowding) if crowding else None
    if tag is not None or avro:
        record["crowding_tag"] = None if tag is None else str(tag)
    return record


def _values(value) -> list:
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _numeric(field: str, value) -> dict:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"numeric restrict {field!r} is {value!r}, not a finite number")
    return {"namespace": field, "value_int": value} if isinstance(value, int) else \
        {"namespace": field, "value_double": float(value)}


def bigquery_schema(with_text: bool, with_metadata: bool) -> list[dict]:
    """The table schema (``bq load`` JSON schema file) the Parquet export loads as."""
    return ([{"name": "id", "type": "STRING", "mode": "REQUIRED"},
             {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"}]
            + ([{"name": "text", "type": "STRING", "mode": "NULLABLE"}] if with_text else [])
            + ([{"name": "metadata", "type": "JSON", "mode": "NULLABLE"}] if with_metadata else []))


def bq_load_command(table: str, uri_glob: str, schema_file: str) -> str:
    return (f"bq load --source_format=PARQUET --parquet_enable_list_inference=true --replace "
            f"{table} '{uri_glob}' {schema_file}")


def check_identifier(name: str, what: str) -> str:
    """A table or index name safe to put in SQL unquoted; InputError otherwise."""
    if not _NAME.fullmatch(name or ""):
        raise InputError(f"{what} {name!r} must be letters, digits and underscores (not starting with a digit)")
    return name


def pg_column_type(dim: int, half: bool) -> str:
    return f"{'halfvec' if half else 'vector'}({dim})"


def pg_create_table(table: str, dim: int, half: bool, with_text: bool, with_metadata: bool) -> str:
    columns = ["id text PRIMARY KEY", f"embedding {pg_column_type(dim, half)} NOT NULL"]
    columns += ["text text"] * with_text + ["metadata jsonb"] * with_metadata
    return f"CREATE TABLE {table} ({', '.join(columns)})"


PG_OPERATORS = {"cosine": ("<=>", "cosine_ops"), "l2": ("<->", "l2_ops")}


def pg_create_index(table: str, index: str, metric: str, half: bool) -> str:
    """``CREATE INDEX`` for an HNSW or IVFFlat index on the embedding column, with the metric's operator class."""
    ops = ("halfvec_" if half else "vector_") + PG_OPERATORS[metric][1]
    options = " WITH (lists = 100)" if index == "ivfflat" else ""
    return f"CREATE INDEX {table}_embedding_{index} ON {table} USING {index} (embedding {ops}){options}"


def pg_vector_text(vector) -> str:
    """A vector as pgvector's text input: ``[x,y,...]`` with float32 values written exactly."""
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


def store_bytes(target: str, dim: int, half: bool) -> int:
    """Bytes one vector takes in the store's own vector type (row overhead not counted)."""
    if target == "bigquery":
        return 8 * dim
    if target == "pgvector":
        return (2 if half else 4) * dim + 8  # pgvector's varlena header and dimension fields
    return 4 * dim


def metadata_of(text: str | None) -> dict:
    return json.loads(text) if text else {}
