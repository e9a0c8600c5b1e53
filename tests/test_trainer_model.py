"""The autoencoder model and its exports, on tiny dimensions."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import reducers
from pipelines import train as task
from tests.hub_models import save_text_encoder
from trainer import export
from trainer.model import DenseTied, build_autoencoder, rank_loss, reconstruction_loss, similarity_loss

DIM = 24


def _x(n=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _codes(model, x):
    return keras.ops.convert_to_numpy(model.reduce(x))


def test_dense_tied_shares_one_kernel_and_gets_gradients_from_both_paths():
    model = build_autoencoder(DIM, sizes=[12, 6], tied=True)
    enc0, enc1 = model.reducer_layers
    dec1, dec0 = model.decoder_layers
    assert isinstance(dec0, DenseTied) and dec0.partner is enc0 and dec1.partner is enc1
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert [tuple(k.shape) for k in kernels] == [(DIM, 12), (12, 6)]
    # decoder layers own only a bias
    assert [tuple(w.shape) for w in dec0.weights] == [(DIM,)]
    assert len(model.trainable_weights) == 6

    x = tf.constant(_x())
    codes = tf.constant(_codes(model, x))
    with tf.GradientTape(persistent=True) as tape:
        through_encoder = tf.reduce_sum(model.reduce(x))
        through_decoder = tf.reduce_sum(model.decode(codes) ** 2)
        full = tf.reduce_sum((model(x) - x) ** 2)
    k0 = enc0.kernel.value
    for loss in (through_encoder, through_decoder, full):
        grad = tape.gradient(loss, k0)
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
    # the decoder really reads the kernel: changing it changes the decoder output
    before = model.decode(codes).numpy()
    enc0.kernel.assign(enc0.kernel.value * 2.0)
    assert not np.allclose(before, model.decode(codes).numpy())


def test_untied_decoder_has_its_own_kernels():
    model = build_autoencoder(DIM, sizes=[12, 6], tied=False)
    kernels = [tuple(w.shape) for w in model.weights if w.path.endswith("kernel")]
    assert kernels == [(DIM, 12), (12, 6), (6, 12), (12, DIM)]
    assert model(_x()).shape == (64, DIM)


def test_bottleneck_codes_have_unit_norm_only_when_normalized():
    x = _x()
    norms = np.linalg.norm(_codes(build_autoencoder(DIM, sizes=[12, 6]), x), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    raw = np.linalg.norm(_codes(build_autoencoder(DIM, sizes=[12, 6], normalize=False), x), axis=1)
    assert np.abs(raw - 1.0).max() > 1e-2


def test_the_default_model_is_untied_as_the_trainer_default_is():
    assert build_autoencoder(DIM).get_config()["tied"] is False
    assert task.TrainConfig.tied is False


def test_former_class_names_still_load():
    old_bottleneck = keras.saving.get_registered_object("use_shrink>L2Normalize")
    x = _x(4)
    np.testing.assert_allclose(np.linalg.norm(keras.ops.convert_to_numpy(old_bottleneck(epsilon=1e-12)(x)),
                                              axis=1), 1.0, atol=1e-6)
    config = build_autoencoder(DIM, sizes=[12, 6], tied=True).get_config()
    old = keras.saving.get_registered_object("use_shrink>TiedAutoencoder").from_config(config)
    assert old.tied is True and old.sizes == [12, 6]


def test_save_load_round_trip_in_safe_mode_gives_identical_codes(tmp_path):
    model = build_autoencoder(DIM, sizes=[12, 6], tied=True, loss="cosine", similarity_weight=0.5,
                              rank_weight=2.0, rank_temperature=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = _x()
    model.fit(x, epochs=1, batch_size=16, verbose=0)  # weights differ from any fresh init
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(_codes(loaded, x), _codes(model, x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)))
    assert len(loaded.weights) == len(model.weights)
    assert loaded.decoder_layers[-1].partner is loaded.reducer_layers[0]


def test_losses():
    x = _x()
    assert float(reconstruction_loss(x, x)) == 0.0
    assert float(reconstruction_loss(x, 3.0 * x, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(reconstruction_loss(x, -x, "cosine")) == pytest.approx(2.0, abs=1e-6)
    # the similarity term ignores scale and rotation, and sees any change of geometry
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(DIM, DIM)))
    assert float(similarity_loss(x, 2.0 * x @ q.astype(np.float32))) == pytest.approx(0.0, abs=1e-6)
    assert float(similarity_loss(x, _x(seed=2))) > 1e-3
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        reconstruction_loss(x, x, "l1")


def test_rank_loss_against_numpy_and_its_invariances():
    x, codes = _x(8), _x(8, seed=3)[:, :5]

    def softmax_rows(s):
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def cosines(v):
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        s = (u @ u.T) / 0.1
        np.fill_diagonal(s, -np.inf)  # a row is not its own neighbour
        return s

    p, q = softmax_rows(cosines(x)), softmax_rows(cosines(codes))
    off = ~np.eye(8, dtype=bool)
    want = np.mean(np.sum(np.where(off, p * (np.log(np.where(off, p, 1)) - np.log(np.where(off, q, 1))), 0), 1))
    assert float(rank_loss(x, codes, 0.1)) == pytest.approx(want, rel=1e-4)
    # zero when the geometry is kept (scale and rotation do not matter), positive otherwise
    q_rot, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(DIM, DIM)))
    assert float(rank_loss(x, 3.0 * x @ q_rot.astype(np.float32))) == pytest.approx(0.0, abs=1e-5)
    assert float(rank_loss(x, codes)) > 1e-2


def test_similarity_term_changes_the_loss():
    x = _x()
    plain = build_autoencoder(DIM, sizes=[12, 6])
    weighted = build_autoencoder(DIM, sizes=[12, 6], similarity_weight=1.0)
    ranked = build_autoencoder(DIM, sizes=[12, 6], rank_weight=1.0)
    weighted.set_weights(plain.get_weights())
    ranked.set_weights(plain.get_weights())
    y = plain(x)
    assert float(weighted.compute_loss(x, None, y)) > float(plain.compute_loss(x, None, y))
    assert float(ranked.compute_loss(x, None, y)) > float(plain.compute_loss(x, None, y))


def test_dense_tied_without_partner_fails_clearly():
    with pytest.raises(ValueError, match="no partner"):
        DenseTied()(np.zeros((1, 4), np.float32))


def test_exported_head_gives_the_keras_encoder_codes(tmp_path):
    model = build_autoencoder(DIM, sizes=[12, 6])
    x = _x()
    head, entry = export.export_head(model, str(tmp_path))
    want = _codes(model, x)
    model.reducer_layers[0].kernel.assign(model.reducer_layers[0].kernel.value + 0.1)  # the live model moves on
    np.testing.assert_allclose(reducers.Head.load(str(tmp_path), entry)(x), want, atol=1e-5)  # the data, as run
    fn = tf.saved_model.load(str(tmp_path / "head")).signatures["serving_default"]  # the serving export
    assert fn.structured_input_signature[1]["embedding"].shape.as_list() == [None, DIM]
    out = fn(embedding=tf.constant(x))
    assert set(out) == {"reduced"} and out["reduced"].dtype == tf.float32
    assert out["reduced"].shape == (64, 6)
    np.testing.assert_allclose(out["reduced"].numpy(), want, atol=1e-6)
    assert not np.allclose(out["reduced"].numpy(), _codes(model, x), atol=1e-3)


def test_text_model_chains_a_hub_encoder_and_the_head(tmp_path):
    model = build_autoencoder(512, sizes=[32, 8])
    head, _ = export.export_head(model, str(tmp_path))
    hub_dir = save_text_encoder(str(tmp_path / "encoder"))  # a stand-in for USE on TF Hub
    text_dir = export.export_text_model(hub_dir, head, str(tmp_path / "text_model"))

    text = tf.constant(["gold rallies", "stocks fall", "gold rallies"])
    fn = tf.saved_model.load(text_dir).signatures["serving_default"]
    got = fn(text=text)["reduced"].numpy()
    want = _codes(model, tf.saved_model.load(hub_dir)(text).numpy())
    assert got.shape == (3, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got[0], got[2])
    assert not np.allclose(got[0], got[1])
