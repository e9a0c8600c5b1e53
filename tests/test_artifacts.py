"""Manifests are validated before anything is used, and outputs are never clobbered silently."""
from __future__ import annotations

import json

import pytest

from pipelines.common import artifacts


def test_manifest_round_trip_and_validation(tmp_path):
    artifacts.write_manifest(str(tmp_path), "pca", {"input_dim": 512, "output_dim": 128})
    manifest = artifacts.read_manifest(str(tmp_path), "pca")
    assert manifest["output_dim"] == 128 and manifest["tool_versions"]["python"]
    with pytest.raises(artifacts.ArtifactError, match="expected embeddings"):
        artifacts.read_manifest(str(tmp_path), "embeddings")

    path = tmp_path / artifacts.MANIFEST
    path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(artifacts.ArtifactError, match="format_version 99"):
        artifacts.read_manifest(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(artifacts.ArtifactError, match="corrupt"):
        artifacts.read_manifest(str(tmp_path))
    path.unlink()
    with pytest.raises(artifacts.ArtifactError, match="incomplete"):
        artifacts.read_manifest(str(tmp_path))


def test_prepare_output_refuses_another_run_and_clears_leftovers(tmp_path):
    out = tmp_path / "out"
    artifacts.prepare_output(str(out), "fp-a", overwrite=False)
    (out / "data-00000-of-00001.tfrecord").write_text("partial")  # an interrupted run: no manifest
    artifacts.prepare_output(str(out), "fp-a", overwrite=False)
    assert not list(out.iterdir())
    artifacts.write_manifest(str(out), "embeddings", {"fingerprint": "fp-a"})
    artifacts.prepare_output(str(out), "fp-a", overwrite=False)  # same run again: allowed, cleared
    artifacts.write_manifest(str(out), "embeddings", {"fingerprint": "fp-a"})
    with pytest.raises(artifacts.ArtifactError, match="different run"):
        artifacts.prepare_output(str(out), "fp-b", overwrite=False)
    artifacts.prepare_output(str(out), "fp-b", overwrite=True)
    assert not list(out.iterdir())


def test_fingerprint_is_stable_and_order_independent():
    assert artifacts.fingerprint({"a": 1, "b": [1, 2]}) == artifacts.fingerprint({"b": [1, 2], "a": 1})
    assert artifacts.fingerprint({"a": 1}) != artifacts.fingerprint({"a": 2})


@pytest.mark.parametrize("with_text", [True, False])
def test_schema_is_the_one_tf_transform_derives_from_the_feature_spec(with_text):
    from tensorflow_transform.tf_metadata import schema_utils

    from pipelines.common import records

    ours = records.make_schema(300, with_text)
    assert ours == schema_utils.schema_from_feature_spec(records.feature_spec(300, with_text))
    assert records.schema_dim(ours) == 300


def test_schema_dim_refuses_a_schema_without_a_fixed_embedding():
    from tensorflow_metadata.proto.v0 import schema_pb2

    from pipelines.common import records

    schema = schema_pb2.Schema()
    schema.feature.add(name="id", type=schema_pb2.BYTES)
    with pytest.raises(ValueError, match="no 'embedding'"):
        records.schema_dim(schema)
    schema.feature.add(name="embedding", type=schema_pb2.BYTES)
    with pytest.raises(ValueError, match="not a fixed-length float"):
        records.schema_dim(schema)
