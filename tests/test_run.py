"""``shrink run`` end to end on a few hundred sentences (on a local and a ``ram://`` work directory), and step
skipping on re-runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core import files
from core.errors import ArtifactError, InputError
from pipelines import evaluate, export, reduce, run, sample_corpus
from tests.fixtures import read_records, write_linear_reducer
from tests.hub_models import save_text_encoder
from tests.ramfs import copy_tree_to_ram  # registers ram:// with Beam

gfile = tf.io.gfile


def _golden_set(directory, sentences):
    """A tiny BEIR-layout golden set: each query is a document's sentence with a prefix."""
    directory.mkdir()
    docs = [{"_id": f"d{i}", "text": s, "metadata": {"table_uid": f"r{i % 3}"}} for i, s in enumerate(sentences)]
    queries = [{"_id": f"q{i}", "text": "News: " + s, "metadata": {"table_uid": f"r{i % 3}"}}
               for i, s in enumerate(sentences[:10])]
    (directory / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (directory / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (directory / "qrels").mkdir()
    (directory / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    return directory


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    sample_corpus.write(str(path), 400, seed=3)
    return path


def test_run_end_to_end_on_a_url_workdir_then_skip_redo_and_grow(tmp_path, shared_data, in_tmp_cwd):
    """The whole flow with its work directory on ``ram://`` (gs:// or s3:// for Beam and tf.io.gfile)."""
    sentences = sample_corpus.generate(440, seed=3)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences[:400]) + "\n")
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    golden = _golden_set(tmp_path / "golden", sample_corpus.generate(40, seed=9))
    work = f"ram://{tmp_path.name}/work"
    argv = ["--input", str(corpus), "--workdir", work, "--encoder", f"tfhub:{hub}", "--epochs", "2",
            "--queries", "50", "--sts_dir", str(shared_data / "stsbenchmark"), "--golden_set", str(golden),
            "--train.batch_size=32"]
    first = run.main(argv)
    assert first["steps_run"] == ["embed", "fit-pca", "train", "fit-raw-int8", "evaluate", "reduce"]

    for name in ("run_manifest.json", "report/report.md", "report/sts_scatter.png", "report/frontier.png",
                 "pca/manifest.json", "autoencoder/model.keras", "autoencoder/head/saved_model.pb",
                 "autoencoder/train/history.csv", "reduced/manifest.json"):
        assert gfile.stat(f"{work}/{name}").length > 0, name
    report = _json(f"{work}/report/report.json")
    assert not report["skipped"], report["skipped"]
    expected = {"raw", "raw/float16", "pca-128", "pca-128/float16", "autoencoder-128", "raw-512/int8"}
    for section in ("sts", "golden_set"):
        assert set(report[section]["representations"]) >= expected
    rows = {r["name"]: r for r in report["frontier"]["rows"]}
    assert set(rows) >= expected and rows["raw"]["recall@10"] == 1.0 and rows["raw-512/int8"]["bytes_per_vector"] == 512
    assert report["best_reducer"] in ("pca-128", "autoencoder-128") and report["chosen"] == report["best_reducer"]
    assert report["best_reducer_path"] == first["reducer"] and first["reducer"].startswith(work)
    md = gfile.GFile(f"{work}/report/report.md").read()
    for title in ("STS benchmark", "Quality per stored byte", "Labelled retrieval"):
        assert title in md
    reduced = read_records(f"{work}/reduced")
    assert len(reduced) == 400 and reduced[0]["embedding"].shape == (128,)
    trained = _json(f"{work}/autoencoder/manifest.json")
    assert trained["source"]["directory"] == f"{work}/embeddings"  # a URL is not made "absolute" locally

    assert run.main(argv)["steps_run"] == []  # nothing changed: every step skipped
    again = run.main(argv + ["--format", "parquet"])  # only the last step's parameters changed
    assert again["steps_run"] == ["reduce"] and gfile.glob(f"{work}/reduced/*.parquet")

    questions = tmp_path / "questions.txt"
    questions.write_text("".join(f"What did {s.split()[0]} report?\n" for s in sample_corpus.generate(30, seed=4)))
    aware = argv + ["--format", "parquet", "--query_sample", str(questions), "--query_share", "0.25"]
    # the queries are embedded and PCA refitted with them; what depends on PCA is redone
    assert run.main(aware)["steps_run"][:3] == ["embed-queries", "fit-pca", "evaluate"]
    pca, queries = _json(f"{work}/pca/manifest.json"), _json(f"{work}/query_embeddings/manifest.json")
    assert pca["query_input"][0] == queries["digest"] and pca["query_share"] == 0.25
    assert pca["rows_analyzed"] > 400
    assert run.main(aware)["steps_run"] == []

    mine = [f"{work}/{d}/my-notes.txt" for d in ("embeddings", "pca", "autoencoder", "reduced")]
    for path in mine:
        files.write_text(path, "not the tool's")
    forced = run.main(aware + ["--force"])
    assert {"embed", "fit-pca", "train", "fit-raw-int8", "evaluate", "reduce"} <= set(forced["steps_run"])
    assert all(files.read_text(path) == "not the tool's" for path in mine)

    corpus.write_text("\n".join(sentences) + "\n")  # the corpus grew by 40 sentences
    grown = run.main(aware + ["--incremental"])
    assert grown["steps_run"] == ["embed-0001", "reduce-0001"] and grown["new_vectors"] == 40
    assert gfile.exists(f"{work}/increments/0001/drift.json")
    assert run.main(aware + ["--incremental"])["new_vectors"] == 0
    assert not gfile.exists(f"{work}/increments/0002")  # the empty increment was deleted

    out = f"{work}/evaluate-pca"  # `shrink evaluate` alone, everything on ram://, STS files too
    copy_tree_to_ram(shared_data / "stsbenchmark", f"{work}/sts")
    alone = evaluate.main(["--embeddings", f"{work}/embeddings", "--reducer", f"{work}/pca", "--output", out,
                          "--queries", "20", "--sts_dir", f"{work}/sts"])
    assert alone["figures"] == ["sts_scatter.png", "frontier.png"]
    for name in ("report.json", "report.md", *alone["figures"]):
        assert gfile.stat(f"{out}/{name}").length > 0, name
    assert _json(f"{out}/report.json")["sts"]["pairs"] == 1379


def _json(url: str) -> dict:
    return json.loads(gfile.GFile(url).read())


def test_incremental_runs_extend_the_corpus_and_refit_on_drift(tmp_path):
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    sentences = sample_corpus.generate(360, seed=4)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences[:300]) + "\n")
    work = tmp_path / "work"
    base = ["--input", str(corpus), "--workdir", str(work), "--encoder", f"tfhub:{hub}", "--epochs", "1",
            "--queries", "20", "--no-download", "--reducer", "pca", "--output_dim", "48", "--pca.no_center"]
    first = run.main(base)
    assert first["vectors"] == 300
    pca, ae = (json.loads((work / name / "manifest.json").read_text()) for name in ("pca", "autoencoder"))
    assert pca["output_dim"] == ae["output_dim"] == 48 and pca["center"] is False

    corpus.write_text("\n".join(sentences) + "\n")  # the corpus grew by 60 sentences
    second = run.main(base + ["--incremental"])
    assert second["steps_run"] == ["embed-0001", "reduce-0001"]
    assert second["new_vectors"] == 60 and second["vectors"] == 360
    inc = second["increments"][0]
    assert inc["counts"]["already_embedded"] == 300
    # The test encoder gives every sentence an unrelated random vector, so a PCA-48 fitted on 300 of them keeps
    # their pairs far better than those of 60 new ones: a real drop, reported as drift.
    d = inc["drift"]
    assert d["drop"] == pytest.approx(d["fidelity_reference"] - d["fidelity_new"]) and d["new_rows"] == 60
    assert d["drop"] > 0.2 and d["drift"] is True
    assert json.loads((work / inc["drift_file"]).read_text()) == d
    old = {r["id"] for r in read_records(work / "reduced")}
    new = {r["id"] for r in read_records(work / inc["reduced"])}
    assert len(old) == 300 and len(new) == 60 and not old & new  # nothing twice, nothing missing

    assert run.main(base + ["--incremental"])["new_vectors"] == 0  # nothing new: nothing added

    cats = [f"My cat number {i} sleeps all day on the sofa." for i in range(25)]
    corpus.write_text("\n".join(sentences + cats) + "\n")
    third = run.main(base + ["--incremental", "--refit_on_drift", "--drift_threshold", "-1"])  # always drift
    assert third["increments"][-1]["refit"] and third["vectors"] == 385
    assert {"fit-pca", "train", "fit-raw-int8", "evaluate", "reduce", "reduce-0001", "reduce-0002"} <= \
        set(third["steps_run"])

    # A PCA this run did not write, dropped into its step directory: refused, never used nor replaced.
    shutil.rmtree(work / "pca")
    write_linear_reducer(work / "pca", np.zeros(512), np.eye(512)[:, :64])
    for extra in ([], ["--force"]):
        with pytest.raises(ArtifactError, match="pca holds an output this run did not write"):
            run.main(base + extra)
    with pytest.raises(ArtifactError, match="not the artifact the corpus was written with"):
        run.main(base + ["--incremental"])
    assert json.loads((work / "pca" / "manifest.json").read_text())["output_dim"] == 64


