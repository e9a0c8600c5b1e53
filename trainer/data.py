"""tf.data input for the trainer: embedding shards -> batches of vectors.

Shards are interleaved, parsed in batches (``tf.io.parse_example`` on a
vector of records is much faster than one record at a time), split into
train/validation by a stable hash of each record's ``id`` (the same record
always lands on the same side, on every run and every machine), shuffled,
batched and prefetched.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from pipelines.common import artifacts, records

SHARD_GLOB = "data-*.tfrecord"
_PARSE_BATCH = 1024
_HASH_BUCKETS = 1000


@dataclass(frozen=True)
class EmbeddingSource:
    """An embedding dataset directory, validated."""
    directory: str
    dim: int
    files: tuple[str, ...]
    manifest: dict


def open_source(directory: str) -> EmbeddingSource:
    """Check that ``directory`` is a complete embedding dataset and describe it."""
    manifest = artifacts.read_manifest(directory, "embeddings")
    dim = records.schema_dim(records.read_schema(directory))
    if int(manifest.get("dim", dim)) != dim:
        raise artifacts.ArtifactError(f"{directory}: manifest says dim {manifest['dim']}, schema says {dim}")
    files = artifacts.list_files(FileSystems.join(directory, SHARD_GLOB))
    if not files:
        raise artifacts.ArtifactError(f"{directory} has a manifest but no {SHARD_GLOB} shards")
    return EmbeddingSource(directory, dim, tuple(files), manifest)


def open_sources(directories: list[str]) -> EmbeddingSource:
    """Several embedding datasets (a corpus and its increments) read as one."""
    sources = [open_source(d) for d in directories]
    first = sources[0]
    for other in sources[1:]:
        if (other.dim, other.manifest.get("encoder")) != (first.dim, first.manifest.get("encoder")):
            raise artifacts.ArtifactError(
                f"{other.directory} ({other.manifest.get('encoder')}, {other.dim}-d) cannot be trained on with "
                f"{first.directory} ({first.manifest.get('encoder')}, {first.dim}-d)")
    return EmbeddingSource(first.directory, first.dim, tuple(f for s in sources for f in s.files), first.manifest)


def in_split(ids: tf.Tensor, validation: bool, val_permille: int) -> tf.Tensor:
    """Boolean mask: which ``ids`` belong to the validation (or training) split."""
    held_out = tf.strings.to_hash_bucket_fast(ids, _HASH_BUCKETS) < val_permille
    return held_out if validation else tf.logical_not(held_out)


def make_dataset(source: EmbeddingSource, batch_size: int, *, validation: bool = False,
                 val_permille: int = 50, shuffle_buffer: int = 10_000, seed: int = 0,
                 cache: bool = False) -> tf.data.Dataset:
    """Batches of float32 ``[batch, dim]`` embeddings of one split.

    The training split is shuffled (files and records, seeded, reshuffled
    each epoch); the validation split is read in a fixed order.
    """
    if not 0 <= val_permille <= _HASH_BUCKETS:
        raise ValueError(f"val_permille must be in [0, {_HASH_BUCKETS}], got {val_permille}")
    spec = records.feature_spec(source.dim, with_text=False)
    shuffle = not validation and shuffle_buffer > 1
    files = tf.data.Dataset.from_tensor_slices(list(source.files))
    if shuffle:
        files = files.shuffle(len(source.files), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(source.files), 8),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)

    def parse(serialized):
        feats = tf.io.parse_example(serialized, spec)
        keep = in_split(feats[records.ID], validation, val_permille)
        return tf.boolean_mask(feats[records.EMBEDDING], keep)

    ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=not shuffle).unbatch()
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
