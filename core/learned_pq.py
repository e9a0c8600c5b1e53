"""A PQ codec fine-tuned to keep rankings, not to reconstruct vectors: distillation from the raw vectors.

faiss's OPQ + PQ is fitted to reconstruct each vector; search is judged by
which neighbours it keeps. Starting from an OPQ fit, this fine-tunes the
rotation and the codebooks so that asymmetric PQ scores (a raw query against
coded vectors, as search computes them) reproduce the raw cosines' ranking,
without labels (the idea of Distill-VQ): queries are sample rows, the
teacher's scores are raw cosines to each query's exact top-k neighbours and
to shared random negatives, and the student's are the dot
products of the rotated query with the decoded candidates. The loss is the
KL divergence between the two softmaxes over each query's candidates.

Codes are assigned softly (a softmax over centroid distances at temperature
``tau``; annealing it from 1.0 measured worse than a fixed sharp 0.05) with
the hard assignment in the forward pass
(straight-through), so training optimises the codes search will use; the
``fixed`` alternative keeps hard codes and re-encodes the sample every few
steps. The rotation stays orthogonal (a Cayley transform of a learned
skew-symmetric matrix times the OPQ rotation), so the result is a standard
faiss ``IndexPreTransform(OPQMatrix, IndexPQ)`` scored by inner product.
``fit-codec --fine_tune_steps`` fits it; measured against OPQ in
benchmarks/bench_learned_pq.py.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import faiss
import numpy as np

from core.pq import PQCodec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Training settings: the defaults are the schedule benchmarks/bench_learned_pq.py measures and ablates."""
    steps: int = 400
    batch: int = 32  # queries per step
    positives: int = 30  # each query's exact nearest sample rows: the ranks that decide recall@10
    negatives: int = 256  # random sample rows shared by the batch
    temperature: float = 0.05  # of the cosines, teacher's and student's
    learning_rate: float = 1e-4  # 1e-3 diverged with fixed codes (64 B, 100,000 rows, batch 256: recall@10 0.69)
    assignment: str = "straight-through"  # or "fixed": hard codes, re-encoded every ``reencode_every`` steps
    reencode_every: int = 100
    tau_start: float = 0.05  # soft-assignment temperature, relative to each subspace's mean centroid distance
    tau_end: float = 0.05
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
    """The codec after distillation training on ``sample`` rows; ``curve`` collects (step, loss) pairs.

    The result scores by inner product: the student's score is the query's dot
    product with a decoded row, the quantity distilled from the cosines.
    """
    import tensorflow as tf

    x = np.ascontiguousarray(sample, np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    schedule = replace(schedule, batch=min(schedule.batch, len(x)), positives=min(schedule.positives, len(x) - 1),
                       negatives=min(schedule.negatives, len(x)))  # a small sample: what it has
    rotation0, codebooks0 = parts(codec)
    near = neighbours(x, schedule.positives)
    rng = np.random.default_rng(schedule.seed)
    tf.random.set_seed(schedule.seed)
    model = _Student(rotation0, codebooks0, _subspace_scale(x @ rotation0, codebooks0), schedule)
    codes = tf.constant(_encode(model, x)) if schedule.assignment == "fixed" else None
    start, window = time.monotonic(), []
    for t in range(schedule.steps):
        if codes is not None and t and t % schedule.reencode_every == 0:
            codes = tf.constant(_encode(model, x))
        batch = rng.choice(len(x), schedule.batch, replace=False)
        negatives = rng.choice(len(x), schedule.negatives, replace=False)
        rows = np.concatenate([near[batch].ravel(), negatives])
        teacher = np.concatenate([np.einsum("bd,bkd->bk", x[batch], x[near[batch]]), x[batch] @ x[negatives].T],
                                 axis=1).astype(np.float32)
        tau = schedule.tau_start * (schedule.tau_end / schedule.tau_start) ** (t / max(schedule.steps - 1, 1))
        candidates = tf.gather(codes, rows) if codes is not None else tf.constant(x[rows])
        window.append(float(model.step(tf.constant(x[batch]), candidates, tf.constant(teacher),
                                       tf.constant(tau, tf.float32))))
        if (t + 1) % 50 == 0 or t == schedule.steps - 1:  # the loss of one batch is noisy: 50-step means
            if curve is not None:
                curve.append((t + 1, round(float(np.mean(window)), 5)))
            log.info("learned PQ step %d/%d: distillation loss %.4f (%.0f s)", t + 1, schedule.steps,
                     np.mean(window), time.monotonic() - start)
            window = []
    return to_codec(_orthonormal(model.rotation().numpy()), model.codebooks.numpy(), faiss.METRIC_INNER_PRODUCT)


def distillation_loss(codec: PQCodec, x: np.ndarray, queries: np.ndarray, positives: int = 100,
                      negatives: int = 256, temperature: float = 0.05, seed: int = 0) -> float:
    """The training objective with hard codes, as search scores: mean KL over the ``queries`` rows of ``x``."""
    x = np.ascontiguousarray(x, np.float32)
    near = neighbours(x, positives)[queries]
    others = np.random.default_rng(seed).choice(len(x), negatives, replace=False)
    decoded = codec.decode(codec.encode(x))  # an orthonormal rotation keeps dot products
    q = x[queries]
    teacher = np.concatenate([np.einsum("bd,bkd->bk", q, x[near]), q @ x[others].T], axis=1)
    student = np.concatenate([np.einsum("bd,bkd->bk", q, decoded[near]), q @ decoded[others].T], axis=1)
    target, log_p = _log_softmax(teacher / temperature), _log_softmax(student / temperature)
    return float(np.mean(np.sum(np.exp(target) * (target - log_p), axis=1)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _encode(model: "_Student", x: np.ndarray) -> np.ndarray:
    """Hard codes [n, m] of the rows under the model's current rotation and codebooks."""
    codec = to_codec(_orthonormal(model.rotation().numpy()), model.codebooks.numpy())
    codes = codec.encode(x)  # 8-bit codes: one byte per sub-quantizer
    return codes.astype(np.int32)


class _Student:
    """Rotation (Cayley transform of a skew matrix times the start) and codebooks, trained by KL to the teacher."""

    def __init__(self, rotation0: np.ndarray, codebooks0: np.ndarray, scale: np.ndarray, schedule: Schedule):
        import tensorflow as tf

        self.m, self.ksub, self.dsub = codebooks0.shape
        self.d = self.m * self.dsub
        self.schedule = schedule
        self.r0, self.scale, self.eye = tf.constant(rotation0), tf.constant(scale), tf.eye(self.d)
        self.codebooks = tf.Variable(codebooks0)
        self.skew = tf.Variable(tf.zeros((self.d, self.d)))
        self.variables = [self.codebooks] + ([self.skew] if schedule.learn_rotation else [])
        self.moments = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in self.variables]
        self.updates = tf.Variable(0.0)
        self.step = tf.function(self._step, autograph=False)  # plain graph code: no source re-read

    def rotation(self):
        import tensorflow as tf

        a = self.skew - tf.transpose(self.skew)
        return self.r0 @ tf.linalg.solve(self.eye + a, self.eye - a)

    def decode_soft(self, rotated, tau):
        """Straight-through decoding: the hard codes forward, the soft assignment's gradient backward."""
        import tensorflow as tf

        sub = tf.reshape(rotated, (-1, self.m, self.dsub))
        dist = (tf.reduce_sum(tf.square(sub), -1)[:, :, None]
                - 2 * tf.einsum("nmd,mkd->nmk", sub, self.codebooks)
                + tf.reduce_sum(tf.square(self.codebooks), -1)[None])  # [n, m, ksub]
        soft = tf.nn.softmax(-dist / (tau * self.scale[None, :, None]), axis=-1)
        hard = tf.one_hot(tf.argmin(dist, axis=-1), self.ksub)
        weights = hard + soft - tf.stop_gradient(soft)
        return tf.reshape(tf.einsum("nmk,mkd->nmd", weights, self.codebooks), (-1, self.d))

    def decode_codes(self, codes):
        import tensorflow as tf

        flat = codes + tf.range(self.m)[None, :] * self.ksub  # [n, m] rows of the [m * ksub, dsub] table
        return tf.reshape(tf.gather(tf.reshape(self.codebooks, (-1, self.dsub)), flat), (-1, self.d))

    def _step(self, queries, candidates, teacher, tau):
        import tensorflow as tf

        b = tf.shape(queries)[0]
        p = self.schedule.positives
        with tf.GradientTape() as tape:
            r = self.rotation()
            q = queries @ r
            if candidates.dtype == tf.int32:
                decoded = self.decode_codes(candidates)
            else:
                decoded = self.decode_soft(candidates @ r, tau)
            pos = tf.reshape(decoded[:b * p], (b, p, self.d))
            student = tf.concat([tf.einsum("bd,bpd->bp", q, pos), q @ tf.transpose(decoded[b * p:])], axis=1)
            target = tf.nn.softmax(teacher / self.schedule.temperature, axis=-1)
            logits = tf.nn.log_softmax(student / self.schedule.temperature, axis=-1)
            kl = tf.reduce_mean(tf.reduce_sum(target * (tf.math.log(target + 1e-12) - logits), axis=-1))
        self._adam(tape.gradient(kl, self.variables))
        return kl

    def _adam(self, gradients) -> None:
        """One Adam update (Kingma & Ba; Keras's defaults: beta 0.9 / 0.999, epsilon 1e-7)."""
        import tensorflow as tf

        b1, b2 = 0.9, 0.999
        self.updates.assign_add(1.0)
        rate = self.schedule.learning_rate * tf.sqrt(1 - b2 ** self.updates) / (1 - b1 ** self.updates)
        for variable, gradient, (m, v) in zip(self.variables, gradients, self.moments):
            m.assign_add((gradient - m) * (1 - b1))
            v.assign_add((tf.square(gradient) - v) * (1 - b2))
            variable.assign_sub(rate * m / (tf.sqrt(v) + 1e-7))


def _subspace_scale(rotated: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Each subspace's mean squared distance from a row to its centroids: the unit of the temperature."""
    m, _, dsub = codebooks.shape
    sub = rotated[:2048].reshape(-1, m, 1, dsub)
    return np.mean(np.sum((sub - codebooks[None]) ** 2, axis=-1), axis=(0, 2)).astype(np.float32)


def _orthonormal(r: np.ndarray) -> np.ndarray:
    """The nearest orthonormal matrix (the Cayley transform is one up to float rounding)."""
    u, _, vt = np.linalg.svd(r.astype(np.float64))
    return (u @ vt).astype(np.float32)
