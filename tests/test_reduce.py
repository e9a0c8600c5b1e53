"""reduce: both output formats, refusals, dead letters and byte-identical re-runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core import pca as pca_math
from core import records, reducers
from core.errors import ArtifactError
from pipelines import reduce as reduce_job
from tests.fixtures import correlated_vectors, read_records, reseal, write_embedding_dataset, write_linear_reducer
from transforms.datasets import read_tfrecords as shard_records

ROWS, DIM, K = 200, 64, 8
BAD = [b"not a tf.Example", records.encode_example("short", np.ones(10), "t"),
       records.encode_example("nan", np.full(DIM, np.nan, np.float32), "t")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reduce")
    x = correlated_vectors(ROWS, DIM, seed=2)
    rows = write_embedding_dataset(root / "emb", x, num_shards=2, extra_records=BAD)
    fitted = pca_math.fit(x, K)
    write_linear_reducer(root / "pca", fitted["mean"], fitted["components"])
    return root, rows, fitted


def _reduce(root: Path, out: str, *extra: str) -> dict:
    return reduce_job.main(["--input", str(root / "emb"), "--reducer", str(root / "pca"),
                           "--output", str(root / out), "--batch_size", "64", *extra])


def _expected(rows, fitted) -> dict:
    x = np.stack([r["embedding"] for r in rows])
    y = pca_math.project(x, fitted["components"], fitted["mean"])
    return {r["id"]: v for r, v in zip(rows, y)}


def test_tfrecord_output(setup):
    root, rows, fitted = setup
    manifest = _reduce(root, "tfr")
    assert manifest["kind"] == "reduced" and manifest["dim"] == K and manifest["input_dim"] == DIM
    assert manifest["counts"]["read"] == ROWS + len(BAD)
    assert manifest["counts"]["written"] == ROWS and manifest["counts"]["dead_letter"] == len(BAD)
    representation = manifest["representation"]
    assert representation["name"] == "pca-8/float32" and representation["reducer"]["kind"] == "pca"
    assert records.schema_dim(records.read_schema(str(root / "tfr"))) == K
    out = {r["id"]: r for r in read_records(root / "tfr")}
    expected = _expected(rows, fitted)
    assert set(out) == set(expected)
    for id_, vector in expected.items():
        np.testing.assert_allclose(out[id_]["embedding"], vector, atol=1e-5)
    assert out["id-00003"]["text"] == "sentence number 3"


def test_dead_letters_have_reasons(setup):
    root, _, _ = setup
    _reduce(root, "tfr_dl")
    lines = [json.loads(line) for path in (root / "tfr_dl" / "deadletter").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert sorted(d["reason"] for d in lines) == ["corrupt_record", "non_finite", "wrong_dimension"]


def test_parquet_float16_without_text(setup):
    root, rows, fitted = setup
    manifest = _reduce(root, "pq", "--format", "parquet", "--dtype", "float16", "--drop_text")
    assert manifest["counts"]["written"] == ROWS
    table = pq.read_table([str(p) for p in sorted((root / "pq").glob("data-*.parquet"))])
    assert table.schema.names == ["id", "embedding"]
    assert str(table.schema.field("embedding").type) == f"fixed_size_list<item: halffloat>[{K}]"
    expected = _expected(rows, fitted)
    got = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_numpy(zero_copy_only=False)))
    for id_, vector in expected.items():
        np.testing.assert_array_equal(np.asarray(got[id_], np.float16), vector.astype(np.float32).astype(np.float16))


def test_parquet_float32_with_text(setup):
    root, rows, _ = setup
    _reduce(root, "pq32", "--format", "parquet")
    table = pq.read_table([str(p) for p in sorted((root / "pq32").glob("data-*.parquet"))])
    assert table.schema.names == ["id", "text", "embedding"] and table.num_rows == ROWS
    assert str(table.schema.field("embedding").type) == f"fixed_size_list<item: float>[{K}]"


def test_shards_are_streamed_from_batch_parts_in_input_order(setup, monkeypatch):
    """Each batch goes through its own part file (none left), shards keep input order, row groups are bounded."""
    from transforms import datasets
    root, _, _ = setup
    monkeypatch.setattr(datasets, "ROW_GROUP_ROWS", 100)
    _reduce(root, "streamed", "--format", "parquet", "--num_shards", "1")
    assert not [p.name for p in (root / "streamed").rglob("*") if "part" in p.name or p.suffix == ".tmp"]
    (shard,) = sorted((root / "streamed").glob("data-*.parquet"))
    meta = pq.ParquetFile(shard).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(groups) == ROWS and len(groups) > 1 and all(100 <= g < 100 + 64 for g in groups[:-1])
    ids = pq.read_table(shard).column("id").to_pylist()
    source = [_id_or_none(r) for path in sorted((root / "emb").glob("data-*.tfrecord")) for r in shard_records(path)]
    assert ids == [i for i in source if i in set(ids)]  # input shard 0's batches, then shard 1's


def _id_or_none(serialized: bytes) -> str | None:
    try:
        return records.decode_example(serialized)["id"]
    except Exception:  # the deliberately corrupt record
        return None


def test_rerun_gives_byte_identical_vectors(setup):
    root, _, _ = setup
    _reduce(root, "run1")
    _reduce(root, "run2", "--num_shards", "3", "--direct_num_workers", "2", "--direct_running_mode",
            "multi_threading")
    a = {r["id"]: r["embedding"].tobytes() for r in read_records(root / "run1")}
    b = {r["id"]: r["embedding"].tobytes() for r in read_records(root / "run2")}
    assert len(a) == ROWS and a == b


def test_refuses_dimension_mismatch(setup, tmp_path):
    root, _, _ = setup
    write_linear_reducer(tmp_path / "small", np.zeros(32), np.eye(32)[:, :4])
    with pytest.raises(ArtifactError, match="32-d"):
        reduce_job.main(["--input", str(root / "emb"), "--reducer", str(tmp_path / "small"),
                        "--output", str(tmp_path / "out")])


def test_refuses_missing_or_corrupt_artifact(setup, tmp_path):
    root, _, fitted = setup
    args = ["--input", str(root / "emb"), "--output", str(tmp_path / "out")]
    with pytest.raises(ArtifactError, match="does not exist"):
        reduce_job.main([*args, "--reducer", str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        reduce_job.main([*args, "--reducer", str(tmp_path / "empty")])
    art = tmp_path / "art"
    write_linear_reducer(art, fitted["mean"], fitted["components"])
    (art / "reducer.npz").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="changed since it was written"):
        reduce_job.main([*args, "--reducer", str(art)])
    reseal(art)  # consistent listing, unreadable weights
    with pytest.raises(ArtifactError, match="not a readable array file"):
        reduce_job.main([*args, "--reducer", str(art)])
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        reducers.load_reducer(str(art))


def test_refuses_output_of_a_different_run(setup):
    root, _, _ = setup
    _reduce(root, "taken")
    with pytest.raises(ArtifactError, match="different run"):
        _reduce(root, "taken", "--drop_text")
    assert _reduce(root, "taken", "--drop_text", "--overwrite")["drop_text"] is True


def test_round_trip_embed_fit_pca_reduce(tmp_path):
    """A few hundred sentences: embed -> fit-pca -> reduce, with the real encoder and DirectRunner."""
    from pipelines import embed, fit_pca, sample_corpus

    corpus = tmp_path / "corpus.txt"
    sample_corpus.main(["--output", str(corpus), "--n", "300", "--seed", "1"])
    emb = embed.main(["--input", str(corpus), "--output", str(tmp_path / "emb")])
    pca = fit_pca.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "pca"), "--output_dim", "16"])
    out = reduce_job.main(["--input", str(tmp_path / "emb"), "--reducer", str(tmp_path / "pca"),
                          "--output", str(tmp_path / "reduced")])
    assert pca["rows_analyzed"] == emb["counts"]["embedded"] == out["counts"]["written"] > 250
    assert 0 < pca["explained_variance_total"] < 1
    raw = {r["id"]: r for r in read_records(tmp_path / "emb")}
    reduced = read_records(tmp_path / "reduced")
    x = np.stack([raw[r["id"]]["embedding"] for r in reduced])
    np.testing.assert_allclose(np.stack([r["embedding"] for r in reduced]),
                               reducers.load_reducer(str(tmp_path / "pca"))(x), atol=1e-6)
    assert all(r["text"] == raw[r["id"]]["text"] for r in reduced)

    # Raw text straight in (embedding on the fly) gives the same rows as embed-then-reduce.
    direct = reduce_job.main(["--text_input", str(corpus), "--reducer", str(tmp_path / "pca"),
                             "--output", str(tmp_path / "direct")])
    assert direct["counts"]["written"] == out["counts"]["written"]
    assert direct["counts"]["embed"]["embedded"] == emb["counts"]["embedded"]
    via_text = {r["id"]: r["embedding"] for r in read_records(tmp_path / "direct")}
    for r in reduced:
        np.testing.assert_allclose(via_text[r["id"]], r["embedding"], atol=1e-5)
