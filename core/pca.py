"""PCA algebra in plain numpy: explained variance, projection, and the reference fit tf.Transform is tested against.

Same conventions as ``tft.pca``: biased covariance (divide by n), components
are the eigenvectors of the *centered* covariance sorted by decreasing
eigenvalue, one component per column of a ``[input_dim, k]`` matrix.
"""
from __future__ import annotations

import numpy as np


def covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, biased covariance)`` of the rows of ``x``, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty 2-D array, got shape {x.shape}")
    mean = x.mean(axis=0)
    centered = x - mean
    return mean, centered.T @ centered / x.shape[0]


def eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and matching eigenvectors (columns) of a covariance."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def fit(x: np.ndarray, output_dim: int) -> dict:
    """PCA of ``x``: mean, ``[d, k]`` components, kept eigenvalues, explained-variance ratios."""
    mean, cov = covariance(x)
    if not 1 <= output_dim <= cov.shape[0]:
        raise ValueError(f"output_dim must be in 1..{cov.shape[0]}, got {output_dim}")
    values, vectors = eigen(cov)
    return {"mean": mean, "components": vectors[:, :output_dim],
            "eigenvalues": values[:output_dim],
            "explained_variance_ratio": explained_variance_ratio(cov, vectors[:, :output_dim])}


def project(x: np.ndarray, components: np.ndarray, mean: np.ndarray | None = None,
            l2_normalize: bool = False) -> np.ndarray:
    """``(x - mean) @ components`` (no centering when ``mean`` is None), optionally unit-length rows."""
    x = np.asarray(x, dtype=np.float64)
    y = (x - mean if mean is not None else x) @ components
    if l2_normalize:
        y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y


def align_signs(components: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip each column of ``components`` to point the same way as ``reference``'s."""
    signs = np.sign(np.sum(components * reference, axis=0))
    signs[signs == 0] = 1
    return components * signs


def explained_variance_ratio(cov: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Share of the total variance (trace of ``cov``) along each component.

    ``v' C v`` equals the eigenvalue for an exact eigenvector, so this works
    on components found elsewhere (tf.Transform) without trusting their order.
    """
    total = float(np.trace(cov))
    along = np.einsum("ij,ik,kj->j", components, cov, components)
    return along / total if total > 0 else np.zeros_like(along)
