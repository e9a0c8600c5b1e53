"""What storing does to vectors: the stored form read back, and its effect on STS pair similarities.

A representation is anything with ``encode(x) -> stored`` and ``decode(stored)
-> float32`` (``core.codecs.Representation``). Both sentences of an STS pair
go through encode/decode, as a stored corpus would; search is ``core.search``.
"""
from __future__ import annotations

import numpy as np

from core.evaluation import metrics


def stored(representation, x: np.ndarray) -> np.ndarray:
    """What reading back the stored form of ``x`` gives."""
    return representation.decode(representation.encode(x))


def sts_scores(representation, raw_a: np.ndarray, raw_b: np.ndarray, human: np.ndarray) -> dict:
    """Fidelity (raw vs stored pair cosines) and correlation with the human scores."""
    a, b = stored(representation, raw_a), stored(representation, raw_b)
    return {"fidelity": metrics.sts_fidelity(raw_a, raw_b, a, b), "human": metrics.human_correlation(a, b, human)}
