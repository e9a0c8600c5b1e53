"""Drift check: does the current reducer still keep the similarity structure of new data?

A reducer fitted on one corpus can decay on live data that differs from it
(the reference work's warning about PCA). We compare, for the current
reducer, the *pair fidelity* (Pearson between raw and reduced cosines of
random pairs) on a sample of the new batch with the same measure on a sample
of the data it was fitted on. A drop larger than a threshold is drift.
The measure needs only the reducer's forward pass, so it works for PCA and
the autoencoder alike.
"""
from __future__ import annotations

import numpy as np

from core.evaluation import metrics


def pair_fidelity(raw: np.ndarray, reduced: np.ndarray, pairs: int = 20_000, seed: int = 0) -> float:
    """Pearson between raw and reduced cosines of ``pairs`` random distinct pairs of rows."""
    n = len(raw)
    if n < 2:
        raise ValueError("need at least two vectors to form pairs")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    j = (i + rng.integers(1, n, size=pairs)) % n  # j != i
    return metrics.pearson(metrics.paired_cosine(raw[i], raw[j]), metrics.paired_cosine(reduced[i], reduced[j]))


def check(reducer, reference: np.ndarray, new: np.ndarray, threshold: float, seed: int = 0) -> dict:
    """Fidelity of ``reducer`` on its fitting data vs on new data, and whether the drop exceeds ``threshold``."""
    on_reference = pair_fidelity(reference, reducer(reference), seed=seed)
    on_new = pair_fidelity(new, reducer(new), seed=seed)
    drop = on_reference - on_new
    return {"fidelity_reference": on_reference, "fidelity_new": on_new, "drop": drop,
            "threshold": threshold, "drift": bool(drop > threshold),
            "reference_rows": int(len(reference)), "new_rows": int(len(new))}
