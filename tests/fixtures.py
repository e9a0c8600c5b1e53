"""Tiny datasets and reducer artifacts written directly, and readers for test assertions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from core import manifests, records
from core.dataset import KINDS, EmbeddingDataset, iter_batches, shard_entries


def correlated_vectors(rows: int, dim: int, seed: int = 0, rank: int = 16) -> np.ndarray:
    """Unit-length float32 rows with a dominant low-rank structure and a non-zero mean (like USE)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)) * np.linspace(3.0, 0.5, rank)[:, None]
    x = rng.normal(size=(rows, rank)) @ basis + 0.3 * rng.normal(size=(rows, dim)) + 2.0 * rng.normal(size=dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embedding_dataset(directory: str | Path, vectors: np.ndarray, *, num_shards: int = 2,
                            with_text: bool = True, extra_records: list[bytes] = (),
                            dim: int | None = None, kind: str = "embeddings",
                            metadata: list[dict] | None = None) -> list[dict]:
    """Write ``vectors`` as an embedding dataset; ``extra_records`` (raw bytes) go into the last shard.

    Returns the records written (id, text, embedding, metadata JSON) in order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dim = dim or vectors.shape[1]
    rows = [{"id": f"id-{i:05d}", "text": f"sentence number {i}" if with_text else None, "embedding": v,
             "metadata": None if metadata is None else json.dumps(metadata[i], sort_keys=True)}
            for i, v in enumerate(vectors)]
    shards = []
    for s in range(num_shards):
        path = directory / f"data-{s:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for row in rows[s::num_shards]:
                writer.write(records.encode_examples([row["id"]], row["embedding"][None, :],
                                                     None if row["text"] is None else [row["text"]],
                                                     None if row["metadata"] is None else [row["metadata"]])[0])
            if s == num_shards - 1:
                for raw in extra_records:
                    writer.write(raw)
        shards.append(str(path))
    records.write_schema(records.make_schema(dim, with_text, metadata=metadata is not None), str(directory))
    written = [Path(p).name for p in shards] + [records.SCHEMA_FILE]
    manifests.write(str(directory), kind, {
        "dim": dim, "encoder": "fixture", "records": len(rows) + len(extra_records), "has_text": with_text,
        "has_metadata": metadata is not None,
        "shards": shard_entries(str(directory), shards),
        "fingerprint": manifests.fingerprint({"fixture": str(directory)})}, written)
    return rows


def write_linear_reducer(directory: str | Path, mean: np.ndarray, matrix: np.ndarray, *,
                         kind: str = "pca", l2_normalize: bool = False) -> str:
    """A reducer artifact written straight from a mean and matrix (no tf.Transform run)."""
    from core import reducers

    directory = str(directory)
    Path(directory).mkdir(parents=True, exist_ok=True)
    head = reducers.Head.pca(mean, matrix, center=True, l2_normalize=l2_normalize)
    entry = head.save(directory)
    manifests.write(directory, kind, {
        "input_dim": int(matrix.shape[0]), "output_dim": int(matrix.shape[1]), "l2_normalize": l2_normalize,
        "head": entry, "fingerprint": manifests.fingerprint({"matrix": matrix.tobytes().hex()[:64], "dir": directory})},
        [reducers.WEIGHTS])
    return directory


def read_records(directory: str | Path) -> list[dict]:
    """Every record of a dataset, read through its manifest: ``[{'id', 'text', 'embedding'}]``."""
    data = read_all(str(directory))
    texts = data.get("text") or [None] * len(data["id"])
    return [{"id": i, "text": t, "embedding": v} for i, t, v in zip(data["id"], texts, data["vector"])]


def reseal(directory: str | Path, listed: list[str] | None = None, **changes) -> dict:
    """Rewrite a manifest as a careful forger would: ``changes`` applied, file sizes, sha256 and digest recomputed.

    Tests use it to show what is refused on content, not merely on a digest that no longer adds up.
    """
    import json

    path = Path(directory) / "manifest.json"
    manifest = {**json.loads(path.read_text()), **changes}
    entries = manifests.file_entries(str(directory), listed or [e["path"] for e in manifest["files"]])
    manifest.update(files=entries, digest=manifests.content_digest(manifest["kind"], entries))
    path.write_text(json.dumps(manifest))
    return manifest


def read_all(directory: str, kinds: str | tuple[str, ...] = KINDS, with_text: bool = True) -> dict:
    """A whole (small) dataset in memory: ``{'id', 'vector', 'text'}``."""
    import numpy as np

    dataset = EmbeddingDataset.open(directory, kinds)
    batches = list(iter_batches([dataset], with_text=with_text and dataset.has_text))
    if not batches:
        width = dataset.dim
        return {"id": [], "vector": np.zeros((0, width), np.uint8 if dataset.codes else np.float32), "text": []}
    return {key: (np.concatenate([b[key] for b in batches]) if key == "vector" else sum((b[key] for b in batches), []))
            for key in batches[0]}
