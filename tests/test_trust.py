"""Nothing read back from disk is trusted: listings, locations and programs are checked before use.

A job deletes only files inside its output that it can prove it wrote; it never writes where it reads;
artifacts are named by digest and loaded as data, so a replaced or planted file fails clearly or is ignored.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import tensorflow as tf

from core import codecs, layouts, manifests, outputs
from core.errors import ArtifactError, InputError
from core.outputs import OutputDir
from pipelines import embed, evaluate, fit_codec, fit_pca, reduce, run, search
from tests.fixtures import correlated_vectors, reseal, write_embedding_dataset, write_linear_reducer

DIM = 32


@pytest.fixture
def data(tmp_path) -> Path:
    write_embedding_dataset(tmp_path / "emb", correlated_vectors(300, DIM, seed=1), num_shards=2)
    return tmp_path / "emb"


@pytest.fixture
def pca(tmp_path) -> str:
    return write_linear_reducer(tmp_path / "pca", np.zeros(DIM), np.eye(DIM)[:, :8])


def _reduce(data, pca, out, *extra) -> dict:
    return reduce.main(["--input", str(data), "--reducer", pca, "--output", str(out), *extra])


def _forge(directory: Path, listed: list[str], fingerprint: str = "someone-else") -> None:
    """A finished-looking manifest whose file list names ``listed`` (digests made to add up)."""
    entries = [{"path": p, "bytes": 1, "sha256": "0" * 64} for p in listed]
    manifest = {"kind": "reduced", "format_version": manifests.FORMAT_VERSION, "fingerprint": fingerprint,
                "files": entries, "digest": manifests.content_digest("reduced", entries)}
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("entry", ["../../victim.txt", "/tmp/victim-abs.txt", "data-00000-of-00001.tfrecord/../..",
                                   "notes.txt"])
def test_a_manifest_listing_foreign_paths_is_corrupt_and_nothing_is_deleted(tmp_path, data, pca, entry):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "data-00000-of-00001.tfrecord").write_text("listed, and ours by name")
    _forge(out, ["data-00000-of-00001.tfrecord", entry])
    with pytest.raises(ArtifactError, match="is corrupt.*nothing was deleted"):
        _reduce(data, pca, out, "--overwrite")
    assert victim.read_text() == "precious" and (out / "notes.txt").read_text() == "mine"
    assert (out / "data-00000-of-00001.tfrecord").exists()


@pytest.mark.parametrize("link", ["deadletter", "data-00000-of-00001.tfrecord", "head"])
def test_an_output_holding_symbolic_links_is_refused_and_nothing_is_written_through_them(tmp_path, data, pca, link):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "deadletter-00000-of-00001.jsonl").write_text("the user's file")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere if link != "data-00000-of-00001.tfrecord" else elsewhere / "deadletter-00000-of-00001.jsonl",
               out / link)
    _forge(out, ["deadletter/deadletter-00000-of-00001.jsonl"])
    with pytest.raises(ArtifactError, match="holds symbolic links"):
        _reduce(data, pca, out, "--overwrite")
    assert (elsewhere / "deadletter-00000-of-00001.jsonl").read_text() == "the user's file"


def test_a_listing_that_names_a_directory_deletes_nothing(tmp_path, data, pca):
    out = tmp_path / "out"
    (out / "data-00001-of-00002.tfrecord").mkdir(parents=True)
    (out / "data-00001-of-00002.tfrecord" / "mine.txt").write_text("mine")
    _forge(out, ["data-00001-of-00002.tfrecord"])
    with pytest.raises(ArtifactError, match="is a directory"):
        _reduce(data, pca, out, "--overwrite")
    assert (out / "data-00001-of-00002.tfrecord" / "mine.txt").read_text() == "mine"


def test_a_pending_record_of_another_kind_is_refused(tmp_path, data, pca):
    out = tmp_path / "pics"
    (out / "train" / "deep").mkdir(parents=True)
    for name in ("holiday.png", "frontier.png", "train/deep/thesis.tex", "train/history.csv"):
        (out / name).write_text("mine")
    for kind in ("autoencoder", "report"):
        (out / layouts.PENDING).write_text(json.dumps({"kind": kind, "fingerprint": "x", "foreign": []}))
        with pytest.raises(ArtifactError, match=f"interrupted '{kind}' run"):
            _reduce(data, pca, out)
    assert all((out / name).read_text() == "mine" for name in ("holiday.png", "frontier.png",
                                                               "train/deep/thesis.tex", "train/history.csv"))


def test_a_state_file_naming_paths_outside_the_workdir_is_corrupt(tmp_path):
    from core.plan import RunState

    work = tmp_path / "w"
    work.mkdir()
    for increments in ([{"name": "0001", "embeddings": "../victim", "reduced": "increments/0001/reduced"}],
                       [{"name": "../x", "embeddings": "increments/../x/embeddings"}],
                       [{"name": "0001", "embeddings": "increments/0001/embeddings", "drift_file": "/etc/passwd"}]):
        (work / "run_manifest.json").write_text(json.dumps({"steps": {}, "increments": increments}))
        with pytest.raises(ArtifactError, match="run_manifest.json is corrupt"):
            RunState(str(work))


def test_input_files_reached_through_a_link_into_the_output_are_refused(tmp_path):
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "a.txt").write_text("one sentence\n")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "corp" / "link")
    (tmp_path / "out" / "x.txt").write_text("not yet ours\n")
    with pytest.raises(InputError, match="resolves to inside it"):
        embed.main(["--input", str(tmp_path / "corp" / "**"), "--output", str(tmp_path / "out"),
                    "--encoder", "tfhub:unused"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.txt"]


def test_user_files_in_the_directories_tf_transform_writes_survive_a_refit(tmp_path, data):
    out = tmp_path / "pca"
    fit_pca.main(["--input", str(data), "--output", str(out), "--output_dim", "4"])
    user = [out / "transform_fn" / "README.user", out / "transform_tmp" / "notes.txt", out / "head" / "notes.tmp"]
    for path in user:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    fit_pca.main(["--input", str(data), "--output", str(out), "--output_dim", "6", "--overwrite"])
    assert all(path.read_text() == "mine" for path in user)
    assert json.loads((out / "manifest.json").read_text())["output_dim"] == 6


@pytest.mark.parametrize("record", [{"kind": "reduced", "fingerprint": "x", "owned": ["*"], "foreign": []},
                                    {"kind": "reduced", "fingerprint": "x", "foreign": ["../x"]},
                                    {"kind": "no-such-kind", "fingerprint": "x", "foreign": []}, ["*"]])
def test_a_planted_pending_record_deletes_nothing_but_its_kinds_own_files(tmp_path, data, pca, record):
    out = tmp_path / "out"
    (out / "deadletter").mkdir(parents=True)
    user = [out / "thesis.txt", out / "notes.tmp", out / "beam-temp-notes.txt", out / "deadletter" / "notes.tmp"]
    for path in user:
        path.write_text("mine")
    (out / layouts.PENDING).write_text(json.dumps(record))
    if isinstance(record, dict) and record["kind"] == "reduced" and not record["foreign"]:
        manifest = _reduce(data, pca, out)  # "owned" is ignored: the names come from code
        assert not {str(p.relative_to(out)) for p in user} & {e["path"] for e in manifest["files"]}
    else:
        with pytest.raises(ArtifactError, match="damaged; nothing was deleted"):
            _reduce(data, pca, out)
    assert all(path.read_text() == "mine" for path in user)


def test_user_files_with_temporary_looking_names_survive_every_run_and_overwrite(tmp_path, data, pca):
    out = tmp_path / "out"
    _reduce(data, pca, out)
    user = [out / "notes.tmp", out / "beam-temp-notes.txt", out / "deadletter" / "notes.tmp",
            out / "deadletter" / "beam-temp-x" / "y.txt", out / "data-notes.txt"]
    for path in user:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    for extra in ([], ["--drop_text", "--overwrite"], ["--overwrite"]):
        manifest = _reduce(data, pca, out, *extra)
        assert not {str(p.relative_to(out)) for p in user} & {e["path"] for e in manifest["files"]}
        assert manifest["shards"] and all(s["path"].startswith("data-0") for s in manifest["shards"])
    assert all(path.read_text() == "mine" for path in user)


def test_files_that_appear_during_a_run_are_not_adopted(tmp_path):
    out = tmp_path / "out"
    claim = OutputDir(str(out), "pca", "fp").claim()
    (out / "head").mkdir()
    (out / "head" / "saved_model.pb").write_bytes(b"ours")
    (out / "reducer.npz").write_bytes(b"ours")
    for name in ("notes.txt", "head/notes.tmp", "transform_fn/readme.md"):  # dropped in by someone meanwhile
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("theirs")
    manifest = claim.commit({})
    assert [e["path"] for e in manifest["files"]] == ["head/saved_model.pb", "reducer.npz"]
    outputs.remove_output(str(out))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["head/notes.tmp", "notes.txt", "transform_fn/readme.md"]


def test_output_equal_to_or_inside_the_input_is_refused_before_any_work(tmp_path, data, pca):
    before = sorted((p.name, p.stat().st_size) for p in data.iterdir())
    for output in (data, data / "sub"):
        with pytest.raises(InputError, match="overlaps the input") as e:
            _reduce(data, pca, output, "--overwrite")
        assert "--overwrite" not in str(e.value)
        with pytest.raises(InputError, match="overlaps the input"):
            fit_pca.main(["--input", str(data), "--output", str(output), "--output_dim", "4", "--overwrite"])
        with pytest.raises(InputError, match="overlaps the input"):
            evaluate.main(["--embeddings", str(data), "--reducer", pca, "--output", str(output), "--no-download"])
    with pytest.raises(InputError, match="overlaps the input"):  # the output holds the input
        _reduce(data, pca, data.parent, "--overwrite")
    with pytest.raises(InputError, match="overlaps the input"):  # writing into the artifact it reads
        _reduce(data, pca, Path(pca) / "r")
    assert sorted((p.name, p.stat().st_size) for p in data.iterdir()) == before


@pytest.mark.parametrize("pattern, output", [("w/**", "w/emb"), ("w/*", "w"), ("w/**/*.tfrecord", "w/emb"),
                                             ("w/e*/*", "w/emb")])
def test_an_input_glob_that_could_match_the_output_is_refused(tmp_path, monkeypatch, pattern, output):
    monkeypatch.chdir(tmp_path)
    Path("w").mkdir()
    Path("w/corpus.txt").write_text("one sentence\nanother sentence\n")
    with pytest.raises(InputError, match="overlaps the input"):
        embed.main(["--input", pattern, "--output", output, "--encoder", "tfhub:unused"])
    assert sorted(str(p) for p in Path("w").rglob("*")) == ["w/corpus.txt"]  # not even a lock was made
    with pytest.raises(InputError, match="overlaps the input"):
        run.main(["--input", pattern, "--workdir", output])


def test_an_input_glob_beside_the_output_is_fine(tmp_path):
    from core.containment import check_separate

    check_separate(str(tmp_path / "w" / "emb"), [str(tmp_path / "w" / "*.txt"), str(tmp_path / "other" / "**")],
                   layouts.probes())


@pytest.fixture
def coded(tmp_path, data) -> tuple[Path, Path]:
    """A PQ codec and the corpus reduced with it."""
    codec = tmp_path / "work" / "pq"
    fit_codec.main(["--input", str(data), "--output", str(codec), "--codec", "pq", "--m", "4", "--no-opq"])
    reduced = tmp_path / "work" / "codes"
    reduce.main(["--input", str(data), "--reducer", str(codec), "--output", str(reduced)])
    return codec, reduced


def _search(corpus: Path) -> list:
    queries = correlated_vectors(3, DIM, seed=7)
    np.save(corpus.parent / "q.npy", queries)
    return [[hit["id"] for hit in entry["hits"]] for entry in search.main(
        ["--corpus", str(corpus), "--query_vectors", str(corpus.parent / "q.npy")])]


def test_a_corpus_is_searched_only_with_the_codec_it_was_written_with(tmp_path, data, coded, monkeypatch):
    codec, reduced = coded
    expected = _search(reduced)
    shutil.copytree(tmp_path / "work", tmp_path / "moved")
    fit_codec.main(["--input", str(data), "--output", str(codec), "--codec", "pq", "--m", "4", "--no-opq",
                    "--seed", "5", "--overwrite"])  # refitted in place
    with pytest.raises(ArtifactError, match="not the artifact .* was written with"):
        _search(reduced)
    shutil.rmtree(codec)
    with pytest.raises(ArtifactError, match="is gone"):
        _search(reduced)
    monkeypatch.chdir(tmp_path / "moved")  # a moved copy, searched from elsewhere: found beside it
    assert _search(Path("codes")) == expected


def test_a_codec_with_a_nan_rotation_bias_is_refused(coded):
    codec, _ = coded
    inner = faiss.read_index(str(codec / codecs.PQ_INDEX))
    transform = faiss.LinearTransform(DIM, DIM, True)
    faiss.copy_array_to_vector(np.eye(DIM, dtype=np.float32).ravel(), transform.A)
    faiss.copy_array_to_vector(np.full(DIM, np.nan, np.float32), transform.b)
    transform.is_trained = True
    faiss.write_index(faiss.IndexPreTransform(transform, inner), str(codec / codecs.PQ_INDEX))
    reseal(codec)
    with pytest.raises(ArtifactError, match="without bias"):
        codecs.load(str(codec))


def test_a_codec_with_nan_centroids_is_refused(coded):
    codec, _ = coded
    index = faiss.read_index(str(codec / codecs.PQ_INDEX))
    pq = faiss.downcast_index(index).pq
    centroids = faiss.vector_to_array(pq.centroids)
    centroids[7] = np.nan
    faiss.copy_array_to_vector(centroids, pq.centroids)
    faiss.write_index(index, str(codec / codecs.PQ_INDEX))
    with pytest.raises(ArtifactError, match="changed since it was written"):
        codecs.load(str(codec))
    reseal(codec)
    with pytest.raises(ArtifactError, match="NaN or infinite centroids"):
        codecs.load(str(codec))


class _Mischief(tf.Module):
    """A reduction head that also writes a file when called: a program, not data."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32, name="embedding")])
    def serve(self, embedding):
        tf.io.write_file(self.marker, "ran")
        return {"reduced": embedding[:, :8]}


