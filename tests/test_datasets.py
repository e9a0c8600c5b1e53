"""Data loaders: STS benchmark (real files when present), download cache, golden sets."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from core.evaluation import golden, sts


def test_sts_loader_on_real_files(shared_data):
    splits = sts.read_sts_dir(shared_data / "stsbenchmark")
    assert {k: len(v) for k, v in splits.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    assert splits["test"][0] == ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    scores = [s for pairs in splits.values() for _, _, s in pairs]
    assert min(scores) == 0.0 and max(scores) == 5.0
    # The parent directory works too; train+dev sentences are unique and non-empty.
    assert sts.read_sts_dir(shared_data)["dev"] == splits["dev"]
    sentences = sts.sts_sentences(splits)
    assert len(sentences) == len(set(sentences)) > 10_000


def _write_sts(directory: Path, rows: dict[str, list[str]]) -> None:
    directory.mkdir(parents=True)
    for name in sts.STS_SPLITS:
        (directory / f"sts-{name}.csv").write_text("".join(r + "\n" for r in rows[name]), encoding="utf-8")


ROW = "main-news\tMSRpar\t2012\t0001\t{score}\tThe \"big\" cat sat.\tA cat sat.\tlicence-field"


def test_sts_parser_keeps_quotes_and_rejects_bad_rows(tmp_path):
    _write_sts(tmp_path / "sts", {n: [ROW.format(score="3.2")] for n in sts.STS_SPLITS})
    splits = sts.read_sts_dir(tmp_path / "sts", verify=False)
    assert splits["train"] == [('The "big" cat sat.', "A cat sat.", 3.2)]
    with pytest.raises(sts.ChecksumError, match="not the official"):  # the pinned digests are checked by default
        sts.read_sts_dir(tmp_path / "sts")
    with pytest.raises(ValueError, match=r"line|:1: score"):
        sts.parse_sts_lines([ROW.format(score="7")], "x.csv")
    with pytest.raises(ValueError, match="fields"):
        sts.parse_sts_lines(["a\tb\tc"], "x.csv")


def test_sts_missing_everywhere_raises_with_instructions(tmp_path):
    with pytest.raises(sts.DataUnavailableError, match=r"--sts[_-]dir"):
        sts.load_sts(cache_dir=tmp_path, download_missing=False)
    with pytest.raises(sts.DataUnavailableError, match="download .* failed"):
        sts.load_sts(cache_dir=tmp_path, url=(tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(sts.DataUnavailableError, match="not found"):
        sts.load_sts(tmp_path / "empty")


def _tar_of(directory: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(directory, arcname="stsbenchmark")
    return out


def test_download_once_then_offline_and_checked_against_the_pinned_digests(shared_data, tmp_path):
    (tmp_path / "served").mkdir()
    official = _tar_of(shared_data / "stsbenchmark", tmp_path / "served" / sts.ARCHIVE)
    cache = tmp_path / "cache"
    splits = sts.load_sts(cache_dir=cache, url=official.as_uri())  # "downloaded" over a file:// URL
    assert len(splits["test"]) == 1379 and (cache / sts.ARCHIVE).exists()
    official.unlink()  # the second call is offline, from the cache
    assert sts.load_sts(cache_dir=cache, download_missing=False) == splits

    rows = {n: [ROW.format(score="1")] for n in sts.STS_SPLITS}  # a look-alike: right layout, wrong content
    _write_sts(tmp_path / "fake", rows)
    fake = _tar_of(tmp_path / "fake", tmp_path / "served" / sts.ARCHIVE)
    other = tmp_path / "cache2"
    with pytest.raises(sts.ChecksumError, match="not the official"):
        sts.load_sts(cache_dir=other, url=fake.as_uri())
    assert not (other / sts.ARCHIVE).exists()  # a bad archive is not kept


def test_golden_set_format(tmp_path):
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": "d1", "title": "Revenue", "text": "Sales rose 5%.", "metadata": {"table_uid": "t1"}},
            {"_id": "d2", "text": "Costs fell."}, {"_id": "d3", "text": "Dividend unchanged."}]
    queries = [{"_id": "q1", "text": "How did sales change?"}, {"_id": "q2", "text": "Unjudged query"},
               {"_id": "q3", "text": "Only judged irrelevant"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq3\td2\t0\n")
    gs = golden.load_golden_set(tmp_path)
    assert gs.doc_ids == ["d1", "d2", "d3"]
    assert gs.doc_texts[0] == "Revenue Sales rose 5%."
    assert gs.doc_meta[0] == {"table_uid": "t1"} and gs.doc_meta[1] == {}
    assert gs.query_ids == ["q1"] and gs.qrels == {"q1": {"d1": 2, "d3": 1}}
    # qrels.tsv at top level is accepted; unknown ids are errors.
    (tmp_path / "qrels" / "test.tsv").unlink()
    (tmp_path / "qrels.tsv").write_text("q1\td9\t1\n")
    with pytest.raises(ValueError, match="d9"):
        golden.load_golden_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="queries.jsonl|qrels"):
        golden.load_golden_set(tmp_path / "qrels")


def test_golden_set_tatqa(shared_data):
    gs = golden.load_golden_set(shared_data / "tatqa" / "derived_beir_paragraph_retrieval", "test")
    assert len(gs.doc_ids) == 2635 and len(gs.query_ids) == 935
    assert all(m.get("table_uid") for m in gs.query_meta)

