"""The benchmarks' financial corpus builder: sentence splitting, filters, dedup (on real data when present)."""
from __future__ import annotations

import pytest

from benchmarks import financial_corpus
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


def test_split_sentences():
    text = ("Standard Oil Co. and BP said they plan a venture. The U.S. Treasury agreed! "
            "Mr. Smith said \"we are here.\" Shares rose 5.5 pct to 12 dlrs.")
    assert financial_corpus.split_sentences(text) == [
        "Standard Oil Co. and BP said they plan a venture.", "The U.S. Treasury agreed!",
        "Mr. Smith said \"we are here.\"", "Shares rose 5.5 pct to 12 dlrs."]


def test_financial_corpus_on_real_data(shared_data, tmp_path):
    sentences, counts = financial_corpus.financial_corpus_with_counts(shared_data)
    assert 150_000 <= len(sentences) <= 260_000
    assert len(set(sentences)) == len(sentences)
    assert sum(c["kept"] for c in counts.values()) == len(sentences)
    assert all(c["kept"] > 1000 for c in counts.values())
    assert counts["reuters21578"]["duplicate"] > 0  # dedup is doing work on real data
    assert all(s == s.strip() and "  " not in s and "\n" not in s for s in sentences)
    kept = set(sentences)
    assert "Shr 34 cts vs 1.19 dlrs" not in kept  # a Reuters earnings-table row is dropped
    assert ("BP North America is a subsidiary of British Petroleum Co Plc <BP>, which also owns a 55 pct "
            "interest in Standard Oil.") in kept  # a body sentence, SGML entities decoded
    assert "STANDARD OIL <SRD> TO FORM FINANCIAL UNIT" in kept  # a title
    assert "BAHIA COCOA REVIEW" not in kept  # under MIN_WORDS words
    out = financial_corpus.write_sentences(sentences[:100], tmp_path / "corpus.txt")
    assert out.read_text(encoding="utf-8").splitlines() == sentences[:100]


def test_financial_corpus_dedup_and_filter(tmp_path, monkeypatch):
    fake = {"a": lambda _: ["Gold  prices rise sharply today", "Gold prices rise sharply today", "Too short"],
            "b": lambda _: ["Cafe\u0301 owners raise prices again", "Caf\u00e9 owners raise prices again"]}
    monkeypatch.setattr(financial_corpus, "FINANCIAL_SOURCES", fake)
    sentences, counts = financial_corpus.financial_corpus_with_counts(tmp_path)
    assert sentences == ["Gold prices rise sharply today", "Caf\u00e9 owners raise prices again"]
    assert counts["a"] == {"read": 3, "too_short": 1, "duplicate": 1, "kept": 1}
    assert counts["b"]["duplicate"] == 1  # NFC makes the two spellings one sentence


def test_variants_keep_each_sources_word_count_and_vocabulary():
    real = [f"company {i} reported revenue of {i * 7} million in quarter {i % 4}" for i in range(50)] + [
        "shares fell", "the board approved a dividend"]
    out = list(financial_corpus.variants(real, 520, swap=0.3, seed=1))
    assert out == list(financial_corpus.variants(real, 520, swap=0.3, seed=1))  # deterministic
    vocabulary = {w for s in real for w in s.split()}
    assert all(set(s.split()) <= vocabulary for s in out)
    assert sorted(len(s.split()) for s in out[:52]) == sorted(len(s.split()) for s in real)  # one cycle
    assert len(set(out)) > 500 and sum(s in set(real) for s in out) < 26  # mostly new sentences
