"""``run``, ``evaluate`` and ``train`` on a work directory that is not a local path.

``ram://`` (tests/ramfs.py) stands in for gs:// or s3://: Beam and tf.io.gfile
reach it, plain ``open``/``os.path``/``shutil`` do not. A leak would either fail
or write into the current directory under a literal ``ram:`` folder.
"""
from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

import tests.ramfs  # noqa: F401 - registers ram:// with Beam
from core import files
from core.evaluation import golden, sts
from pipelines import evaluate, run, sample_corpus
from tests.fixtures import read_records
from tests.hub_models import save_text_encoder

gfile = tf.io.gfile


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty current directory, so that a leaked local ``ram:`` folder lands there."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not os.path.exists("ram:"), "a ram:// path was written with local file operations"


def test_file_helpers_on_ram(tmp_path, in_tmp_cwd):
    root = f"ram://{tmp_path.name}/helpers"
    files.makedirs(files.join(root, "a"))
    files.makedirs(files.join(root, "a"))  # exists already: fine
    files.write_text(files.join(root, "a", "b", "x.json"), "{}")
    assert files.read_text(files.join(root, "a", "b", "x.json")) == "{}"
    assert files.list_files(files.join(root, "a", "b", "*")) == [files.join(root, "a", "b", "x.json")]
    assert files.list_tree(files.join(root, "a")) == [files.join(root, "a", "b", "x.json")]
    files.delete([files.join(root, "a", "b", "x.json")])
    files.delete([files.join(root, "a", "b", "x.json")])  # gone already: fine
    assert not files.exists(files.join(root, "a", "b", "x.json"))
    assert files.absolute("gs://bucket/x") == "gs://bucket/x"
    assert files.absolute("x") == os.path.join(str(tmp_path), "x")


def _copy_tree_to_ram(local, url: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            files.write_text(f"{url}/{path.relative_to(local).as_posix()}", path.read_text(encoding="utf-8"))


def test_sts_and_golden_set_read_from_ram(tmp_path, shared_data, in_tmp_cwd):
    root = f"ram://{tmp_path.name}/data"
    _copy_tree_to_ram(shared_data / "stsbenchmark", f"{root}/stsbenchmark")
    golden_dir = shared_data / "tatqa" / "derived_beir_paragraph_retrieval"
    _copy_tree_to_ram(golden_dir, f"{root}/golden")
    assert sts.read_sts_dir(root) == sts.read_sts_dir(shared_data / "stsbenchmark")  # finds the subfolder
    assert golden.load_golden_set(f"{root}/golden", "dev") == golden.load_golden_set(golden_dir, "dev")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl not found"):
        golden.load_golden_set(f"{root}/stsbenchmark")


def test_run_and_evaluate_with_a_ram_workdir(tmp_path, shared_data, in_tmp_cwd):
    sentences = sample_corpus.generate(340, seed=3)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences[:300]) + "\n")
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    sts = str(shared_data / "stsbenchmark")
    work = f"ram://{tmp_path.name}/work"
    argv = ["--input", str(corpus), "--workdir", work, "--encoder", f"tfhub:{hub}", "--epochs", "2",
            "--queries", "30", "--sts_dir", sts, "--train.batch_size=32"]
    first = run.main(argv)
    assert first["steps_run"] == ["embed", "fit-pca", "train", "fit-raw-int8", "evaluate", "reduce"]

    for name in ("run_manifest.json", "report/report.json", "report/report.md", "report/sts_scatter.png",
                 "report/frontier.png", "pca/manifest.json", "autoencoder/manifest.json", "autoencoder/model.keras",
                 "autoencoder/head/saved_model.pb", "autoencoder/train/history.csv", "reduced/manifest.json"):
        assert gfile.exists(f"{work}/{name}"), name
    report = json.loads(gfile.GFile(f"{work}/report/report.json").read())
    assert report["best_reducer_path"] == first["reducer"] and first["reducer"].startswith(work)
    reduced = read_records(f"{work}/reduced")
    assert len(reduced) == 300 and reduced[0]["embedding"].shape == (128,)
    trained = json.loads(gfile.GFile(f"{work}/autoencoder/manifest.json").read())
    assert trained["source"]["directory"] == f"{work}/embeddings"  # a URL is not made "absolute" locally

    assert run.main(argv)["steps_run"] == []  # nothing changed: every step skipped
    assert run.main(argv + ["--format", "parquet"])["steps_run"] == ["reduce"]
    assert gfile.glob(f"{work}/reduced/*.parquet")

    corpus.write_text("\n".join(sentences) + "\n")  # the corpus grew by 40 sentences
    grown = run.main(argv + ["--format", "parquet", "--incremental"])
    assert grown["steps_run"] == ["embed-0001", "reduce-0001"] and grown["new_vectors"] == 40
    assert gfile.exists(f"{work}/increments/0001/drift.json")
    assert run.main(argv + ["--format", "parquet", "--incremental"])["new_vectors"] == 0
    assert not gfile.exists(f"{work}/increments/0002")  # the empty increment was deleted

    out = f"{work}/evaluate-pca"  # `shrink evaluate` alone, everything on ram://, STS files too
    _copy_tree_to_ram(shared_data / "stsbenchmark", f"{work}/sts")
    alone = evaluate.main(["--embeddings", f"{work}/embeddings", "--reducer", f"{work}/pca", "--output", out,
                          "--queries", "20", "--sts_dir", f"{work}/sts"])
    assert alone["figures"] == ["sts_scatter.png", "frontier.png"]
    for name in ("report.json", "report.md", *alone["figures"]):
        assert gfile.stat(f"{out}/{name}").length > 0, name
    assert json.loads(gfile.GFile(f"{out}/report.json").read())["sts"]["pairs"] == 1379
