"""A PQ codec fine-tuned to keep rankings, not to reconstruct vectors: distillation from the raw vectors.

faiss's OPQ + PQ is fitted to reconstruct each vector; search is judged by
which neighbours it keeps. Starting from an OPQ fit, this fine-tunes the
rotation and the codebooks so that asymmetric PQ scores (a raw query against
coded vectors, as search computes them) reproduce the raw cosines' ranking,
without labels (the idea of Distill-VQ): queries are sample rows, the
teacher's scores are raw cosines to each query's exact top-k neighbours and
to shared random negatives, and the student's are the negative squared
distances from the rotated query to the decoded candidates. The loss is the
KL divergence between the two softmaxes over each query's candidates, plus a
small reconstruction term that keeps codes anchored.

Codes are assigned softly (a softmax over centroid distances at temperature
``tau``) with the hard assignment in the forward pass (straight-through), so
training optimises the codes search will use. The rotation stays orthogonal
(a Cayley transform of a learned skew-symmetric matrix times the OPQ
rotation), so the result is written back as a standard faiss
``IndexPreTransform(OPQMatrix, IndexPQ)``: reduce, search and the frontier
use it unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np

from core.pq import PQCodec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Training settings (the defaults are the ones measured best; benchmarks/bench_learned_pq.py)."""
    steps: int = 1500
    batch: int = 64  # queries per step
    positives: int = 20  # each query's exact nearest sample rows
    negatives: int = 256  # random sample rows shared by the batch
    teacher_temperature: float = 0.05
    student_temperature: float = 0.05
    learning_rate: float = 1e-3
    tau_start: float = 1.0  # soft-assignment temperature, relative to each subspace's mean centroid distance
    tau_end: float = 0.05
    reconstruction_weight: float = 0.1
    learn_rotation: bool = True
    seed: int = 0


def parts(codec: PQCodec) -> tuple[np.ndarray, np.ndarray]:
    """(rotation R [d, d] with rotated = x @ R, codebooks [m, ksub, dsub]) of an (O)PQ codec."""
    pq = codec._pq_index.pq  # noqa: SLF001 - the codec's own faiss index
    centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    if not codec.opq:
        return np.eye(codec.d, dtype=np.float32), centroids
    transform = faiss.downcast_VectorTransform(codec.index.chain.at(0))
    a = faiss.vector_to_array(transform.A).reshape(codec.d, codec.d)
    return a.T.copy(), centroids


def to_codec(rotation: np.ndarray, codebooks: np.ndarray, metric: int = faiss.METRIC_L2) -> PQCodec:
    """A standard faiss OPQ + PQ codec holding ``rotation`` (x @ R) and ``codebooks``."""
    m, ksub, dsub = codebooks.shape
    d = m * dsub
    index = faiss.IndexPQ(d, m, int(np.log2(ksub)), metric)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(), index.pq.centroids)
    index.is_trained = True
    transform = faiss.OPQMatrix(d, m)
    faiss.copy_array_to_vector(np.ascontiguousarray(rotation.T, np.float32).ravel(), transform.A)
    transform.is_trained = True
    wrapped = faiss.IndexPreTransform(transform, index)
    return PQCodec.from_bytes(faiss.serialize_index(wrapped).tobytes())


def neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Each sample row's exact cosine top-``k`` among the other rows (faiss inner product on unit rows)."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(unit)
    _, found = index.search(unit, k + 1)
    return found[:, 1:].astype(np.int64)


