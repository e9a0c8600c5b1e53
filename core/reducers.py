"""Reducer artifacts: load either reducer the same way, and export heads identically.

A reducer artifact is a directory holding ``manifest.json`` (kind ``pca`` or
``autoencoder``, with ``input_dim`` and ``output_dim``) and ``head/``, a plain
TF SavedModel whose ``serving_default`` signature maps ``embedding`` float32
``[None, input_dim]`` to ``{'reduced': float32 [None, output_dim]}``. Any TF
consumer can load the head without tf.Transform or Keras; no pickle anywhere.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from core import files, manifests
from core.errors import ArtifactError

KINDS = ("pca", "autoencoder")
IDENTITY = "identity"  # the raw vectors, as a reducer that changes nothing
HEAD_DIR = "head"
SIGNATURE = "serving_default"
INPUT_NAME = "embedding"
OUTPUT_NAME = "reduced"


def head_path(artifact_dir: str) -> str:
    return files.join(artifact_dir, HEAD_DIR)


def save_head(module: tf.Module, artifact_dir: str, input_dim: int) -> str:
    """Export ``module`` (callable on float32 ``[n, input_dim]``) as ``<artifact_dir>/head``."""

    @tf.function(input_signature=[tf.TensorSpec([None, input_dim], tf.float32, name=INPUT_NAME)])
    def serve(embedding):
        return {OUTPUT_NAME: tf.cast(module(embedding), tf.float32)}

    module.serve = serve
    path = head_path(artifact_dir)
    tf.saved_model.save(module, path, signatures={SIGNATURE: serve})
    return path


class LinearHead(tf.Module):
    """``(x - mean) @ matrix``, optionally L2-normalized rows: the PCA head."""

    def __init__(self, mean: np.ndarray, matrix: np.ndarray, l2_normalize: bool):
        super().__init__(name="pca_head")
        self.mean = tf.Variable(np.asarray(mean, np.float32), trainable=False, name="mean")
        self.matrix = tf.Variable(np.asarray(matrix, np.float32), trainable=False, name="matrix")
        self.l2_normalize = l2_normalize

    def __call__(self, x):
        y = tf.matmul(x - self.mean, self.matrix)
        return tf.math.l2_normalize(y, axis=1) if self.l2_normalize else y


class Reducer:
    """A loaded reducer artifact: ``reducer(x [n, input_dim]) -> [n, output_dim]`` float32."""

    def __init__(self, path: str, manifest: dict, loaded):
        self.path, self.manifest = path, manifest
        self.loaded = loaded  # owns the variables the signature reads
        self._fn = loaded.signatures[SIGNATURE]
        self.kind = manifest["kind"]
        self.input_dim = int(manifest["input_dim"])
        self.output_dim = int(manifest["output_dim"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"reducer {self.path} takes [n, {self.input_dim}] vectors, got shape {x.shape}")
        return self._fn(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy()

    def summary(self) -> dict:
        """What a downstream manifest records about the reducer it used."""
        keys = ("kind", "input_dim", "output_dim", "fingerprint", "created_utc", "center", "l2_normalize")
        return {"path": self.path, **{k: self.manifest[k] for k in keys if k in self.manifest}}


class Identity:
    """The raw vectors as a reducer (``identity``): what the coded raw-512 representations start from."""

    kind = "raw"
    path = IDENTITY
    manifest = {"kind": "raw", "fingerprint": IDENTITY}

    def __init__(self, dim: int):
        self.input_dim = self.output_dim = int(dim)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"the identity reducer takes [n, {self.input_dim}] vectors, got shape {x.shape}")
        return x

    def summary(self) -> dict:
        return {"path": IDENTITY, "kind": "raw", "input_dim": self.input_dim, "output_dim": self.output_dim}


def load_reducer(path: str) -> Reducer:
    """Load and check a reducer artifact; ArtifactError says what is wrong with it."""
    manifest = manifests.read(path, kind=KINDS)
    for key in ("input_dim", "output_dim"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 1:
            raise ArtifactError(f"{manifests.path(path)} is corrupt: '{key}' is {manifest.get(key)!r}")
    head = head_path(path)
    if not files.exists(files.join(head, "saved_model.pb")):
        raise ArtifactError(f"reducer artifact {path} has no SavedModel at {head}")
    try:
        loaded = tf.saved_model.load(head)
    except Exception as e:  # noqa: BLE001 - any load failure means a corrupt artifact
        raise ArtifactError(f"reducer head {head} cannot be loaded (corrupt?): {e}") from e
    if SIGNATURE not in loaded.signatures:
        raise ArtifactError(f"reducer head {head} has no '{SIGNATURE}' signature")
    fn = loaded.signatures[SIGNATURE]
    spec = fn.structured_input_signature[1].get(INPUT_NAME)
    out = fn.structured_outputs.get(OUTPUT_NAME)
    if spec is None or out is None:
        raise ArtifactError(f"reducer head {head} must map '{INPUT_NAME}' to '{OUTPUT_NAME}'")
    if spec.shape[-1] != manifest["input_dim"] or out.shape[-1] != manifest["output_dim"]:
        raise ArtifactError(
            f"reducer {path}: head maps {spec.shape[-1]} -> {out.shape[-1]} dims but the manifest says "
            f"{manifest['input_dim']} -> {manifest['output_dim']}")
    return Reducer(path, manifest, loaded)


def check_input_dim(reducer: Reducer, data_dim: int, data_path: str) -> None:
    if reducer.input_dim != data_dim:
        raise ArtifactError(f"reducer {reducer.path} takes {reducer.input_dim}-d vectors but {data_path} "
                            f"holds {data_dim}-d vectors")
