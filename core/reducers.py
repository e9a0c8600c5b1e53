"""Reducer artifacts: weights stored as arrays, the computation rebuilt here from an allow-list of steps.

A reducer artifact is a directory holding ``manifest.json`` (kind ``pca`` or
``autoencoder``, with ``input_dim``, ``output_dim`` and ``head``) and
``reducer.npz``, plain float arrays read with ``allow_pickle=False``. The
manifest's ``head`` says how to apply them, as a list of steps from a fixed
set: ``subtract`` an array, ``dense`` (kernel, optional bias, an activation
from ``ACTIVATIONS``) and ``l2_normalize``. Nothing in an artifact is ever
run as code: this module computes those steps in numpy. ``head/`` holds the
same computation as a TF SavedModel (``serving_default``: ``embedding`` float32
``[None, input_dim]`` -> ``{'reduced': [None, output_dim]}``) for TF Serving
and other consumers; this project writes it and never loads it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from core import files, manifests
from core.errors import ArtifactError

KINDS = ("pca", "autoencoder")
IDENTITY = "identity"  # the raw vectors, as a reducer that changes nothing
WEIGHTS = "reducer.npz"
HEAD_DIR = "head"
SIGNATURE = "serving_default"
INPUT_NAME = "embedding"
OUTPUT_NAME = "reduced"
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "selu": lambda x: np.float32(_SELU_SCALE) * np.where(x > 0, x,
                                                         np.float32(_SELU_ALPHA) * np.expm1(np.minimum(x, 0))),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "tanh": np.tanh,
    "sigmoid": lambda x: np.float32(1) / (np.float32(1) + np.exp(-x)),
}
OPS = ("subtract", "dense", "l2_normalize")


@dataclass(frozen=True)
class Head:
    """A reduction as data: ``steps`` (JSON) over named float32 ``arrays``; callable on ``[n, input_dim]``."""

    steps: tuple[dict, ...]
    arrays: dict

    def __post_init__(self):
        _check_steps(self.steps, self.arrays)

    @classmethod
    def pca(cls, mean: np.ndarray, matrix: np.ndarray, center: bool = True, l2_normalize: bool = False) -> Head:
        steps = ([{"op": "subtract", "array": "mean"}] if center else []) + [
            {"op": "dense", "kernel": "matrix", "bias": None, "activation": "linear"}]
        arrays = {"matrix": np.asarray(matrix, np.float32)} | ({"mean": np.asarray(mean, np.float32)} if center else {})
        return cls(tuple(steps + ([{"op": "l2_normalize"}] if l2_normalize else [])), arrays)

    @property
    def input_dim(self) -> int:
        return _dims(self.steps, self.arrays)[0]

    @property
    def output_dim(self) -> int:
        return _dims(self.steps, self.arrays)[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float32)
        for step in self.steps:
            if step["op"] == "subtract":
                y = y - self.arrays[step["array"]]
            elif step["op"] == "dense":
                y = y @ self.arrays[step["kernel"]]
                if step["bias"]:
                    y = y + self.arrays[step["bias"]]
                y = ACTIVATIONS[step["activation"]](y).astype(np.float32, copy=False)
            else:
                norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", y, y), np.float32(1e-12)))
                y = y / norms[:, None]
        return y

    def save(self, directory: str, name: str = WEIGHTS) -> dict:
        """Write the arrays as ``name`` (npz, no pickle); returns the manifest's ``head`` entry."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays)
        files.write_atomic(files.join(directory, name), buffer.getvalue())
        return {"weights": name, "steps": list(self.steps)}

    @classmethod
    def load(cls, directory: str, entry: object) -> Head:
        """The head a manifest's ``head`` entry describes; ArtifactError unless it is plain, finite data."""
        if not isinstance(entry, dict) or entry.get("weights") != WEIGHTS \
                or not isinstance(entry.get("steps"), list):
            raise ArtifactError(f"{manifests.path(directory)} is corrupt: no valid 'head' entry")
        try:
            with np.load(io.BytesIO(files.read_bytes(files.join(directory, entry["weights"]))),
                         allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except (ValueError, OSError, KeyError) as e:
            raise ArtifactError(f"{directory}/{entry['weights']} is not a readable array file: {e}") from None
        try:
            return cls(tuple(entry["steps"]), arrays)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ArtifactError(f"{directory}/{WEIGHTS} with its manifest's steps is not a valid reduction: "
                                f"{type(e).__name__}: {e}") from None

    def export_saved_model(self, path: str, more_signatures=None) -> None:
        """Write this computation as a TF SavedModel at ``path`` (for serving; never loaded by this project).

        ``more_signatures(module)`` may add signatures built on the module's ``reduce`` (see ``core.codecs``).
        """
        import tensorflow as tf

        module = tf_module(self)
        signatures = {SIGNATURE: module.serve, **(more_signatures(module) if more_signatures else {})}
        tf.saved_model.save(module, path, signatures=signatures)


def _check_steps(steps: tuple, arrays: dict) -> None:
    """ValueError unless every step is allow-listed, names existing float arrays, and the shapes chain."""
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim not in (1, 2) \
                or not np.isfinite(value).all():
            raise ValueError(f"weight {name!r} is not a finite float vector or matrix")
    for step in steps:
        if not isinstance(step, dict) or step.get("op") not in OPS:
            raise ValueError(f"unknown reduction step {step!r}; allowed: {', '.join(OPS)}")
        wanted = {"subtract": ("array",), "dense": ("kernel", "bias", "activation"), "l2_normalize": ()}[step["op"]]
        if set(step) != {"op", *wanted}:
            raise ValueError(f"step {step} must have exactly the keys op, {', '.join(wanted) or '(none)'}")
        names = [step[k] for k in ("array", "kernel", "bias") if step.get(k) is not None]
        if not all(isinstance(n, str) and n in arrays for n in names):
            raise ValueError(f"step {step} names a missing weight")
        if step["op"] == "dense" and (not isinstance(step["activation"], str) or step["activation"] not in ACTIVATIONS):
            raise ValueError(f"activation {step.get('activation')!r} is not one of {', '.join(ACTIVATIONS)}")
    _dims(steps, arrays)


def _dims(steps: tuple, arrays: dict) -> tuple[int, int]:
    """(input, output) dimension of the steps; ValueError when shapes do not chain."""
    first = next((s for s in steps if s["op"] != "l2_normalize"), None)
    if first is None:
        raise ValueError("a reduction needs a subtract or dense step")
    width = arrays[first.get("array") or first["kernel"]].shape[0]
    start = width
    for step in steps:
        if step["op"] == "subtract" and arrays[step["array"]].shape != (width,):
            raise ValueError(f"{step['array']!r} has shape {arrays[step['array']].shape}, expected ({width},)")
        if step["op"] == "dense":
            kernel = arrays[step["kernel"]]
            if kernel.ndim != 2 or kernel.shape[0] != width:
                raise ValueError(f"kernel {step['kernel']!r} has shape {kernel.shape}, expected ({width}, k)")
            width = kernel.shape[1]
            if step["bias"] and arrays[step["bias"]].shape != (width,):
                raise ValueError(f"bias {step['bias']!r} has shape {arrays[step['bias']].shape}, expected ({width},)")
    return int(start), int(width)


def tf_module(head: Head):
    """The steps in TF ops (TensorFlow imported here: reading and applying a head needs none)."""
    import tensorflow as tf

    class TFHead(tf.Module):
        """The same steps in TF ops (variables from the arrays), for the exported SavedModel."""

        def __init__(self, head: Head):
            super().__init__(name="reduction_head")
            self.steps = [dict(s) for s in head.steps]
            self.weights = {k: tf.Variable(v.astype(np.float32), trainable=False, name=k.replace("/", "_"))
                            for k, v in head.arrays.items()}
            self.input_dim = head.input_dim
            spec = tf.TensorSpec([None, head.input_dim], tf.float32, name=INPUT_NAME)
            self.serve = tf.function(lambda embedding: {OUTPUT_NAME: self.reduce(embedding)}, input_signature=[spec])

        def reduce(self, x):
            activations = {"linear": tf.identity, "relu": tf.nn.relu, "selu": tf.nn.selu, "elu": tf.nn.elu,
                           "tanh": tf.tanh, "sigmoid": tf.sigmoid}
            for step in self.steps:
                if step["op"] == "subtract":
                    x = x - self.weights[step["array"]]
                elif step["op"] == "dense":
                    x = tf.matmul(x, self.weights[step["kernel"]])
                    x = x + self.weights[step["bias"]] if step["bias"] else x
                    x = activations[step["activation"]](x)
                else:
                    x = tf.math.l2_normalize(x, axis=1, epsilon=1e-12)
            return x

    return TFHead(head)


class Reducer:
    """A loaded reducer artifact: ``reducer(x [n, input_dim]) -> [n, output_dim]`` float32."""

    def __init__(self, path: str, manifest: dict, head: Head, kind: str | None = None):
        self.path, self.manifest, self.head = path, manifest, head
        self.kind = kind or manifest["kind"]
        self.input_dim, self.output_dim = head.input_dim, head.output_dim

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"reducer {self.path} takes [n, {self.input_dim}] vectors, got shape {x.shape}")
        return self.head(x)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    def summary(self) -> dict:
        """What a downstream manifest records about the reducer it used."""
        keys = ("kind", "input_dim", "output_dim", "fingerprint", "digest", "created_utc", "center", "l2_normalize")
        return {"path": files.absolute(self.path), **{k: self.manifest[k] for k in keys if k in self.manifest}}


