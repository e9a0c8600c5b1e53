"""``EmbeddingDataset``: the only way a job or the trainer opens a dataset of vectors.

A dataset is a directory of TFRecord shards, ``schema.pbtxt`` and a
manifest (kind ``embeddings`` from embed, ``reduced`` from reduce). Opening
one checks the manifest, the schema and every listed shard's size, so a
missing, truncated or replaced shard fails before any work; stray files in
the directory are never read. Readers then check that the number of records
they read equals the manifest's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from core import files, manifests, records
from core.errors import ArtifactError, DataError

KINDS = ("embeddings", "reduced")
DATA_PREFIX = "data"  # shards are data-SSSSS-of-NNNNN.tfrecord (or .parquet)
HOLDOUT_BUCKETS = 1000


@dataclass(frozen=True)
class EmbeddingDataset:
    """A validated dataset: absolute shard paths, record count, vector layout and provenance."""

    directory: str
    manifest: dict
    shards: tuple[str, ...]

    @classmethod
    def open(cls, directory: str, kinds: str | tuple[str, ...] = "embeddings") -> EmbeddingDataset:
        manifest = manifests.read(directory, kinds, verify="none")  # shards are checked below, as DataError
        listed = manifest.get("shards")
        if not isinstance(listed, list) or not isinstance(manifest.get("records"), int):
            raise ArtifactError(f"{manifests.path(directory)} is corrupt: no shard list or record count")
        shards = tuple(files.join(directory, s["path"]) for s in listed)
        actual = files.sizes(list(shards))
        missing = [p for p in shards if actual[p] is None]
        if missing:
            raise DataError(f"{directory}: {len(missing)} shard(s) listed in its manifest are missing "
                            f"({', '.join(os.path.basename(p) for p in missing[:5])}); re-create the dataset")
        changed = [(p, s["bytes"], actual[p]) for p, s in zip(shards, listed) if actual[p] != s["bytes"]]
        if changed:
            p, expected, got = changed[0]
            raise DataError(f"{directory}: {len(changed)} shard(s) changed since they were written "
                            f"({os.path.basename(p)}: {got} bytes, manifest says {expected}); re-create the dataset")
        dataset = cls(directory, manifest, shards)
        dataset._check_schema()
        return dataset

    def _check_schema(self) -> None:
        if self.parquet:
            return
        schema = records.read_schema(self.directory)
        if self.codes:
            return
        if records.schema_dim(schema) != self.dim:
            raise ArtifactError(f"{self.directory}: schema says {records.schema_dim(schema)}-d vectors, "
                                f"the manifest {self.dim}-d")

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def records(self) -> int:
        """How many records the shards hold."""
        return int(self.manifest["records"])

    @property
    def encoder(self) -> str | None:
        return self.manifest.get("encoder")

    @property
    def has_text(self) -> bool:
        return bool(self.manifest.get("has_text", True))

    @property
    def has_metadata(self) -> bool:
        """Whether records carry the user's chosen fields of their source record (a JSON object)."""
        return bool(self.manifest.get("has_metadata", False))

    @property
    def codes(self) -> bool:
        """Whether records hold ``codes`` bytes (int8/PQ) instead of a float ``embedding``."""
        return bool(self.manifest.get("codes", False))

    @property
    def parquet(self) -> bool:
        return self.manifest.get("format") == "parquet"

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    @property
    def digest(self) -> str:
        """The dataset's identity: a digest of every file it holds."""
        return self.manifest["digest"]

    def check_count(self, read: int, by: str) -> None:
        """Fail unless ``read`` records is what the manifest says the shards hold."""
        if read != self.records:
            raise DataError(f"{by} read {read} records from {self.directory}, its manifest lists {self.records}: "
                            "the dataset is damaged; re-create it")


def open_all(directories: list[str], kinds: str | tuple[str, ...] = "embeddings") -> list[EmbeddingDataset]:
    """Several datasets read as one corpus (a first run and its increments): same encoder and dimension."""
    datasets = [EmbeddingDataset.open(d, kinds) for d in directories]
    first = datasets[0]
    for other in datasets[1:]:
        if (other.dim, other.encoder) != (first.dim, first.encoder):
            raise ArtifactError(f"{other.directory} ({other.encoder}, {other.dim}-d) cannot be used with "
                                f"{first.directory} ({first.encoder}, {first.dim}-d)")
    return datasets


