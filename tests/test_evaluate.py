"""evaluate's label-free frontier: the whole corpus or a bounded seeded sample of it."""
from __future__ import annotations

import pytest

from core.dataset import EmbeddingDataset
from core.errors import InputError
from pipelines import evaluate
from tests.fixtures import correlated_vectors, write_embedding_dataset


@pytest.fixture
def dataset(tmp_path):
    write_embedding_dataset(tmp_path / "emb", correlated_vectors(600, 32, seed=4))
    return EmbeddingDataset.open(str(tmp_path / "emb"))


def _frontier(dataset, tmp_path, **flags) -> dict:
    config = evaluate.EvaluateConfig(embeddings=dataset.directory, reducer=(), output=str(tmp_path / "report"),
                                     queries=40, **flags)
    report = {"skipped": {}}
    evaluate.frontier_section(dataset, evaluate.representations(config, dataset.dim, [], []), config, report)
    section = report["frontier"]
    for row in section["rows"]:  # timings differ run to run
        del row["encode_us_per_vector"], row["search_ms_per_query"]
    return section


def test_sample_rows_bounds_the_rows_searched(dataset, tmp_path):
    whole = _frontier(dataset, tmp_path, sample_rows=0)
    assert (whole["corpus_rows"], whole["searched_rows"], whole["sampled"]) == (600, 600, False)
    sampled = _frontier(dataset, tmp_path, sample_rows=200)
    assert (sampled["corpus_rows"], sampled["searched_rows"], sampled["sampled"]) == (600, 200, True)
    assert sampled == _frontier(dataset, tmp_path, sample_rows=200)  # seeded: the same sample again
    assert sampled != _frontier(dataset, tmp_path, sample_rows=200, seed=1)
    assert not _frontier(dataset, tmp_path, sample_rows=600)["sampled"]  # a sample of everything is everything
    for section in (whole, sampled):
        rows = {r["name"]: r for r in section["rows"]}
        assert rows["raw"]["recall@10"] == 1.0 and rows["raw"]["recall@10_ci95"] == 0.0
        assert 0.0 < rows["raw/float16"]["recall@10"] <= 1.0 and section["queries"] == 40


@pytest.mark.parametrize("flag, value", [("--sample_rows", "20"), ("--queries", "0"), ("--rerank", "-1")])
def test_bad_numbers_fail_before_any_work(tmp_path, flag, value):
    with pytest.raises(InputError, match=flag):
        evaluate.main(["--embeddings", str(tmp_path / "missing"), "--reducer", str(tmp_path / "r"),
                       "--output", str(tmp_path / "out"), flag, value])
