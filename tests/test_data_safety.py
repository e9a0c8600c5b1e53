"""Jobs tried as a hostile user would: they never delete what they did not write, never read less than
was written, and never finish "successfully" on damaged input."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import outputs
from core.errors import ArtifactError, DataError, InputError
from pipelines import embed, fit_pca, reduce, run, sample_corpus
from tests.fixtures import correlated_vectors, read_records, write_embedding_dataset, write_linear_reducer
from tests.hub_models import save_text_encoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> str:
    return save_text_encoder(str(tmp_path_factory.mktemp("hub") / "enc"), 512)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "in" / "corpus.txt"
    path.parent.mkdir()
    sample_corpus.write(str(path), 60, seed=5)
    return path


def test_embed_refuses_a_directory_holding_user_files_and_deletes_nothing(tmp_path, hub, corpus):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(ArtifactError, match="thesis.txt"):
        embed.main(["--input", str(corpus), "--output", str(out), "--encoder", f"tfhub:{hub}", "--overwrite"])
    assert (out / "thesis.txt").read_text() == "years of work"
    # the output is the input's own folder: refused before any work, the input intact, nothing marked complete
    with pytest.raises(InputError, match="overlaps the input .*corpus.txt"):
        embed.main(["--input", str(corpus), "--output", str(corpus.parent), "--encoder", f"tfhub:{hub}"])
    assert len(corpus.read_text().splitlines()) == 60 and not (corpus.parent / "manifest.json").exists()


def test_overwrite_leaves_no_stale_dead_letters(tmp_path, hub, corpus):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8\nfine sentence here\n")
    out = tmp_path / "out"
    first = embed.main(["--input", str(bad), "--output", str(out), "--encoder", f"tfhub:{hub}"])
    assert first["counts"]["dead_letter"] == 1 and any(f["path"].startswith("deadletter/") for f in first["files"])
    second = embed.main(["--input", str(corpus), "--output", str(out), "--encoder", f"tfhub:{hub}", "--overwrite"])
    dead = [f["path"] for f in second["files"] if f["path"].startswith("deadletter/")]
    assert second["counts"]["dead_letter"] == 0
    assert all((out / f).read_text() == "" for f in dead)  # the new run's (empty) dead-letter file only
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        sorted([f["path"] for f in second["files"]] + ["manifest.json"])


def test_a_second_run_into_a_claimed_output_or_workdir_fails_fast(tmp_path, hub, corpus):
    out = tmp_path / "out"
    holder = outputs.OutputDir(str(out), "embeddings", "other").claim()
    with pytest.raises(ArtifactError, match="in use by another run"):
        embed.main(["--input", str(corpus), "--output", str(out), "--encoder", f"tfhub:{hub}"])
    holder.release()
    work = tmp_path / "work"
    with outputs.locked(str(work)):
        with pytest.raises(ArtifactError, match="in use by another run"):
            run.main(["--input", str(corpus), "--workdir", str(work), "--encoder", f"tfhub:{hub}"])


@pytest.fixture
def three_shards(tmp_path) -> Path:
    data = tmp_path / "emb"
    write_embedding_dataset(data, correlated_vectors(300, 64, seed=2), num_shards=3)
    return data


def test_a_missing_shard_fails_every_reader(three_shards, tmp_path):
    from pipelines import train as task

    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(64), np.eye(64)[:, :8])
    (three_shards / "data-00001-of-00003.tfrecord").unlink()
    with pytest.raises(DataError, match="missing"):
        reduce.main(["--input", str(three_shards), "--reducer", reducer, "--output", str(tmp_path / "r")])
    with pytest.raises(DataError, match="missing"):
        fit_pca.main(["--input", str(three_shards), "--output", str(tmp_path / "p"), "--output_dim", "4"])
    with pytest.raises(DataError, match="missing"):
        task.main(["--input", str(three_shards), "--output", str(tmp_path / "a"), "--epochs", "1"])


def test_stray_shards_are_never_read(three_shards, tmp_path):
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(64), np.eye(64)[:, :8])
    write_embedding_dataset(tmp_path / "other", correlated_vectors(2000, 64, seed=3), num_shards=1)
    os.replace(tmp_path / "other" / "data-00000-of-00001.tfrecord", three_shards / "data-x.tfrecord")
    manifest = reduce.main(["--input", str(three_shards), "--reducer", reducer, "--output", str(tmp_path / "r")])
    assert manifest["counts"]["read"] == manifest["records"] == 300
    pca = fit_pca.main(["--input", str(three_shards), "--output", str(tmp_path / "p"), "--output_dim", "4"])
    assert pca["rows_analyzed"] == 300


def test_a_damaged_shard_fails_with_one_line_naming_it(three_shards, tmp_path):
    shard = three_shards / "data-00002-of-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the record checksum can tell
    shard.write_bytes(bytes(data))
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(64), np.eye(64)[:, :8])
    result = subprocess.run([sys.executable, "-m", "pipelines.reduce", "--input", str(three_shards), "--reducer",
                             reducer, "--output", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "DataError" in errors[0] and "data-00002-of-00003.tfrecord" in errors[0] and len(errors[0]) < 400
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_datasets_are_found_from_any_working_directory(tmp_path, hub, corpus, monkeypatch):
    """Manifests hold paths relative to their dataset: --previous works from another directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    embed.main(["--input", str(corpus), "--output", "day1", "--encoder", f"tfhub:{hub}"])
    grown = tmp_path / "grown.txt"
    grown.write_text(corpus.read_text() + "A brand new sentence about markets.\n")
    monkeypatch.chdir(tmp_path / "b")
    second = embed.main(["--input", str(grown), "--output", "day2", "--previous", "../a/day1",
                         "--encoder", f"tfhub:{hub}"])
    assert (second["counts"]["already_embedded"], second["counts"]["embedded"]) == (60, 1)


