"""PCA: the numpy reference, and fit-pca (tf.Transform) agreeing with it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import manifests, reducers, transform_fn
from core import pca as pca_math
from core.errors import ArtifactError, InputError
from pipelines import fit_pca
from tests.fixtures import correlated_vectors, write_embedding_dataset
from transforms import pca as pca_transform

ROWS, DIM, K = 300, 64, 8


def test_explained_variance_ratio_of_eigenvectors_is_their_eigenvalue_share():
    x = correlated_vectors(200, 32)
    cov = np.cov(x.T, bias=True)
    values, vectors = np.linalg.eigh(cov)
    ratio = pca_math.explained_variance_ratio(cov, vectors[:, ::-1][:, :10])
    np.testing.assert_allclose(ratio, values[::-1][:10] / values.sum(), rtol=1e-9)


# ---------------------------------------------------------------- fit-pca

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("emb")
    x = correlated_vectors(ROWS, DIM, seed=1)
    write_embedding_dataset(directory, x, num_shards=3)
    return str(directory), x


def _fit(dataset_dir, out, *extra):
    return fit_pca.main(["--input", dataset_dir, "--output", str(out), "--output_dim", str(K), *extra])


def _components(out) -> dict:
    values = transform_fn.read(str(out / fit_pca.TRANSFORM_FN), pca_transform.NAMES)
    return values


@pytest.fixture(scope="module")
def centered(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pca") / "centered"
    return out, _fit(dataset[0], out)


@pytest.fixture(scope="module")
def uncentered(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pca") / "uncentered"
    return out, _fit(dataset[0], out, "--no-center", "--l2_normalize")


def test_tft_components_match_numpy(dataset, centered):
    out, manifest = centered
    ref = pca_math.fit(dataset[1], K)
    got = _components(out)
    cos = np.sum(got[pca_transform.MATRIX] * ref["components"], axis=0)
    assert np.all(np.abs(cos) > 0.999), cos
    np.testing.assert_allclose(got[pca_transform.MEAN], ref["mean"], atol=1e-6)
    np.testing.assert_allclose(manifest["explained_variance_ratio"], ref["explained_variance_ratio"], rtol=1e-4)
    assert manifest["rows_analyzed"] == ROWS and manifest["input_dim"] == DIM and manifest["output_dim"] == K
    assert manifest["center"] is True and len(manifest["inputs"]) == 1


def test_centered_head_projects_like_numpy(dataset, centered):
    out, _ = centered
    ref = pca_math.fit(dataset[1], K)
    reducer = reducers.load_reducer(str(out))
    assert (reducer.kind, reducer.input_dim, reducer.output_dim) == ("pca", DIM, K)
    test = correlated_vectors(50, DIM, seed=7)  # unseen rows
    aligned = pca_math.align_signs(ref["components"], _components(out)[pca_transform.MATRIX])
    np.testing.assert_allclose(reducer(test), pca_math.project(test, aligned, ref["mean"]), atol=1e-5)


def test_uncentered_l2_head_projects_like_numpy(dataset, uncentered):
    out, manifest = uncentered
    assert manifest["center"] is False and manifest["l2_normalize"] is True
    ref = pca_math.fit(dataset[1], K)
    aligned = pca_math.align_signs(ref["components"], _components(out)[pca_transform.MATRIX])
    test = correlated_vectors(50, DIM, seed=8)
    got = reducers.load_reducer(str(out))(test)
    np.testing.assert_allclose(got, pca_math.project(test, aligned, None, l2_normalize=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_centering_changes_the_projection(dataset, centered, uncentered):
    test = correlated_vectors(20, DIM, seed=9)
    a = reducers.load_reducer(str(centered[0]))(test)
    b = reducers.load_reducer(str(uncentered[0]))(test)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    assert not np.allclose(np.abs(a), np.abs(b), atol=1e-3)


def test_query_input_is_fitted_on_with_its_share(dataset, tmp_path):
    queries = correlated_vectors(20, DIM, seed=5) + 3.0  # another population: the mean must move toward it
    write_embedding_dataset(tmp_path / "queries", queries, num_shards=1)
    manifest = _fit(dataset[0], tmp_path / "pca", "--query_input", str(tmp_path / "queries"),
                    "--query_share", "0.25")
    repeat = fit_pca.query_repeats(0.25, ROWS, 20)
    assert repeat == 5 and manifest["rows_analyzed"] == ROWS + 20 * repeat  # 1/3 * 300 / 20 = 5
    ref = pca_math.fit(np.concatenate([dataset[1], np.repeat(queries, repeat, axis=0)]), K)
    got = _components(tmp_path / "pca")
    np.testing.assert_allclose(got[pca_transform.MEAN], ref["mean"], atol=1e-5)
    assert np.all(np.abs(np.sum(got[pca_transform.MATRIX] * ref["components"], axis=0)) > 0.999)
    with pytest.raises(InputError, match="query_share"):
        _fit(dataset[0], tmp_path / "bad", "--query_input", str(tmp_path / "queries"), "--query_share", "1")


def test_sampling_is_reproducible_by_seed(dataset, tmp_path):
    first = _fit(dataset[0], tmp_path / "a", "--sample_fraction", "0.5", "--seed", "3")
    second = _fit(dataset[0], tmp_path / "b", "--sample_fraction", "0.5", "--seed", "3")
    assert 0.3 * ROWS < first["rows_analyzed"] < 0.7 * ROWS
    assert first["rows_analyzed"] == second["rows_analyzed"]
    # Same rows; the float sums may combine in another order, so equal up to rounding.
    a, b = _components(tmp_path / "a"), _components(tmp_path / "b")
    np.testing.assert_allclose(a[pca_transform.COVARIANCE], b[pca_transform.COVARIANCE], atol=1e-9)
    assert np.all(np.abs(np.sum(a[pca_transform.MATRIX] * b[pca_transform.MATRIX], axis=0)) > 0.999999)


def test_rejects_output_dim_out_of_range(dataset, tmp_path):
    for bad in ("0", str(DIM + 1)):
        with pytest.raises(InputError, match="output_dim"):
            fit_pca.main(["--input", dataset[0], "--output", str(tmp_path / "x"), "--output_dim", bad])


def test_refuses_output_of_a_different_run(dataset, centered):
    out, _ = centered
    with pytest.raises(ArtifactError, match="different run"):
        _fit(dataset[0], out, "--no-center")
    assert json.loads((out / manifests.MANIFEST).read_text())["center"] is True


def test_transform_fn_is_usable_with_tf_transform_and_matches_the_head(centered):
    import tensorflow as tf
    import tensorflow_transform as tft

    out, _ = centered
    test = correlated_vectors(10, DIM, seed=11)
    layer = tft.TFTransformOutput(str(out)).transform_features_layer()
    transformed = layer({"embedding": tf.constant(test)})
    np.testing.assert_allclose(transformed[pca_transform.REDUCED].numpy(),
                               reducers.load_reducer(str(out))(test), atol=1e-5)
