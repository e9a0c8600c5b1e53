"""The drift check flags a reducer used on data unlike what it was fitted on."""
from __future__ import annotations

import numpy as np

from core import pca as pca_math
from core.evaluation import drift


def _data(rng, basis, n):
    return rng.normal(size=(n, basis.shape[0])) @ basis + 0.01 * rng.normal(size=(n, basis.shape[1]))


def test_pair_fidelity_is_one_for_an_isometry_and_lower_for_a_bad_projection():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert drift.pair_fidelity(x, x @ q, pairs=2000) > 0.9999
    assert drift.pair_fidelity(x, x[:, :2], pairs=2000) < 0.5


def test_check_flags_a_domain_shift_but_not_the_same_domain():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    domain_a, domain_b = q[:8], q[8:16]  # orthogonal 8-d subspaces of a 32-d space
    fitted = pca_math.fit(_data(rng, domain_a, 2000), 8)
    reducer = lambda x: pca_math.project(x, fitted["components"], fitted["mean"])  # noqa: E731
    same = drift.check(reducer, _data(rng, domain_a, 1000), _data(rng, domain_a, 1000), threshold=0.05)
    shifted = drift.check(reducer, _data(rng, domain_a, 1000), _data(rng, domain_b, 1000), threshold=0.05)
    assert not same["drift"] and abs(same["drop"]) < 0.02
    assert shifted["drift"] and shifted["fidelity_new"] < same["fidelity_new"] - 0.3
