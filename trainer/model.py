"""The autoencoder that reduces 512-d sentence embeddings to 128-d codes.

Reducing half: Dense layers (selu by default) down to the code size, then an
optional unit-L2 normalization (Keras's ``UnitNormalization``), so that a
code's dot product is a cosine. Decoder: mirrored layers; with tying on
(the reference design), each decoder layer is a ``DenseTied`` that
multiplies by the *transposed kernel of its reducing partner* and owns only
its bias (half the parameters, a built-in regularizer). The last decoder
layer is linear and outputs the input size. ("Encoder" in this project is
the sentence encoder only; the autoencoder's first half is the reducer.)

Everything is rebuilt from plain config values (layer sizes, activation,
flags), so a saved ``.keras`` model reloads in Keras safe mode.
"""
from __future__ import annotations

import keras
from keras import ops

from trainer.options import LOSSES

PACKAGE = "use_shrink"


@keras.saving.register_keras_serializable(package=PACKAGE, name="L2Normalize")
class _LegacyL2Normalize(keras.layers.UnitNormalization):
    """Loads models saved with this project's former bottleneck layer ``L2Normalize`` (same math)."""

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseTied(keras.layers.Layer):
    """A dense layer using the transposed kernel of a partner ``Dense``.

    It owns only its bias: ``y = act(x @ partner.kernel.T + bias)``. The
    partner is an object reference, not config; the model that owns both
    layers (``Autoencoder``) re-links them when it is rebuilt from config.
    """

    def __init__(self, partner: keras.layers.Dense | None = None, activation=None,
                 use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        # Not tracked as a sub-layer: the kernel belongs to the partner alone,
        # so it is stored, saved and counted once.
        object.__setattr__(self, "_partner", partner)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    @property
    def partner(self) -> keras.layers.Dense:
        if self._partner is None:
            raise ValueError(f"DenseTied layer {self.name!r} has no partner Dense layer; "
                             "it is only usable inside the model that ties it")
        return self._partner

    @property
    def kernel(self):
        return ops.transpose(self.partner.kernel)

    @property
    def units(self) -> int:
        return int(self.partner.kernel.shape[0])

    def build(self, input_shape):
        partner = self.partner
        if not partner.built:
            raise ValueError(f"build the partner {partner.name!r} before DenseTied {self.name!r}")
        if input_shape[-1] is not None and int(input_shape[-1]) != partner.units:
            raise ValueError(f"DenseTied {self.name!r} gets {input_shape[-1]} features, "
                             f"its partner {partner.name!r} outputs {partner.units}")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") \
            if self.use_bias else None

    def call(self, x):
        y = ops.matmul(x, self.kernel)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias}


def reconstruction_loss(x, x_hat, kind: str = "mse"):
    """Mean squared error, or mean (1 - cosine) between rows."""
    if kind == "mse":
        return ops.mean(ops.square(x - x_hat))
    if kind == "cosine":
        cos = ops.sum(_unit(x) * _unit(x_hat), axis=-1)
        return ops.mean(1.0 - cos)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose from {LOSSES}")


def similarity_loss(x, codes):
    """Mean squared difference between in-batch pairwise cosine matrices.

    It asks the codes to keep the cosine geometry of the inputs, which is
    exactly what the reduction is judged on (fidelity of cosine scores).
    """
    ux, uc = _unit(x), _unit(codes)
    return ops.mean(ops.square(ops.matmul(ux, ops.transpose(ux)) - ops.matmul(uc, ops.transpose(uc))))


def rank_loss(x, codes, temperature: float = 0.05):
    """KL divergence between each row's softmax over in-batch cosines, inputs vs codes.

    The similarity term weighs every pair alike, and most random pairs are
    far apart; retrieval is decided by the few nearest ones. A softmax at a
    low temperature puts the weight on each row's nearest in-batch
    neighbours, so the codes learn to keep *which* rows are closest
    (listwise distillation of the raw ranking). Self-pairs are masked.
    """
    ux, uc = _unit(x), _unit(codes)
    self_mask = ops.eye(ops.shape(x)[0]) * 1e9
    raw = (ops.matmul(ux, ops.transpose(ux)) - self_mask) / temperature
    red = (ops.matmul(uc, ops.transpose(uc)) - self_mask) / temperature
    p = ops.softmax(raw, axis=-1)
    return ops.mean(ops.sum(p * (ops.log_softmax(raw, axis=-1) - ops.log_softmax(red, axis=-1)), axis=-1))


