"""Outputs and manifests: a job deletes only what it wrote, claims its output, writes manifests atomically."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from core import files, layouts, manifests, outputs, records
from core.errors import ArtifactError
from core.outputs import OutputDir

DEAD = "deadletter/deadletter-00000-of-00001.jsonl"


def _paths(manifest: dict) -> list[str]:
    return [e["path"] for e in manifest["files"]]


def _commit(directory, fingerprint="fp-a", shards=("data-00000-of-00001.tfrecord",), dead=(DEAD,)):
    out = OutputDir(str(directory), "embeddings", fingerprint).claim(overwrite=True)
    for name in (*shards, *dead):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return out.commit({"records": 0})


def test_manifest_round_trip_and_validation(tmp_path):
    (tmp_path / "reducer.npz").write_bytes(b"weights")
    manifests.write(str(tmp_path), "pca", {"input_dim": 512, "output_dim": 128}, ["reducer.npz"])
    manifest = manifests.read(str(tmp_path), "pca", verify="full")
    assert manifest["output_dim"] == 128 and manifest["tool_versions"]["python"]
    assert manifest["files"][0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "reducer.npz").write_bytes(b"weighty")  # same size, other bytes
    manifests.read(str(tmp_path), "pca", verify="size")
    with pytest.raises(ArtifactError, match="changed since it was written"):
        manifests.read(str(tmp_path), "pca", verify="full")
    with pytest.raises(ArtifactError, match="expected embeddings"):
        manifests.read(str(tmp_path), "embeddings")
    path = tmp_path / manifests.MANIFEST
    path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        manifests.read(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        manifests.read(str(tmp_path))
    path.unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        manifests.read(str(tmp_path))


def test_user_files_are_never_deleted_and_a_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    (out / "data-x.tfrecord").write_text("looks like ours, is not")
    with pytest.raises(ArtifactError, match=r"2 file\(s\) this tool did not write.*thesis.txt"):
        OutputDir(str(out), "embeddings", "fp").claim(overwrite=True)
    assert (out / "thesis.txt").read_text() == "years of work" and (out / "data-x.tfrecord").exists()
    assert not (out / layouts.LOCK).exists() and not (out / layouts.PENDING).exists()


def test_overwrite_replaces_exactly_the_files_the_manifest_lists(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    first = _commit(out, shards=("data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"))
    assert _paths(first) == ["data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord", DEAD]
    (out / "notes.txt").write_text("mine")  # a user file added to a finished output
    with pytest.raises(ArtifactError, match="different run"):
        OutputDir(str(out), "embeddings", "fp-b").claim(overwrite=False)
    second = _commit(out, fingerprint="fp-b", dead=())
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "data-00001-of-00002.tfrecord").exists() and not (out / "deadletter").exists()
    assert _paths(second) == ["data-00000-of-00001.tfrecord"]  # stale dead letters gone, not listed


def test_an_interrupted_run_is_cleared_by_its_own_patterns(tmp_path):
    out = tmp_path / "d"
    claim = OutputDir(str(out), "embeddings", "fp").claim()
    (out / "data-00000-of-00001.tfrecord").write_text("partial")
    temp = out / f"beam-temp-data-{'0' * 32}"
    temp.mkdir()
    (temp / "x").write_text("temp")
    claim.release()  # as after a failure: the lock goes, the pending record stays
    assert (out / layouts.PENDING).exists() and not (temp / "x").exists()
    (out / "mine.txt").write_text("a user file dropped in meanwhile")
    OutputDir(str(out), "embeddings", "fp").claim()
    assert not (out / "data-00000-of-00001.tfrecord").exists() and (out / "mine.txt").exists()


def test_a_second_run_fails_fast_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "d"
    first = OutputDir(str(out), "embeddings", "fp").claim()
    with pytest.raises(ArtifactError, match=r"in use by another run .*pid %d.*delete .*\.shrink\.lock" % os.getpid()):
        OutputDir(str(out), "embeddings", "fp").claim()
    first.release()
    OutputDir(str(out), "embeddings", "fp").claim().release()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_foreign_host_lock_is_reported(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = outputs._identity()
    lock = {**me, "pid": int(dead.stdout), "pid_start": 1}
    (out / layouts.LOCK).write_text(json.dumps(lock))
    OutputDir(str(out), "embeddings", "fp").claim().release()
    # Not provably dead: another host, another boot of this host's name, another container's pid namespace,
    # or a lock from before these were recorded. Each is refused with how to clear it.
    for other in ({"host": "another-machine"}, {"boot_id": "another-boot"}, {"pid_namespace": 1},
                  {"boot_id": None}):
        (out / layouts.LOCK).write_text(json.dumps({**lock, **other}))
        with pytest.raises(ArtifactError, match=r"in use by another run.*another machine or container.*delete"):
            OutputDir(str(out), "embeddings", "fp").claim()
        assert (out / layouts.LOCK).exists()


def test_manifest_writes_are_atomic_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "d"
    out.mkdir()
    real_create = files.create

    class FullDisk:
        def __init__(self, path):
            self.f = real_create(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "create", FullDisk)
    with pytest.raises(OSError, match="No space"):
        manifests.write(str(out), "embeddings", {"x": 1}, [])
    assert os.listdir(out) == []  # neither a 0-byte manifest nor its temp file


def test_remove_output_deletes_only_listed_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    _commit(out)
    (out / "keep.txt").write_text("user")
    outputs.remove_output(str(out))
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_fingerprint_is_stable_and_order_independent():
    assert manifests.fingerprint({"a": 1, "b": [1, 2]}) == manifests.fingerprint({"b": [1, 2], "a": 1})
    assert manifests.fingerprint({"a": 1}) != manifests.fingerprint({"a": 2})


@pytest.mark.parametrize("with_text", [True, False])
def test_schema_is_the_one_tf_transform_derives_from_the_feature_spec(with_text):
    from tensorflow_transform.tf_metadata import schema_utils

    ours = records.make_schema(300, with_text)
    assert ours == schema_utils.schema_from_feature_spec(records.feature_spec(300, with_text))
    assert records.schema_dim(ours) == 300


def test_schema_dim_refuses_a_schema_without_a_fixed_embedding():
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    schema.feature.add(name="id", type=schema_pb2.BYTES)
    with pytest.raises(ValueError, match="no 'embedding'"):
        records.schema_dim(schema)
    schema.feature.add(name="embedding", type=schema_pb2.BYTES)
    with pytest.raises(ValueError, match="not a fixed-length float"):
        records.schema_dim(schema)


def test_records_serialize_exactly_as_protobuf_deterministic_serialization():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 7)).astype(np.float32)
    ids, texts = [f"id{i}" for i in range(5)], ["x" * 200, "é", "", "t", "u"]
    for with_text in (True, False):
        ours = records.encode_examples(ids, vectors, texts if with_text else None)
        for i, serialized in enumerate(ours):
            feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ids[i].encode()])),
                       "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=vectors[i].tolist()))}
            if with_text:
                feature["text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[texts[i].encode()]))
            expected = tf.train.Example(features=tf.train.Features(feature=feature))
            assert serialized == expected.SerializeToString(deterministic=True)
    codes = records.encode_example("a", bytes([1, 2, 255]))
    assert records.decode_example(codes)[records.CODES] == bytes([1, 2, 255])
