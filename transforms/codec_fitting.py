"""Fitting codecs in Beam: int8 calibration with tf.Transform, and PQ training on a seeded sample.

int8: the reducer (arrays, or the identity) runs in a Beam DoFn; its outputs
go to tf.Transform (``transforms.analyze``), where ``tft.min`` and ``tft.max``
(reduce_instance_dims=False) give each dimension's range in one streaming
pass, read back as numpy arrays.

PQ: the sampled rows (``transforms.fitting``) are gathered on one worker (the
sample, never the corpus, is in memory) and trained with faiss (then
fine-tuned, for learned PQ); the trained codec is written in faiss's own format.
"""
from __future__ import annotations

import logging
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from core import codecs, files, learned_pq
from core.errors import ArtifactError, InputError
from core.pq import train_pq

REDUCED = "reduced"
LO = "int8_lo"
HI = "int8_hi"


def preprocessing_fn(inputs: dict) -> dict:
    """Per-dimension minimum and maximum of the reduced vectors, as named analyzer results."""
    import tensorflow as tf
    import tensorflow_transform as tft

    x = inputs[REDUCED]
    lo = tf.identity(tft.min(x, reduce_instance_dims=False), name=LO)
    hi = tf.identity(tft.max(x, reduce_instance_dims=False), name=HI)
    return {REDUCED: tf.clip_by_value(x, lo, hi)}


class Reduce(beam.DoFn):
    """Raw vectors -> the reducer's outputs (float32), the reducer checked to be the one the job started with."""

    def __init__(self, reducer: str, input_dim: int, digest: str):
        self.reducer_spec, self.input_dim, self.digest = reducer, input_dim, digest

    def setup(self):
        self.reducer = codecs.load_reducer(self.reducer_spec, self.input_dim)
        if self.reducer.digest != self.digest:
            raise ArtifactError(f"{self.reducer_spec} changed while the job ran; run the job again")

    def process(self, vectors: np.ndarray):
        yield np.asarray(self.reducer(vectors), dtype=np.float32)


class TrainPQ(beam.DoFn):
    """The gathered sample -> a trained OPQ+PQ codec, written to ``path`` (faiss format).

    Counters ``sample_rows`` and ``train_ms`` (namespace ``namespace``) report what it did.
    """

    def __init__(self, path: str, dim: int, m: int, opq: bool, seed: int, namespace: str, fine_tune_steps: int = 0):
        self.path, self.dim, self.m, self.opq, self.seed = path, dim, m, opq, seed
        self.namespace, self.fine_tune_steps = namespace, fine_tune_steps

    def process(self, blocks: list[np.ndarray]):
        sample = np.concatenate([b for b in blocks if len(b)] or [np.zeros((0, self.dim), np.float32)])
        # faiss's OPQ training corrupts memory when it has fewer rows than dimensions (faiss 1.15.1,
        # reproduced with OPQMatrix alone): such small samples get plain PQ.
        opq = self.opq and len(sample) >= self.dim
        if self.opq and not opq:
            logging.getLogger(__name__).warning("only %d rows for a %d-d OPQ rotation: training plain PQ",
                                                len(sample), self.dim)
        start = time.monotonic()
        try:
            codec = train_pq(sample, self.m, opq=opq, seed=self.seed)
        except ValueError as e:
            raise InputError(f"cannot train a {self.m}-byte PQ codec on {len(sample)} rows: {e}") from None
        if self.fine_tune_steps:
            schedule = learned_pq.Schedule(steps=self.fine_tune_steps, seed=self.seed)
            codec = learned_pq.fine_tune(codec, sample, schedule)
        files.write_atomic(self.path, codec.to_bytes())
        Metrics.counter(self.namespace, "sample_rows").inc(len(sample))
        Metrics.counter(self.namespace, "train_ms").inc(int(1000 * (time.monotonic() - start)))
        yield self.path