def fine_tune(codec: PQCodec, sample: np.ndarray, schedule: Schedule = Schedule(),
              curve: list | None = None) -> PQCodec:
    """The codec after distillation training on ``sample`` rows; ``curve`` collects (step, loss) pairs."""
    import tensorflow as tf

    x = np.ascontiguousarray(sample, np.float32)
    rotation0, codebooks0 = parts(codec)
    m, ksub, dsub = codebooks0.shape
    near = neighbours(x, schedule.positives)
    rng = np.random.default_rng(schedule.seed)
    scale = _subspace_scale(x @ rotation0, codebooks0)
    codebooks = tf.Variable(codebooks0)
    skew = tf.Variable(tf.zeros((x.shape[1], x.shape[1])), trainable=schedule.learn_rotation)
    r0 = tf.constant(rotation0)
    optimizer = tf.keras.optimizers.Adam(schedule.learning_rate)
    variables = [codebooks] + ([skew] if schedule.learn_rotation else [])

    def rotation():
        a = skew - tf.transpose(skew)
        eye = tf.eye(x.shape[1])
        return r0 @ tf.linalg.solve(eye + a, eye - a)

    def decode(rotated, tau):
        sub = tf.reshape(rotated, (-1, m, 1, dsub))
        dist = tf.reduce_sum(tf.square(sub - codebooks[None]), axis=-1)  # [n, m, ksub]
        soft = tf.nn.softmax(-dist / (tau * scale[None, :, None]), axis=-1)
        hard = tf.one_hot(tf.argmin(dist, axis=-1), ksub)
        weights = hard + soft - tf.stop_gradient(soft)  # hard forward, soft gradient
        return tf.reshape(tf.einsum("nmk,mkd->nmd", weights, codebooks), (-1, m * dsub))

    def sq_dist(q, v):
        """Squared distances of query rows [b, d] to their own rows [b, p, d] or to shared rows [n, d]."""
        if len(v.shape) == 3:
            return tf.reduce_sum(tf.square(q[:, None, :] - v), axis=-1)
        return tf.reduce_sum(q * q, 1)[:, None] - 2 * q @ tf.transpose(v) + tf.reduce_sum(v * v, 1)[None, :]

    @tf.function
    def step(queries, positives, negatives, teacher, tau):
        with tf.GradientTape() as tape:
            r = rotation()
            q = queries @ r
            rows = tf.concat([tf.reshape(positives, (-1, x.shape[1])), negatives], axis=0) @ r
            decoded = decode(rows, tau)
            n_pos = tf.shape(positives)[0] * tf.shape(positives)[1]
            pos = tf.reshape(decoded[:n_pos], tf.shape(positives))
            student = -tf.concat([sq_dist(q, pos), sq_dist(q, decoded[n_pos:])], axis=1)
            target = tf.nn.softmax(teacher / schedule.teacher_temperature, axis=-1)
            logits = tf.nn.log_softmax(student / schedule.student_temperature, axis=-1)
            kl = tf.reduce_mean(tf.reduce_sum(target * (tf.math.log(target + 1e-12) - logits), axis=-1))
            recon = tf.reduce_mean(tf.reduce_sum(tf.square(rows - decoded), -1))
            loss = kl + schedule.reconstruction_weight * recon
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return kl

    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    start = time.monotonic()
    for t in range(schedule.steps):
        batch = rng.choice(len(x), schedule.batch, replace=False)
        negatives = rng.choice(len(x), schedule.negatives, replace=False)
        teacher = np.concatenate([np.einsum("bd,bkd->bk", unit[batch], unit[near[batch]]),
                                  unit[batch] @ unit[negatives].T], axis=1).astype(np.float32)
        progress = t / max(schedule.steps - 1, 1)
        tau = schedule.tau_start * (schedule.tau_end / schedule.tau_start) ** progress
        kl = float(step(x[batch], x[near[batch]], x[negatives], teacher, tf.constant(tau, tf.float32)))
        if curve is not None and (t % 50 == 0 or t == schedule.steps - 1):
            curve.append((t, kl))
        if t % 250 == 0:
            log.info("learned PQ step %d/%d: distillation loss %.4f (%.0f s)", t, schedule.steps, kl,
                     time.monotonic() - start)
    return to_codec(_orthonormal(rotation().numpy()), codebooks.numpy(), codec._pq_index.metric_type)  # noqa: SLF001


def _subspace_scale(rotated: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Each subspace's mean squared distance from a row to its centroids: the unit of the temperature."""
    m, _, dsub = codebooks.shape
    sub = rotated[:2048].reshape(-1, m, 1, dsub)
    return np.mean(np.sum((sub - codebooks[None]) ** 2, axis=-1), axis=(0, 2)).astype(np.float32)


def _orthonormal(r: np.ndarray) -> np.ndarray:
    """The nearest orthonormal matrix (the Cayley transform is one up to float rounding)."""
    u, _, vt = np.linalg.svd(r.astype(np.float64))
    return (u @ vt).astype(np.float32)
