"""What each kind of output directory holds, by name: the only files a job may list, adopt or delete there.

The names are fixed in code, never read back from disk. A file a user puts
in an output directory keeps its name, so it is never taken for ours: a
``notes.tmp`` or ``beam-temp-notes.txt`` is not one of the temporary names
below, and a ``thesis.txt`` is no shard.
"""
from __future__ import annotations

import re

MANIFEST = "manifest.json"
LOCK = ".shrink.lock"
PENDING = ".shrink.pending"
INTERNAL = (MANIFEST, LOCK, PENDING)

DEADLETTERS = r"deadletter/deadletter-\d{5}-of-\d{5}\.jsonl"
SHARDS = r"data-\d{5}-of-\d{5}\.(?:tfrecord|parquet)"
WEIGHTS = r"(?:reducer|codec)\.npz"


def _saved_model(directory: str) -> str:
    """The files TensorFlow writes for a SavedModel in ``directory``."""
    return (directory + r"/(?:saved_model\.pb|fingerprint\.pb|keras_metadata\.pb|"
            r"variables/variables\.(?:index|data-\d{5}-of-\d{5})|assets/[^/]+)")


HEAD = _saved_model("head")
# What Keras writes while training: the CSV log, checkpoints, BackupAndRestore's state, TensorBoard events.
TRAINING = (r"train/(?:history\.csv|checkpoints/(?:last|best)\.keras|backup/[\w.-]+|"
            r"(?:logs/(?:train|validation)/)?events\.out\.tfevents\.[\w.-]+)")

_KINDS = {
    "embeddings": (SHARDS, r"schema\.pbtxt", DEADLETTERS),
    "reduced": (SHARDS, r"schema\.pbtxt", DEADLETTERS),
    "pca": (WEIGHTS, HEAD, _saved_model("transform_fn"), r"transformed_metadata/[^/]+", DEADLETTERS),
    "autoencoder": (WEIGHTS, HEAD, r"model\.keras", _saved_model("text_model"), TRAINING,
                    r"deadletter/non_finite\.jsonl"),
    "codec": (WEIGHTS, r"index\.faiss", HEAD, DEADLETTERS),
    "report": (r"report\.json", r"report\.md", r"(?:frontier|sts_scatter)\.png"),
    "export": (r"(?:vertex|bigquery|vectors)/data-\d{5}-of-\d{5}\.(?:json|avro|parquet)",
               r"vertex/delete/deleted-\d{5}-of-\d{5}\.txt", r"ids/ids-\d{5}-of-\d{5}\.txt",
               r"bigquery/(?:schema\.json|load_command\.txt)", r"lancedb/[A-Za-z_][A-Za-z0-9_]*\.lance/.+",
               DEADLETTERS),
}
# Temporary files of our own atomic writes (".<8 hex>.<name>.tmp"), Beam's sinks
# ("beam-temp-<prefix>-<32 hex>/...") and reduce's shard parts.
_TEMPORARY = (r"(?:.+/)?\.[0-9a-f]{8}\.[^/]+\.tmp", r"(?:.+/)?beam-temp-[^/]+-[0-9a-f]{32}/[^/]+",
              r"(?:[a-z]+/)?data-part-\d{5}-\d{15}\.tmp", r"(?:[a-z]+/)?data-\d{5}-of-\d{5}\.[a-z]+\.tmp")
# One name of each kind's files, to test whether an input glob would match what a job writes.
EXAMPLES = ("data-00000-of-00001.tfrecord", "data-00000-of-00001.parquet", "schema.pbtxt",
            "deadletter/deadletter-00000-of-00001.jsonl", "reducer.npz", "codec.npz", "index.faiss",
            "head/saved_model.pb", "transform_fn/saved_model.pb", "model.keras", "train/history.csv",
            "report.json", "report.md", "frontier.png", "run_manifest.json", "vertex/data-00000-of-00001.json",
            "ids/ids-00000-of-00001.txt", "bigquery/schema.json", *INTERNAL)

KINDS = tuple(_KINDS)
_COMPILED = {kind: re.compile("|".join(f"(?:{p})" for p in patterns)) for kind, patterns in _KINDS.items()}
_TEMP = re.compile("|".join(f"(?:{p})" for p in _TEMPORARY))


def owns(kind: str, rel: str) -> bool:
    """Whether ``rel`` (relative to the output) is a name a job writing ``kind`` writes."""
    compiled = _COMPILED.get(kind)
    return compiled is not None and compiled.fullmatch(rel) is not None


def is_shard(rel: str) -> bool:
    """Whether ``rel`` names a dataset's data shard."""
    return re.fullmatch(SHARDS, rel) is not None


def temporary(rel: str) -> bool:
    """Whether ``rel`` is a name only this tool's temporary files have."""
    return _TEMP.fullmatch(rel) is not None


def probes(depth_prefixes: tuple[str, ...] = ("",)) -> list[str]:
    """Example relative names of everything written below an output (under each prefix, e.g. a run's steps)."""
    return [prefix + name for prefix in depth_prefixes for name in EXAMPLES]