def test_a_swapped_head_program_is_never_run(tmp_path, data, pca):
    marker = str(tmp_path / "it-ran")
    module = _Mischief(marker)
    tf.saved_model.save(module, str(Path(pca) / "head"), signatures={"serving_default": module.serve})
    listed = ["reducer.npz"] + [str(p.relative_to(pca)) for p in (Path(pca) / "head").rglob("*") if p.is_file()]
    reseal(pca, listed=listed)  # even a consistent manifest: the head is never what runs
    reduced = tmp_path / "r"
    manifest = _reduce(data, pca, reduced)
    assert manifest["records"] == 300
    search.main(["--corpus", str(reduced), "--query_vectors", _queries(tmp_path)])
    assert not os.path.exists(marker)


def _queries(tmp_path) -> str:
    np.save(tmp_path / "q.npy", correlated_vectors(2, DIM, seed=3))
    return str(tmp_path / "q.npy")


@pytest.mark.parametrize("vectors, message", [(np.full((1, DIM), np.nan), "NaN, Inf or only zeros"),
                                              (np.zeros((1, DIM)), "NaN, Inf or only zeros"),
                                              (np.zeros((0, DIM)), "no query vectors")])
def test_search_refuses_unusable_queries(tmp_path, data, vectors, message):
    np.save(tmp_path / "bad.npy", vectors.astype(np.float32))
    with pytest.raises(InputError, match=message):
        search.main(["--corpus", str(data), "--query_vectors", str(tmp_path / "bad.npy")])
    with pytest.raises(InputError, match="empty"):
        search.main(["--corpus", str(data), "--query", " \u200b "])