def test_run_rejects_an_unknown_flag_before_doing_any_work(tmp_path):
    with pytest.raises(SystemExit) as e:
        run.main(["--input", "x.txt", "--workdir", str(tmp_path / "w"), "--epoch", "3"])
    assert e.value.code == 2 and not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag", ["--train.batchsize=32", "--pca.centre", "--pca.runner=X", "--embed.input=x"])
def test_run_rejects_a_bad_step_flag_before_doing_any_work(tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        run.main(["--input", "x.txt", "--workdir", str(tmp_path / "w"), flag])
    assert e.value.code == 2 and not (tmp_path / "w").exists()


def test_run_rejects_a_bad_query_share_before_doing_any_work(tmp_path):
    with pytest.raises(InputError, match="query_share"):
        run.main(["--input", "x.txt", "--workdir", str(tmp_path / "w"), "--query_sample", "q.txt",
                 "--query_share", "1.5"])
    assert not (tmp_path / "w").exists()


def test_budget_picks_the_best_representation_that_fits_and_writes_it(tmp_path, corpus):
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    work = tmp_path / "work"
    argv = ["--input", str(corpus), "--workdir", str(work), "--encoder", f"tfhub:{hub}", "--epochs", "1",
            "--queries", "30", "--no-download", "--budget_bytes", "16", "--output_dim", "16",
            "--learned_pq_steps", "20"]
    summary = run.main(argv)
    assert {"fit-pq-16", "fit-learned-pq-16", "fit-pca-int8", "fit-autoencoder-int8"} <= set(summary["steps_run"])
    report = json.loads((work / "report" / "report.json").read_text())
    fits = {r["name"]: r for r in report["frontier"]["rows"] if r["bytes_per_vector"] <= 16}
    assert set(fits) >= {"pq-16", "learned-pq-16", "pca-16/int8", "autoencoder-16/int8"}
    best = max(r["recall@10"] for r in fits.values())
    assert fits[report["chosen"]]["recall@10"] == best and summary["representation"]["name"] == report["chosen"]
    written = read_records(work / "reduced")
    assert len(written) == 400 and summary["representation"]["bytes_per_vector"] <= 16

    learned = json.loads((work / "codecs" / "learned-pq-16" / "manifest.json").read_text())
    assert learned["family"] == "learned-pq" and learned["metric"] == "ip" and learned["fine_tune_steps"] == 20
    # searched by similarity, not as a distance: it finds about what the OPQ codec it started from finds
    assert fits["learned-pq-16"]["recall@10"] >= 0.5 * fits["pq-16"]["recall@10"] > 0
    coded = str(tmp_path / "learned-coded")
    reduce.main(["--input", str(work / "embeddings"), "--reducer", str(work / "codecs" / "learned-pq-16"),
                 "--output", coded])
    with pytest.raises(InputError, match="searched by inner product"):
        export.main(["--input", coded, "--output", str(tmp_path / "export"), "--target", "lancedb", "--table", "t"])


def test_a_budget_nothing_fits_fails_before_any_work(tmp_path, corpus):
    with pytest.raises(InputError, match="smallest is pq-8"):
        run.main(["--input", str(corpus), "--workdir", str(tmp_path / "w"), "--budget_bytes", "4"])
    with pytest.raises(InputError, match="goes with --budget_bytes"):
        run.main(["--input", str(corpus), "--workdir", str(tmp_path / "w"), "--learned_pq_steps", "400"])
    assert not (tmp_path / "w").exists()