def shard_entries(directory: str, shard_paths: list[str]) -> list[dict]:
    """The manifest's shard list for shards just written: relative paths and sizes."""
    sizes = files.sizes(shard_paths)
    return [{"path": files.relative(p, directory), "bytes": sizes[p]} for p in sorted(shard_paths)]


def in_holdout(ids, permille: int):
    """TF boolean mask: which string ids fall in the held-out (validation) split, by a stable id hash.

    The trainer's validation split and evaluate's honest queries are the same
    rows on every run and machine.
    """
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(ids, HOLDOUT_BUCKETS) < permille




def iter_batches(datasets: list[EmbeddingDataset], batch_size: int = 4096, with_text: bool = False):
    """``{'id': [str], 'vector': float32 [n, dim] or uint8 codes [n, bytes], 'text': [str]}`` batches, in shard order.

    Reads exactly the listed shards (TFRecord or Parquet) and checks each
    dataset's record count at its end; a damaged shard fails with its name.
    """
    for dataset in datasets:
        read = 0
        for shard in dataset.shards:
            batches = _parquet_batches if dataset.parquet else _tfrecord_batches
            for batch in batches(dataset, shard, batch_size, with_text):
                read += len(batch["id"])
                yield batch
        dataset.check_count(read, "reading")


def _tfrecord_batches(dataset: EmbeddingDataset, shard: str, batch_size: int, with_text: bool):
    import numpy as np
    import tensorflow as tf

    metadata = with_text and dataset.has_metadata
    spec = records.feature_spec(dataset.dim, with_text, dataset.codes, metadata)
    try:
        for batch in records.without_autotune(tf.data.TFRecordDataset(shard).batch(batch_size)):
            parsed = tf.io.parse_example(batch, spec)
            out = {"id": [b.decode("utf-8") for b in parsed[records.ID].numpy()]}
            if dataset.codes:
                raw = parsed[records.CODES].numpy()
                out["vector"] = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), -1)
            else:
                out["vector"] = parsed[records.EMBEDDING].numpy()
            if with_text:
                out["text"] = [b.decode("utf-8") for b in parsed[records.TEXT].numpy()]
            if metadata:
                out["metadata"] = [b.decode("utf-8") for b in parsed[records.METADATA].numpy()]
            yield out
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise DataError(f"{shard}: damaged or unexpected records ({e.message.splitlines()[0][:200]})") from None


def _parquet_batches(dataset: EmbeddingDataset, shard: str, batch_size: int, with_text: bool):
    import numpy as np
    import pyarrow.parquet as pq

    column = records.CODES if dataset.codes else records.EMBEDDING
    metadata = with_text and dataset.has_metadata
    names = [records.ID, column] + [records.TEXT] * with_text + [records.METADATA] * metadata
    with files.open_read(shard) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=names):
            values = batch.column(column)
            if dataset.codes:
                vector = np.frombuffer(values.buffers()[1], np.uint8, count=len(values) * values.type.byte_width,
                                       offset=values.offset * values.type.byte_width).reshape(len(values), -1)
            else:
                vector = values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1).astype(np.float32)
            out = {"id": batch.column(records.ID).to_pylist(), "vector": vector}
            if with_text:
                out["text"] = batch.column(records.TEXT).to_pylist()
            if metadata:
                out["metadata"] = batch.column(records.METADATA).to_pylist()
            yield out


def sample_vectors(dataset: EmbeddingDataset, size: int, seed: int = 0):
    """A seeded uniform sample of ``size`` vectors from the whole dataset (one streaming pass)."""
    import numpy as np

    from core.evaluation.sampling import SmallestKeys, seeded_keys

    sample = SmallestKeys(size)
    for batch in iter_batches([dataset]):
        sample.add(seeded_keys(batch["id"], seed), vectors=batch["vector"])
    return sample.result().get("vectors", np.zeros((0, dataset.dim), np.float32))
