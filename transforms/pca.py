"""tf.Transform preprocessing for the PCA reducer.

``make_preprocessing_fn`` returns the ``preprocessing_fn`` that fit-pca
analyzes. Besides the ``reduced`` output it names the analyzer results
(``MEAN``, ``MATRIX``, ``COVARIANCE``) so that the fit job can read them out
of the written ``transform_fn`` and build a reduction head that needs no
tf.Transform. ``tft.pca`` only returns the eigenvectors of the centered
covariance; the centering itself needs ``tft.mean``, and the eigenvalues
(explained variance) need ``tft.covariance``.
"""
from __future__ import annotations

from typing import Callable

EMBEDDING = "embedding"
REDUCED = "reduced"
MEAN = "pca_mean"
MATRIX = "pca_matrix"
COVARIANCE = "pca_covariance"
NAMES = (MEAN, MATRIX, COVARIANCE)  # the analyzer results fit-pca reads back


def make_preprocessing_fn(output_dim: int, center: bool = True,
                          l2_normalize: bool = False) -> Callable[[dict], dict]:
    """``{'embedding': [n, d]} -> {'reduced': [n, output_dim]}`` fitted with ``tft.pca``."""

    def preprocessing_fn(inputs: dict) -> dict:
        import tensorflow as tf
        import tensorflow_transform as tft

        x = inputs[EMBEDDING]
        # float64 input, not just dtype=float64: the combiners form each batch's
        # x'x in the input's dtype, and E[xx'] - mm' needs the digits.
        x64 = tf.cast(x, tf.float64)
        matrix = tf.identity(tft.pca(x64, output_dim, dtype=tf.float64), name=MATRIX)
        mean = tf.identity(tft.mean(x64, reduce_instance_dims=False), name=MEAN)
        tf.identity(tft.covariance(x64, dtype=tf.float64), name=COVARIANCE)
        if center:
            x = x - tf.cast(mean, tf.float32)
        reduced = tf.matmul(x, tf.cast(matrix, tf.float32))
        if l2_normalize:
            reduced = tf.math.l2_normalize(reduced, axis=1)
        return {REDUCED: reduced}

    return preprocessing_fn