class Identity:
    """The raw vectors as a reducer (``identity``): what the coded raw-512 representations start from."""

    kind = "raw"
    path = IDENTITY
    digest = IDENTITY
    head = None
    manifest = {"kind": "raw", "fingerprint": IDENTITY, "digest": IDENTITY}

    def __init__(self, dim: int):
        self.input_dim = self.output_dim = int(dim)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"the identity reducer takes [n, {self.input_dim}] vectors, got shape {x.shape}")
        return x

    def summary(self) -> dict:
        return {"path": IDENTITY, "kind": "raw", "input_dim": self.input_dim, "output_dim": self.output_dim,
                "digest": IDENTITY}


def load_reducer(path: str) -> Reducer:
    """Load and check a reducer artifact (every file's sha256, the weights, the dimensions)."""
    manifest = manifests.read(path, kind=KINDS, verify="full")
    head = Head.load(path, manifest.get("head"))
    if (head.input_dim, head.output_dim) != (manifest.get("input_dim"), manifest.get("output_dim")):
        raise ArtifactError(f"reducer {path}: its weights map {head.input_dim} -> {head.output_dim} dims but the "
                            f"manifest says {manifest.get('input_dim')} -> {manifest.get('output_dim')}")
    return Reducer(path, manifest, head)


def check_input_dim(reducer, data_dim: int, data_path: str) -> None:
    if reducer.input_dim != data_dim:
        raise ArtifactError(f"reducer {reducer.path} takes {reducer.input_dim}-d vectors but {data_path} "
                            f"holds {data_dim}-d vectors")