def _unit(x):
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Autoencoder(keras.Model):
    """Autoencoder whose loss is reconstruction (+ optional similarity and rank terms).

    ``call`` returns the reconstruction; ``reduce`` the bottleneck codes.
    Defaults are the trainer's: untied (``tied=True`` is the reference design).
    """

    def __init__(self, input_dim: int = 512, sizes: tuple[int, ...] | list[int] = (256, 128),
                 activation: str = "selu", normalize: bool = True, tied: bool = False,
                 loss: str = "mse", similarity_weight: float = 0.0, rank_weight: float = 0.0,
                 rank_temperature: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        if not sizes:
            raise ValueError("sizes must name at least the code size")
        if loss not in LOSSES:
            raise ValueError(f"unknown reconstruction loss {loss!r}; choose from {LOSSES}")
        self.input_dim, self.sizes = int(input_dim), [int(s) for s in sizes]
        self.activation_name, self.normalize, self.tied = activation, bool(normalize), bool(tied)
        self.loss_kind, self.similarity_weight = loss, float(similarity_weight)
        self.rank_weight, self.rank_temperature = float(rank_weight), float(rank_temperature)

        self.reducer_layers = [keras.layers.Dense(s, activation=activation, name=f"reducer_{i}")
                               for i, s in enumerate(self.sizes)]
        self.bottleneck = keras.layers.UnitNormalization(name="bottleneck") if self.normalize else None
        outputs = [self.input_dim, *self.sizes[:-1]]
        self.decoder_layers = []
        for i in reversed(range(len(self.sizes))):
            act = None if i == 0 else activation  # mirrored; the output layer is linear
            if self.tied:
                layer = DenseTied(self.reducer_layers[i], activation=act, name=f"decoder_{i}")
            else:
                layer = keras.layers.Dense(outputs[i], activation=act, name=f"decoder_{i}")
            self.decoder_layers.append(layer)

    @property
    def code_dim(self) -> int:
        return self.sizes[-1]

    def build(self, input_shape):
        shape = (None, self.input_dim)
        for layer in self.reducer_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        for layer in self.decoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        super().build(input_shape)

    def reduce(self, x):
        for layer in self.reducer_layers:
            x = layer(x)
        return self.bottleneck(x) if self.bottleneck is not None else x

    def decode(self, codes):
        for layer in self.decoder_layers:
            codes = layer(codes)
        return codes

    def call(self, x):
        return self.decode(self.reduce(x))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target = x if y is None else y
        loss = reconstruction_loss(target, y_pred, self.loss_kind)
        if self.similarity_weight or self.rank_weight:
            codes = self.reduce(x)
            if self.similarity_weight:
                loss = loss + self.similarity_weight * similarity_loss(x, codes)
            if self.rank_weight:
                loss = loss + self.rank_weight * rank_loss(x, codes, self.rank_temperature)
        return loss

    def get_config(self):
        return {"input_dim": self.input_dim, "sizes": list(self.sizes),
                "activation": self.activation_name, "normalize": self.normalize, "tied": self.tied,
                "loss": self.loss_kind, "similarity_weight": self.similarity_weight,
                "rank_weight": self.rank_weight, "rank_temperature": self.rank_temperature,
                "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE, name="TiedAutoencoder")
class _LegacyTiedAutoencoder(Autoencoder):
    """Loads models saved under the class's former name (their config names ``tied`` explicitly)."""


def build_autoencoder(input_dim: int, **config) -> Autoencoder:
    """A built ``Autoencoder`` (weights exist, ready to save or export)."""
    model = Autoencoder(input_dim=input_dim, **config)
    model.build((None, input_dim))
    return model
