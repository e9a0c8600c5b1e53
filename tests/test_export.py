"""Exports to vector stores: files checked against each store's documented format, and the real stores
(LanceDB in-process, PostgreSQL + pgvector as a server) answering 50 queries as ``shrink search`` does."""
from __future__ import annotations

import json

import fastavro
import numpy as np
import pyarrow.parquet as pq
import pytest

from core import exports, search
from core.errors import InputError
from pipelines import export, fit_codec, reduce
from pipelines import search as search_job
from tests import pgserver
from tests.fixtures import correlated_vectors, write_embedding_dataset, write_linear_reducer

DIM, ROWS, K = 64, 600, 10
TOPICS = ["energy", "banks", "tech"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An embedding dataset with metadata, and it reduced as PCA-16 float32 and float16, and as PQ-8 codes."""
    root = tmp_path_factory.mktemp("export")
    metadata = [{"topic": TOPICS[i % 3], "year": 2000 + i % 25, "tags": ["a", "b"][: i % 3], "score": i / 7}
                for i in range(ROWS)]
    write_embedding_dataset(root / "emb", correlated_vectors(ROWS, DIM, seed=1), num_shards=3, metadata=metadata)
    matrix = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0][:, :16]
    pca = write_linear_reducer(root / "pca", correlated_vectors(1, DIM, seed=2)[0] * 0.1, matrix)
    fit_codec.main(["--input", str(root / "emb"), "--output", str(root / "pq8"), "--codec", "pq", "--m", "8",
                    "--no-opq"])
    for name, spec, dtype in (("f32", pca, "float32"), ("f16", pca, "float16"), ("pq", str(root / "pq8"), "float32")):
        reduce.main(["--input", str(root / "emb"), "--reducer", spec, "--output", str(root / name), "--dtype", dtype])
    return root


def _expected(corpus_dir, queries) -> list[list[str]]:
    """What ``shrink search`` answers: the top-10 ids of each query."""
    stored = search_job.Corpus.load(str(corpus_dir))
    rows, _ = search_job.find(stored, queries, K)
    return [[stored.ids[r] for r in row] for row in rows]


def _queries() -> np.ndarray:
    return correlated_vectors(50, DIM, seed=9)


def test_vertex_files_follow_the_documented_format_and_list_deleted_ids(corpus, tmp_path):
    manifest = export.main(["--input", str(corpus / "pq"), "--target", "vertex", "--output", str(tmp_path / "v1"),
                            "--restrict_field", "topic", "--restrict_field", "tags", "--numeric_restrict_field",
                            "year", "--numeric-restrict-field", "score", "--crowding_field", "topic"])
    root = tmp_path / "v1" / "vertex"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == []  # the batch root holds data files only
    records = [json.loads(line) for f in sorted(root.glob("*.json")) for line in f.read_text().splitlines()]
    assert manifest["records"] == len(records) == ROWS and manifest["bytes_per_vector"] == {"project": 8,
                                                                                             "store": 4 * DIM}
    meta = {f"id-{i:05d}": i for i in range(ROWS)}
    for record in records:
        i = meta[record["id"]]
        assert set(record) <= {"id", "embedding", "restricts", "numeric_restricts", "crowding_tag"}
        assert len(record["embedding"]) == DIM and all(isinstance(v, float) for v in record["embedding"])
        allowed = {r["namespace"]: r["allow"] for r in record["restricts"]}
        assert allowed["topic"] == [TOPICS[i % 3]] and allowed.get("tags", []) == ["a", "b"][: i % 3]
        numbers = {n["namespace"]: n for n in record["numeric_restricts"]}
        assert numbers["year"] == {"namespace": "year", "value_int": 2000 + i % 25}
        assert numbers["score"]["value_double"] == pytest.approx(i / 7) and record["crowding_tag"] == TOPICS[i % 3]
    avro = export.main(["--input", str(corpus / "pq"), "--target", "vertex", "--format", "avro", "--output",
                        str(tmp_path / "v2"), "--restrict_field", "topic", "--previous", str(tmp_path / "v1")])
    rows = [r for f in sorted((tmp_path / "v2" / "vertex").glob("*.avro")) for r in fastavro.reader(f.open("rb"))]
    schema = fastavro.parse_schema(exports.VERTEX_AVRO_SCHEMA)
    assert len(rows) == ROWS and all(fastavro.validate(r, schema) for r in rows)
    assert avro["records"] == ROWS
    assert not list((tmp_path / "v2" / "vertex" / "delete").glob("*.txt"))[0].read_text()  # nothing removed
    fewer = tmp_path / "fewer"
    write_embedding_dataset(fewer, correlated_vectors(ROWS - 5, DIM, seed=1), num_shards=2)
    export.main(["--input", str(fewer), "--target", "vertex", "--output", str(tmp_path / "v3"), "--previous",
                 str(tmp_path / "v2")])
    deleted = [line for f in (tmp_path / "v3" / "vertex" / "delete").glob("*.txt") for line in f.read_text().split()]
    assert sorted(deleted) == [f"id-{i:05d}" for i in range(ROWS - 5, ROWS)]


def test_bigquery_parquet_loads_as_string_and_repeated_float64(corpus, tmp_path):
    manifest = export.main(["--input", str(corpus / "f16"), "--target", "bigquery", "--output", str(tmp_path / "bq"),
                            "--table", "news.vectors"])
    table = pq.read_table(sorted((tmp_path / "bq" / "bigquery").glob("*.parquet")))
    assert str(table.schema.field("id").type) == "string" and str(table.schema.field("metadata").type) == "string"
    assert str(table.schema.field("embedding").type) == "list<element: double>"  # LIST of DOUBLE: ARRAY<FLOAT64>
    assert table.num_rows == ROWS and len(table.column("embedding")[0]) == 16
    schema = json.loads((tmp_path / "bq" / "bigquery" / "schema.json").read_text())
    assert [(f["name"], f["type"], f["mode"]) for f in schema][:2] == [("id", "STRING", "REQUIRED"),
                                                                       ("embedding", "FLOAT64", "REPEATED")]
    assert manifest["load_command"].startswith("bq load --source_format=PARQUET --parquet_enable_list_inference=true")
    assert "news.vectors" in manifest["load_command"]


@pytest.mark.parametrize("name, index", [("f32", "none"), ("pq", "none"), ("pq", "ivf_pq")])
def test_lancedb_answers_the_queries_shrink_search_answers(corpus, tmp_path, name, index):
    import lancedb

    manifest = export.main(["--input", str(corpus / name), "--target", "lancedb", "--output", str(tmp_path / "db"),
                            "--table", "news", "--index", index])
    table = lancedb.connect(str(tmp_path / "db" / "lancedb")).open_table("news")
    assert table.count_rows() == ROWS and str(table.schema.field("embedding").type).startswith("fixed_size_list")
    if index == "ivf_pq":
        assert table.list_indices() and table.list_indices()[0].index_type == "IvfPq"
        return  # an approximate index: recall, not equality, is its promise
    rep = search_job.Corpus.load(str(corpus / name)).representation
    queries = search.query_vectors(rep, _queries())
    got = [[r["id"] for r in table.search(q).distance_type(manifest["query_metric"]).limit(K).select(["id"])
            .to_list()] for q in queries]
    assert got == _expected(corpus / name, _queries())


@pytest.fixture(scope="module")
def postgres():
    reason = pgserver.missing()
    if reason:
        pytest.skip(reason)
    with pgserver.server() as dsn:
        yield dsn


@pytest.mark.parametrize("name", ["f32", "f16", "pq"])
def test_pgvector_answers_the_queries_shrink_search_answers(corpus, tmp_path, postgres, name):
    import psycopg

    argv = ["--input", str(corpus / name), "--target", "pgvector", "--output", str(tmp_path / "pg"), "--dsn",
            postgres, "--table", f"news_{name}", "--index", "hnsw"]
    manifest = export.main(argv)
    assert manifest["rows_loaded"] == ROWS and "dsn" not in json.dumps(manifest)
    assert manifest["halfvec"] is (name == "f16")
    again = export.main(argv + ["--overwrite"])  # a re-export replaces the table with the same rows
    assert again["rows_loaded"] == ROWS
    rep = search_job.Corpus.load(str(corpus / name)).representation
    operator = exports.PG_OPERATORS[manifest["query_metric"]][0]
    cast = "halfvec" if manifest["halfvec"] else "vector"
    with psycopg.connect(postgres) as conn:
        assert conn.execute(f"SELECT count(*) FROM news_{name}").fetchone()[0] == ROWS
        kinds = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (f"news_{name}",)).fetchall()
        assert any("hnsw" in k[0] for k in kinds)
        conn.execute("SET enable_indexscan = off")  # exact scan: the index trades recall for speed
        got = [[r[0] for r in conn.execute(f"SELECT id FROM news_{name} ORDER BY embedding {operator} %s::{cast} "
                                           f"LIMIT {K}", (exports.pg_vector_text(q),)).fetchall()]
               for q in search.query_vectors(rep, _queries())]
    assert got == _expected(corpus / name, _queries())


def test_pgvector_never_replaces_a_table_it_did_not_create(corpus, tmp_path, postgres):
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int)")
        conn.execute("INSERT INTO customers VALUES (1)")
    with pytest.raises(InputError, match="was not created by this tool"):
        export.main(["--input", str(corpus / "f32"), "--target", "pgvector", "--output", str(tmp_path / "pg"),
                     "--dsn", postgres, "--table", "customers"])
    with psycopg.connect(postgres) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 1


@pytest.mark.parametrize("argv, message", [
    (["--target", "lancedb"], "needs --table"),
    (["--target", "bigquery", "--restrict_field", "topic"], "are for --target vertex"),
    (["--target", "pgvector", "--table", "t", "--index", "ivf_pq"], "not one pgvector builds"),
    (["--target", "lancedb", "--table", "bad name"], "letters, digits and underscores")])
def test_flags_a_target_cannot_use_fail_before_any_work(corpus, tmp_path, argv, message):
    with pytest.raises(InputError, match=message):
        export.main(["--input", str(corpus / "f32"), "--output", str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()
