"""Exports of a trained autoencoder: the reduction head and a text model.

The head is the reducing half as a plain TF SavedModel with the interface the
PCA reducer shares: signature ``serving_default`` taking float32
``[None, input_dim]`` as ``embedding`` and returning
``{"reduced": float32 [None, output_dim]}``. Neither Keras nor this package
is needed to load it.

The text model chains a TF Hub sentence encoder (``hub.load``; not
``hub.KerasLayer``, which is tf_keras-only) and a head: strings -> codes.
"""
from __future__ import annotations

import tensorflow as tf

from core import reducers
from core.reducers import INPUT_NAME, OUTPUT_NAME, SIGNATURE
from trainer.model import Autoencoder

TEXT_MODEL_DIR = "text_model"
KERAS_MODEL_FILE = "model.keras"


class _ReductionHead(tf.Module):
    """The reducing half of a trained model, holding the variables it reads."""

    def __init__(self, model: Autoencoder):
        super().__init__(name="autoencoder_head")
        layers = [*model.reducer_layers] + ([model.bottleneck] if model.bottleneck is not None else [])
        # The backing tf.Variables, listed so that the SavedModel stores them.
        self.weights = [w.value for layer in layers for w in layer.weights]
        self._reduce = model.reduce

    def __call__(self, embedding):
        return self._reduce(embedding)


def export_head(model: Autoencoder, artifact_dir: str) -> str:
    """Write the reducing half of ``model`` as ``<artifact_dir>/head``; returns that path."""
    return reducers.save_head(_ReductionHead(model), artifact_dir, model.input_dim)


class _TextModel(tf.Module):
    def __init__(self, hub_handle: str, head_dir: str):
        import tensorflow_hub as hub  # only this export needs it

        super().__init__(name="text_to_reduced")
        self.encoder = hub.load(hub_handle)
        self.head = tf.saved_model.load(head_dir)
        head_fn = self.head.signatures[SIGNATURE]
        encoder = self.encoder

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def embed_and_reduce(text):
            embedding = tf.cast(encoder(text), tf.float32)
            return {OUTPUT_NAME: head_fn(**{INPUT_NAME: embedding})[OUTPUT_NAME]}

        self.embed_and_reduce = embed_and_reduce


def export_text_model(hub_handle: str, head_dir: str, directory: str) -> str:
    """Write strings ``[None]`` -> ``{"reduced": [None, output_dim]}`` as a SavedModel.

    ``hub_handle`` is any TF Hub handle or SavedModel path whose object maps a
    string batch to embeddings (the Universal Sentence Encoder does).
    """
    module = _TextModel(hub_handle, head_dir)
    tf.saved_model.save(module, directory, signatures={SIGNATURE: module.embed_and_reduce})
    return directory


def load_head(directory: str):
    """The head's ``serving_default`` function: ``fn(embedding=x)["reduced"]``."""
    return tf.saved_model.load(directory).signatures[SIGNATURE]
