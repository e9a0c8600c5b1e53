"""Synthetic embedding datasets for the speed and memory benchmarks: unit rows written as `shrink embed` would."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Sampler = Callable[[int], np.ndarray]  # rows -> [rows, dim] vectors, not yet normalised


def isotropic(rng: np.random.Generator, dim: int) -> Sampler:
    return lambda n: rng.normal(size=(n, dim))


def low_rank(rng: np.random.Generator, dim: int) -> Sampler:
    """A low-rank structure plus noise, like sentence embeddings."""
    basis = rng.normal(size=(64, dim)) * np.linspace(3.0, 0.3, 64)[:, None]
    return lambda n: rng.normal(size=(n, 64)) @ basis + 0.5 * rng.normal(size=(n, dim))


def write(directory: Path, rows: int, dim: int = 512, shards: int = 8, seed: int = 0,
          make: Callable[[np.random.Generator, int], Sampler] = isotropic) -> None:
    """``rows`` unit vectors from ``make`` in blocks of 10,000, ids v000000000..., with a manifest."""
    import tensorflow as tf

    from core import manifests, records
    from core.dataset import shard_entries

    directory.mkdir(parents=True, exist_ok=True)
    sample = make(np.random.default_rng(seed), dim)
    paths = [directory / f"data-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    for start in range(0, rows, 10_000):
        x = sample(min(10_000, rows - start))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        ids = [f"v{start + i:09d}" for i in range(len(x))]
        for i, serialized in enumerate(records.encode_examples(ids, x, ids)):
            writers[(start + i) % shards].write(serialized)
    for w in writers:
        w.close()
    records.write_schema(records.make_schema(dim), str(directory))
    manifests.write(str(directory), "embeddings", {
        "dim": dim, "encoder": make.__name__, "records": rows, "has_text": True,
        "shards": shard_entries(str(directory), [str(p) for p in paths]), "fingerprint": f"bench-{rows}-{seed}"},
        [p.name for p in paths] + [records.SCHEMA_FILE])
