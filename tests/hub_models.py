"""Tiny TF Hub-style SavedModels built by the tests (no network, no downloads).

``save_text_encoder`` writes a tf.Module whose signature maps a batch of
strings to vectors, the interface of USE on TF Hub. Sentences containing
``make-nan`` / ``make-inf`` come back with a NaN / Inf so the dead-letter path
for bad vectors can be exercised through the real ``hub.load`` code path.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class _HashEncoder(tf.Module):
    def __init__(self, dim: int, buckets: int = 4096, seed: int = 0):
        super().__init__()
        table = np.random.default_rng(seed).normal(size=(buckets, dim)).astype(np.float32)
        self.table = tf.Variable(table / np.linalg.norm(table, axis=1, keepdims=True), trainable=False)
        self.buckets = buckets

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        vectors = tf.gather(self.table, tf.strings.to_hash_bucket_fast(texts, self.buckets))
        nan = tf.strings.regex_full_match(texts, ".*make-nan.*")[:, None]
        inf = tf.strings.regex_full_match(texts, ".*make-inf.*")[:, None]
        vectors = tf.where(nan, tf.fill(tf.shape(vectors), float("nan")), vectors)
        return tf.where(inf, tf.fill(tf.shape(vectors), float("inf")), vectors)


def save_text_encoder(path: str, dim: int = 512) -> str:
    module = _HashEncoder(dim)
    tf.saved_model.save(module, path)
    return path
