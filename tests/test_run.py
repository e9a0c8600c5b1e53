"""``shrink run`` end to end on a few hundred sentences, and step skipping on re-runs."""
from __future__ import annotations

import json

import pytest

from pipelines import records, run, sample_corpus
from tests.hub_models import save_text_encoder


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


def test_run_end_to_end_then_skip_and_redo(tmp_path, corpus, shared_data):
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    golden = _golden_set(tmp_path / "golden", sample_corpus.generate(40, seed=9))
    work = tmp_path / "work"
    argv = ["--input", str(corpus), "--workdir", str(work), "--encoder", f"tfhub:{hub}", "--epochs", "2",
            "--queries", "50", "--sts_dir", str(shared_data / "stsbenchmark"), "--golden_set", str(golden),
            "--train_arg=--batch_size=32"]
    first = run.run(argv)
    assert first["steps_run"] == ["embed", "fit-pca", "train", "evaluate", "reduce"]

    report = json.loads((work / "report" / "report.json").read_text())
    assert not report["skipped"], report["skipped"]
    for section in ("sts", "corpus_retrieval", "golden_set", "cost"):
        assert set(report[section]["representations"]) >= {"pca-128", "autoencoder-128"}
    assert report["best_reducer"] in ("pca-128", "autoencoder-128")
    assert (work / "report" / "sts_scatter.png").stat().st_size > 0
    md = (work / "report" / "report.md").read_text()
    for title in ("STS benchmark", "Retrieval fidelity", "Labelled retrieval", "Cost"):
        assert title in md
    reduced = records.read_examples(str(work / "reduced" / "data-*"))
    assert len(reduced) == 400 and reduced[0]["embedding"].shape == (128,)

    assert run.run(argv)["steps_run"] == []  # nothing changed: every step skipped
    again = run.run(argv + ["--format", "parquet"])  # only the last step's parameters changed
    assert again["steps_run"] == ["reduce"]
