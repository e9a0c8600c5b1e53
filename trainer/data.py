"""tf.data input for the trainer: embedding datasets -> batches of vectors.

Datasets are opened as ``EmbeddingDataset`` (their manifests' shard lists,
nothing else). ``verify`` reads them once before training: it checks the
record count against the manifests and finds vectors holding NaN/Inf, which
``make_dataset`` then leaves out (a single one would turn every weight into
NaN). Shards are interleaved, parsed in batches, split into train/validation
by a stable hash of each record's ``id`` (the same record always lands on
the same side, on every run and every machine), shuffled, batched and
prefetched, with tf.data's autotuner off (``records.without_autotune``).
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from core import records
from core.dataset import HOLDOUT_BUCKETS, EmbeddingDataset, in_holdout
from core.errors import DataError

_PARSE_BATCH = 1024


@dataclass(frozen=True)
class Verified:
    """What ``verify`` found: records read, the ids of non-finite vectors (left out of training), and how many
    finite records fall in the validation split (so the trainer can say how big an epoch is)."""
    records: int
    non_finite_ids: tuple[str, ...]
    validation: int = 0


def verify(datasets: list[EmbeddingDataset], val_permille: int = 0) -> Verified:
    """Read every listed shard once: counts must match the manifests; collect non-finite vectors' ids;
    count the finite validation records (``val_permille`` as in ``make_dataset``)."""
    total, bad, validation = 0, [], 0
    for dataset in datasets:
        read = 0
        for shard in dataset.shards:
            try:
                for batch in records.without_autotune(tf.data.TFRecordDataset(shard).batch(8192)):
                    parsed = tf.io.parse_example(batch, records.feature_spec(dataset.dim, with_text=False))
                    finite = tf.reduce_all(tf.math.is_finite(parsed[records.EMBEDDING]), axis=1)
                    bad += [b.decode("utf-8") for b in tf.boolean_mask(parsed[records.ID], ~finite).numpy()]
                    held_out = in_split(parsed[records.ID], True, val_permille)
                    validation += int(tf.reduce_sum(tf.cast(held_out & finite, tf.int32)))
                    read += int(tf.shape(batch)[0])
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                raise DataError(f"{shard}: damaged or unexpected records ({e.message.splitlines()[0][:200]})") \
                    from None
        dataset.check_count(read, "train")
        total += read
    return Verified(total, tuple(bad), validation)


def in_split(ids: tf.Tensor, validation: bool, val_permille: int) -> tf.Tensor:
    """Boolean mask: which ``ids`` belong to the validation (or training) split."""
    held_out = in_holdout(ids, val_permille)
    return held_out if validation else tf.logical_not(held_out)


def make_dataset(datasets: list[EmbeddingDataset], batch_size: int, *, validation: bool = False,
                 val_permille: int = 50, shuffle_buffer: int = 10_000, seed: int = 0,
                 cache: bool = False, repeat: bool = False, max_rows: int | None = None) -> tf.data.Dataset:
    """Batches of float32 ``[batch, dim]`` finite embeddings of one split.

    The training split is shuffled (files and records, seeded, reshuffled
    each epoch); the validation split is read in a fixed order. ``repeat``:
    endless, for a budget counted in steps, reading from up to 64 files at
    once so that part of a pass mixes the whole corpus. ``max_rows``: the
    first rows only.
    """
    if not 0 <= val_permille <= HOLDOUT_BUCKETS:
        raise ValueError(f"val_permille must be in [0, {HOLDOUT_BUCKETS}], got {val_permille}")
    shards = [s for d in datasets for s in d.shards]
    spec = records.feature_spec(datasets[0].dim, with_text=False)
    shuffle = not validation and shuffle_buffer > 1
    files = tf.data.Dataset.from_tensor_slices(shards)
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(shards), 64 if repeat else 8),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)

    def parse(serialized):
        feats = tf.io.parse_example(serialized, spec)
        vectors = feats[records.EMBEDDING]
        keep = in_split(feats[records.ID], validation, val_permille)
        keep = tf.logical_and(keep, tf.reduce_all(tf.math.is_finite(vectors), axis=1))
        return tf.boolean_mask(vectors, keep)

    ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=not shuffle).unbatch()
    if max_rows:
        ds = ds.take(max_rows)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return records.without_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
