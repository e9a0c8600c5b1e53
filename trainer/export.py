"""Exports of a trained autoencoder: its reducing half as arrays, a serving SavedModel, and a text model.

The reducing half is written as data (``reducer.npz`` plus the steps in the
manifest; see ``core.reducers``), which is what this project loads and runs.
For other consumers the same computation is also exported as a plain TF
SavedModel (``head/``, signature ``serving_default``: float32 ``embedding
[None, input_dim]`` -> ``{"reduced": [None, output_dim]}``), and, on request,
a text model chaining a TF Hub sentence encoder with it (``hub.load``; not
``hub.KerasLayer``, which is tf_keras-only): strings -> codes.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from core import files, reducers
from core.errors import InputError
from trainer.model import Autoencoder

TEXT_MODEL_DIR = "text_model"
KERAS_MODEL_FILE = "model.keras"


def head_of(model: Autoencoder) -> reducers.Head:
    """The reducing half of ``model`` as a data-only head: its Dense layers and the unit normalization."""
    if model.activation_name not in reducers.ACTIVATIONS:
        raise InputError(f"activation {model.activation_name!r} cannot be exported as data; use one of "
                         f"{', '.join(reducers.ACTIVATIONS)}")
    steps, arrays = [], {}
    for i, layer in enumerate(model.reducer_layers):
        arrays[f"kernel_{i}"] = np.asarray(layer.kernel.numpy(), np.float32)
        arrays[f"bias_{i}"] = np.asarray(layer.bias.numpy(), np.float32)
        steps.append({"op": "dense", "kernel": f"kernel_{i}", "bias": f"bias_{i}", "activation": model.activation_name})
    if model.bottleneck is not None:
        steps.append({"op": "l2_normalize"})
    return reducers.Head(tuple(steps), arrays)


def export_head(model: Autoencoder, artifact_dir: str) -> tuple[reducers.Head, dict]:
    """Write the reducing half as arrays and as ``<artifact_dir>/head``; the head and its manifest entry.

    The arrays must compute what the Keras model computes (checked on random rows).
    """
    head = head_of(model)
    probe = np.random.default_rng(0).normal(size=(16, model.input_dim)).astype(np.float32)
    expected = np.asarray(model.reduce(tf.constant(probe)))
    if not np.allclose(head(probe), expected, rtol=1e-4, atol=1e-5):
        diff = np.abs(head(probe) - expected).max()
        raise RuntimeError(f"the exported head disagrees with the model (max diff {diff})")
    entry = head.save(artifact_dir)
    head.export_saved_model(files.join(artifact_dir, reducers.HEAD_DIR))
    return head, entry


class _TextModel(tf.Module):
    def __init__(self, hub_handle: str, head: reducers.Head):
        import tensorflow_hub as hub  # only this export needs it

        super().__init__(name="text_to_reduced")
        self.encoder = hub.load(hub_handle)
        self.head = reducers.tf_module(head)
        encoder, reduce = self.encoder, self.head.reduce

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def embed_and_reduce(text):
            return {reducers.OUTPUT_NAME: reduce(tf.cast(encoder(text), tf.float32))}

        self.embed_and_reduce = embed_and_reduce


def export_text_model(hub_handle: str, head: reducers.Head, directory: str) -> str:
    """Write strings ``[None]`` -> ``{"reduced": [None, output_dim]}`` as a SavedModel.

    ``hub_handle`` is any TF Hub handle or SavedModel path whose object maps a
    string batch to embeddings (the Universal Sentence Encoder does).
    """
    module = _TextModel(hub_handle, head)
    tf.saved_model.save(module, directory, signatures={reducers.SIGNATURE: module.embed_and_reduce})
    return directory
