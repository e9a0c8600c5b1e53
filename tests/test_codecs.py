"""Codec artifacts end to end: fit-codec (tf.Transform ranges, faiss PQ), reduce with them, search them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import tensorflow as tf

from core import codecs, manifests, quantization
from core.errors import ArtifactError, InputError
from core.evaluation import metrics
from pipelines import fit_codec, reduce, search
from tests.fixtures import correlated_vectors, read_all, reseal, write_embedding_dataset, write_linear_reducer

REPO = Path(__file__).resolve().parents[1]
DIM = 64


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("codecs")
    write_embedding_dataset(root / "emb", correlated_vectors(1200, DIM, seed=3), num_shards=2)
    rng = np.random.default_rng(0)
    write_linear_reducer(root / "pca", rng.normal(size=DIM) * 0.1, np.linalg.qr(rng.normal(size=(DIM, DIM)))[0][:, :16])
    fit_codec.main(["--input", str(root / "emb"), "--output", str(root / "raw8"), "--codec", "int8"])
    fit_codec.main(["--input", str(root / "emb"), "--output", str(root / "pca8"), "--codec", "int8",
                    "--reducer", str(root / "pca")])
    fit_codec.main(["--input", str(root / "emb"), "--output", str(root / "pq8"), "--codec", "pq", "--m", "8",
                    "--no-opq"])
    return root


def _vectors(root: Path) -> tuple[list[str], np.ndarray]:
    data = read_all(str(root / "emb"))
    return data["id"], data["vector"]


def test_int8_ranges_from_tf_transform_match_numpy_and_the_head_codes_like_numpy(work):
    ids, x = _vectors(work)
    raw = manifests.read(str(work / "raw8"), "codec")
    assert (raw["name"], raw["bytes_per_vector"], raw["rows_analyzed"]) == ("raw-64/int8", 64, 1200)
    lo, hi = quantization.calibrate(x)
    ranges = codecs.load(str(work / "raw8")).codec
    np.testing.assert_allclose(ranges.lo, lo, atol=1e-6)
    np.testing.assert_allclose(ranges.hi, hi, atol=1e-6)
    pca = codecs.load(str(work / "pca8"))
    reduced = pca.query(x)
    np.testing.assert_allclose(pca.codec.lo, reduced.min(axis=0), atol=1e-5)
    head = tf.saved_model.load(str(work / "pca8" / "head"))
    codes = head.signatures["quantize"](embedding=tf.constant(x[:100]))["codes"].numpy()
    np.testing.assert_array_equal(codes, pca.encode(x[:100]))
    back = head.signatures["dequantize"](codes=tf.constant(codes))["reduced"].numpy()
    np.testing.assert_allclose(back, pca.decode(codes), atol=1e-6)
    np.testing.assert_allclose(head.signatures["serving_default"](embedding=tf.constant(x[:5]))["reduced"].numpy(),
                               reduced[:5], atol=1e-5)


def test_pq_codec_is_faiss_and_is_sampled(work):
    manifest = manifests.read(str(work / "pq8"), "codec")
    assert manifest["bytes_per_vector"] == 8 and manifest["sample_rows"] == 1200 and manifest["train_seconds"] >= 0
    index = faiss.read_index(str(work / "pq8" / codecs.PQ_INDEX))  # faiss's own format, readable by faiss
    _, x = _vectors(work)
    np.testing.assert_array_equal(index.sa_encode(x[:50]), codecs.load(str(work / "pq8")).encode(x[:50]))
    sampled = fit_codec.main(["--input", str(work / "emb"), "--output", str(work / "pq8s"), "--codec", "pq",
                              "--m", "8", "--sample_count", "600", "--no-opq"])
    assert 450 < sampled["sample_rows"] < 750 and sampled["opq_trained"] is False


@pytest.mark.parametrize("codec, fmt", [("raw8", "tfrecord"), ("pca8", "parquet"), ("pq8", "parquet")])
def test_reduce_writes_codes_that_decode_back(work, codec, fmt):
    out = work / f"red-{codec}-{fmt}"
    manifest = reduce.main(["--input", str(work / "emb"), "--reducer", str(work / codec), "--output", str(out),
                            "--format", fmt])
    representation = codecs.load(str(work / codec))
    assert manifest["codes"] and manifest["bytes_per_vector"] == representation.bytes_per_vector
    stored = read_all(str(out))
    ids, x = _vectors(work)
    position = {i: n for n, i in enumerate(ids)}
    rows = x[[position[i] for i in stored["id"]]]
    expected = representation.encode(rows)
    np.testing.assert_array_equal(stored["vector"].view(expected.dtype), expected)
    np.testing.assert_allclose(representation.decode(stored["vector"]), representation.decode(expected))


def test_clipped_int8_values_are_counted(tmp_path, work):
    far = correlated_vectors(50, DIM, seed=9) * 3  # outside the ranges the codec was calibrated on
    write_embedding_dataset(tmp_path / "far", far, num_shards=1)
    manifest = reduce.main(["--input", str(tmp_path / "far"), "--reducer", str(work / "raw8"),
                            "--output", str(tmp_path / "out")])
    codec = codecs.load(str(work / "raw8")).codec
    assert manifest["counts"]["clipped_values"] == int(((far < codec.lo) | (far > codec.hi)).sum()) > 0


def test_codec_artifacts_are_checked_on_load(tmp_path, work):
    broken = tmp_path / "broken"
    shutil.copytree(work / "pq8", broken)
    (broken / codecs.PQ_INDEX).write_bytes(b"not a faiss index")
    with pytest.raises(ArtifactError, match="changed since it was written"):
        codecs.load(str(broken))
    reseal(broken)
    with pytest.raises(ArtifactError, match="not a readable faiss index"):
        codecs.load(str(broken))
    (broken / codecs.PQ_INDEX).write_bytes((work / "pq8" / codecs.PQ_INDEX).read_bytes())
    reseal(broken, input_dim=32)
    with pytest.raises(ArtifactError, match="dimension"):
        codecs.load(str(broken))
    with pytest.raises(ArtifactError, match="needs a codec artifact"):
        codecs.open_representation(str(work / "pca"), "int8", DIM)
    with pytest.raises(InputError, match="must divide"):
        fit_codec.main(["--input", str(work / "emb"), "--output", str(tmp_path / "x"), "--codec", "pq", "--m", "7"])


def test_search_finds_what_exact_search_finds_in_every_representation(work):
    ids, x = _vectors(work)
    queries = x[[5, 77, 300]]
    for codec in ("raw8", "pq8"):
        out = work / f"red-{codec}-tfrecord"
        if not out.exists():
            reduce.main(["--input", str(work / "emb"), "--reducer", str(work / codec), "--output", str(out)])
        corpus = search.Corpus.load(str(out))
        rows, _ = search.find(corpus, queries, 5)
        representation = corpus.representation
        decoded = representation.decode(corpus.stored)
        if representation.dense:  # cosine of what is stored
            scores = metrics.normalize_rows(representation.query(queries)) @ metrics.normalize_rows(decoded).T
        else:  # asymmetric L2 of the raw query to the decoded codes
            scores = -((queries[:, None, :] - decoded[None]) ** 2).sum(-1)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        assert [[corpus.ids[r] for r in row] for row in rows] == [[corpus.ids[r] for r in row] for row in expected]
        assert [corpus.ids[row[0]] for row in rows] == [ids[5], ids[77], ids[300]]  # each finds itself first


def test_two_stage_search_and_the_command_line(work, tmp_path):
    np.save(tmp_path / "q.npy", _vectors(work)[1][[11, 12]])
    first, fine = work / "red-pq8-parquet", work / "red-raw8-tfrecord"
    for codec, out, fmt in (("pq8", first, "parquet"), ("raw8", fine, "tfrecord")):
        if not out.exists():
            reduce.main(["--input", str(work / "emb"), "--reducer", str(work / codec), "--output", str(out),
                         "--format", fmt])
    result = subprocess.run([sys.executable, "-m", "pipelines.search", "--corpus", str(first), "--query_vectors",
                             str(tmp_path / "q.npy"), "--rescore", str(fine), "--candidates", "50", "--k", "3"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "stored as pq-8 (8 bytes each), re-ranked with raw-64/int8" in lines[0]
    tops = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("query ")]
    ids = _vectors(work)[0]
    assert [t.split()[2] for t in tops] == [ids[11], ids[12]]  # full ids
    assert all("sentence number" in t for t in tops)


def test_search_output_for_programs_and_queries_from_a_file(work, tmp_path, capsys):
    np.save(tmp_path / "q.npy", _vectors(work)[1][[11, 12]])
    corpus = work / "red-raw8-tfrecord"
    if not corpus.exists():
        reduce.main(["--input", str(work / "emb"), "--reducer", str(work / "raw8"), "--output", str(corpus)])
    args = ["--corpus", str(corpus), "--query_vectors", str(tmp_path / "q.npy"), "--k", "3"]
    capsys.readouterr()
    entries = search.main([*args, "--format", "jsonl"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == entries and [e["query_id"] for e in lines] == ["0", "1"]
    hit = lines[0]["hits"][0]
    assert set(hit) == {"rank", "id", "score", "text"} and hit["rank"] == 1 and hit["id"] == _vectors(work)[0][11]
    search.main([*args, "--format", "json"])
    whole = json.loads(capsys.readouterr().out)
    assert whole["results"] == entries and whole["representation"] == "raw-64/int8" and whole["k"] == 3
    (tmp_path / "q.jsonl").write_text('{"id": "q-a", "text": "oil prices"}\n{"text": "bank shares"}\n')
    with pytest.raises(InputError, match="one of the three"):
        search.main(["--corpus", str(corpus), "--queries_file", str(tmp_path / "q.jsonl"), "--query", "x"])
    (tmp_path / "bad.jsonl").write_text('{"id": "q-a", "text": "oil"}\n{"id": 2}\n')
    with pytest.raises(InputError, match="line 2 has no 'text'"):
        search.main(["--corpus", str(corpus), "--queries_file", str(tmp_path / "bad.jsonl")])