def test_truncated_input_fails_the_job_unless_allowed(tmp_path, hub, corpus):
    data = gzip.compress(corpus.read_bytes())
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(data[:len(data) // 2])
    args = ["--input", str(cut), "--output", str(tmp_path / "out"), "--encoder", f"tfhub:{hub}"]
    with pytest.raises(InputError, match="ended early or could not be read"):
        embed.main(args)
    assert not (tmp_path / "out" / "manifest.json").exists()
    manifest = embed.main([*args, "--allow_partial_files"])
    counts = manifest["counts"]
    assert counts["dead_letter_truncated_file"] == 1 and 0 < counts["embedded"] < 60
    texts = {r["text"] for r in read_records(tmp_path / "out")}
    assert texts <= set(corpus.read_text().splitlines())  # the cut line was not embedded


def test_fit_pca_leaves_non_finite_rows_out(tmp_path):
    vectors = correlated_vectors(400, 32, seed=1)
    vectors[5, 0] = np.nan
    vectors[9, 3] = np.inf
    write_embedding_dataset(tmp_path / "emb", vectors, num_shards=2)
    manifest = fit_pca.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "pca"), "--output_dim", "4"])
    assert manifest["rows_analyzed"] == 398 and manifest["rows_non_finite"] == 2
    dead = [json.loads(line) for f in (tmp_path / "pca" / "deadletter").glob("*.jsonl")
            for line in f.read_text().splitlines()]
    assert sorted(d["id"] for d in dead) == ["id-00005", "id-00009"]
    assert np.isfinite(json.loads((tmp_path / "pca" / "manifest.json").read_text())["eigenvalues"]).all()


def test_reduce_checks_its_outputs_and_fails_when_it_wrote_nothing(tmp_path, three_shards):
    # finite weights whose sums overflow float32: every output row holds Inf
    reducer = write_linear_reducer(tmp_path / "pca", np.full(64, -3e38), np.ones((64, 8)))
    with pytest.raises(InputError, match=r"none of the 300 vectors read could be written.*non_finite_output"):
        reduce.main(["--input", str(three_shards), "--reducer", reducer, "--output", str(tmp_path / "r")])
    dead = [json.loads(line) for f in (tmp_path / "r" / "deadletter").glob("*.jsonl")
            for line in f.read_text().splitlines()]
    assert len(dead) == 300 and {d["reason"] for d in dead} == {"non_finite_output"}


@pytest.mark.slow  # separate processes: make test-slow (test_reduce checks re-runs in one process)
def test_reduce_tfrecords_are_byte_identical_across_processes(tmp_path, three_shards):
    reducer = write_linear_reducer(tmp_path / "pca", np.zeros(64), np.linalg.qr(
        np.random.default_rng(0).normal(size=(64, 64)))[0][:, :8])
    for name in ("one", "two"):
        result = subprocess.run([sys.executable, "-m", "pipelines.reduce", "--input", str(three_shards),
                                 "--reducer", reducer, "--output", str(tmp_path / name), "--num_shards", "2",
                                 "--batch_size", "40"],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    for shard in sorted((tmp_path / "one").glob("data-*")):
        assert shard.read_bytes() == (tmp_path / "two" / shard.name).read_bytes()


def test_no_pickle_is_loaded_by_the_shipped_packages():
    """Nothing a user (or another user) can write is ever unpickled: no pickle-family module is imported."""
    import ast

    banned = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for path in [*REPO.glob("pipelines/**/*.py"), *REPO.glob("transforms/**/*.py"), *REPO.glob("trainer/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & banned, f"{path} imports {names}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path
