"""The training entry point on tiny embedding shards: input, train, resume, export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.common.dataset import open_all
from pipelines.common.errors import ArtifactError, InputError
from pipelines.common import manifests, records
from pipelines.common.reducers import load_reducer
from tests.fixtures import correlated_vectors, write_embedding_dataset, read_records
from trainer import data, export, task
from trainer.model import build_autoencoder

DIM = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("emb")
    write_embedding_dataset(directory, correlated_vectors(600, DIM, rank=4), num_shards=3)
    return str(directory)


def _args(dataset, output, *extra):
    return task.parse_config(
        ["--input", dataset, "--output", str(output), "--sizes", "16,8", "--batch_size", "32",
         "--learning_rate", "0.01", "--val_permille", "200", "--shuffle_buffer", "256",
         "--verbose", "0", *extra])


def _all(ds) -> np.ndarray:
    return np.concatenate(list(ds.as_numpy_iterator()))


def test_split_is_disjoint_complete_and_reproducible(dataset):
    source = open_all([dataset])
    assert source[0].dim == DIM and len(source[0].shards) == 3
    train = _all(data.make_dataset(source, 50, val_permille=200, seed=1))
    val = _all(data.make_dataset(source, 50, validation=True, val_permille=200))
    assert len(train) + len(val) == 600 and 60 < len(val) < 180
    every = np.stack([r["embedding"] for r in read_records(dataset)])
    key = lambda a: sorted(map(bytes, np.round(a, 5)))  # noqa: E731
    assert key(np.concatenate([train, val])) == key(every)
    np.testing.assert_array_equal(val, _all(data.make_dataset(source, 50, validation=True, val_permille=200)))
    again = _all(data.make_dataset(source, 50, val_permille=200, seed=1))
    assert key(again) == key(train)  # same records in the training split, shuffled


def test_a_directory_without_manifest_is_not_a_dataset(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        open_all([str(tmp_path)])


def test_two_epochs_reduce_validation_loss_and_export_the_artifact(dataset, tmp_path):
    out = tmp_path / "ae"
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = logs["val_loss"]

    args = _args(dataset, out, "--epochs", "2")
    val = data.make_dataset(open_all([dataset]), 64, validation=True, val_permille=200)
    keras.utils.set_random_seed(0)  # the initialization train() starts from
    fresh = build_autoencoder(DIM, **args.model_config())
    initial = float(np.mean([fresh.compute_loss(x, None, fresh(x)) for x in val]))
    manifest = task.train(args, extra_callbacks=[Record()])

    assert sorted(seen) == [0, 1] and seen[1] < initial and seen[1] < seen[0]
    on_disk = manifests.read(str(out), "autoencoder")
    assert on_disk["input_dim"] == DIM and on_disk["output_dim"] == 8 and on_disk["epochs_run"] == 2
    assert on_disk["final_losses"]["val_loss"] == pytest.approx(seen[1])
    assert on_disk["config"]["sizes"] == [16, 8] and on_disk["source"]["fingerprint"] == open_all([dataset])[0].fingerprint
    assert manifest["fingerprint"] == on_disk["fingerprint"]

    model = keras.models.load_model(str(out / export.KERAS_MODEL_FILE), safe_mode=True)
    x = _all(val)
    codes = export.load_head(str(out / on_disk["head"]))(embedding=tf.constant(x))["reduced"].numpy()
    np.testing.assert_allclose(codes, keras.ops.convert_to_numpy(model.reduce(x)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    reducer = load_reducer(str(out))  # the interface the reduce job uses
    assert (reducer.kind, reducer.input_dim, reducer.output_dim) == ("autoencoder", DIM, 8)
    np.testing.assert_allclose(reducer(x), codes, atol=1e-6)
    assert (out / "train" / "checkpoints" / "last.keras").exists()
    assert (out / "train" / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_killed_run_resumes_from_its_last_epoch(dataset, tmp_path):
    out = tmp_path / "ae"
    epochs = []

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs.append(epoch)
            if epoch == 1:
                raise RuntimeError("simulated crash")

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    with pytest.raises(RuntimeError, match="simulated crash"):
        task.train(_args(dataset, out, "--epochs", "4"), extra_callbacks=[Crash()])
    assert epochs == [0, 1] and not (out / "manifest.json").exists()
    epochs.clear()
    manifest = task.train(_args(dataset, out, "--epochs", "4"), extra_callbacks=[Record()])
    assert epochs == [2, 3]  # continued after the two finished epochs, not from scratch
    assert manifest["epochs_run"] == 4


def test_a_finished_run_of_other_flags_needs_overwrite(dataset, tmp_path):
    out = tmp_path / "ae"
    task.train(_args(dataset, out, "--epochs", "1"))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="different run"):
        task.train(_args(dataset, out, "--epochs", "1", "--tied"))
    manifest = task.train(_args(dataset, out, "--epochs", "1", "--tied", "--overwrite"))
    assert manifest["config"]["tied"] is True and (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in manifest["files"]


def test_an_unfinished_run_with_other_flags_starts_from_scratch(dataset, tmp_path):
    out = tmp_path / "ae"
    epochs = []

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("simulated crash")

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    with pytest.raises(RuntimeError):
        task.train(_args(dataset, out, "--epochs", "2"), extra_callbacks=[Crash()])
    manifest = task.train(_args(dataset, out, "--epochs", "2", "--seed", "7"), extra_callbacks=[Record()])
    assert epochs == [0, 1] and manifest["epochs_run"] == 2


@pytest.mark.parametrize("flags, message", [(["--val_permille", "1000"], "no training data"),
                                            (["--epochs", "0"], "at least 1"),
                                            (["--batch_size", "0"], "positive")])
def test_settings_that_cannot_train_fail_before_any_work(dataset, tmp_path, flags, message):
    with pytest.raises(InputError, match=message):
        task.train(_args(dataset, tmp_path / "ae", *flags))
    assert not (tmp_path / "ae").exists()


def test_an_empty_dataset_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    write_embedding_dataset(empty, np.zeros((0, DIM), np.float32), num_shards=1)
    with pytest.raises(InputError, match="no finite vectors"):
        task.train(_args(str(empty), tmp_path / "ae"))


def test_non_finite_vectors_are_left_out_and_reported(tmp_path):
    vectors = correlated_vectors(300, DIM, rank=4)
    vectors[7, 3] = np.nan
    data_dir = tmp_path / "emb"
    write_embedding_dataset(data_dir, vectors, num_shards=2)
    manifest = task.train(_args(str(data_dir), tmp_path / "ae", "--epochs", "2"))
    assert manifest["records_non_finite"] == 1 and np.isfinite(manifest["final_losses"]["loss"])
    [line] = (tmp_path / "ae" / "deadletter" / "non_finite.jsonl").read_text().splitlines()
    assert json.loads(line)["id"] == "id-00007"
    assert np.isfinite(load_reducer(str(tmp_path / "ae"))(vectors[:5])).all()


def test_a_loss_that_becomes_nan_stops_training_with_a_clear_error(dataset, tmp_path):
    with pytest.raises(InputError, match="NaN or infinite"):
        task.train(_args(dataset, tmp_path / "ae", "--epochs", "3", "--learning_rate", "1e30", "--loss", "mse",
                         "--no-normalize"))
    assert not (tmp_path / "ae" / "manifest.json").exists()


def test_bad_flags_are_usage_errors():
    with pytest.raises(SystemExit):
        task.build_parser().parse_args(["--input", "x", "--sizes", "16,zero"])
    with pytest.raises(SystemExit):
        task.build_parser().parse_args(["--input", "x", "--normalize", "maybe"])


def test_sigkilled_process_resumes_through_the_entry_point(dataset, tmp_path):
    """A hard kill (no exception handling, no clean-up) after epoch 2, then `python -m trainer.task`."""
    out = tmp_path / "ae"
    flags = ["--input", dataset, "--output", str(out), "--sizes", "16,8", "--batch_size", "32",
             "--val_permille", "200", "--epochs", "3", "--verbose", "0"]
    killer = (
        "import os, signal, sys, keras\n"
        "from trainer import task\n"
        "class Kill(keras.callbacks.Callback):\n"
        "    def on_epoch_end(self, epoch, logs=None):\n"
        "        if epoch == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "task.train(task.parse_config(sys.argv[1:]), extra_callbacks=[Kill()])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", killer, *flags], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    done = subprocess.run([sys.executable, "-m", "trainer.task", *flags], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = manifests.read(str(out), "autoencoder")
    assert manifest["epochs_run"] == 3
    epochs = [line.split(",")[0] for line in (out / "train" / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]  # the restart ran only epoch 2


def test_reduce_job_with_an_autoencoder_artifact(dataset, tmp_path):
    from pipelines import reduce as reduce_job

    out = tmp_path / "ae"
    task.train(_args(dataset, out, "--epochs", "1"))
    reduced = tmp_path / "reduced"
    manifest = reduce_job.main(["--input", dataset, "--reducer", str(out), "--output", str(reduced)])
    assert manifest["dim"] == 8 and manifest["counts"]["written"] == 600
    rows = {r["id"]: r["embedding"] for r in read_records(reduced)}
    source = {r["id"]: r["embedding"] for r in read_records(dataset)}
    ids = sorted(source)
    model = keras.models.load_model(str(out / export.KERAS_MODEL_FILE), safe_mode=True)
    want = keras.ops.convert_to_numpy(model.reduce(np.stack([source[i] for i in ids])))
    np.testing.assert_allclose(np.stack([rows[i] for i in ids]), want, atol=1e-5)


@pytest.mark.parametrize("strategy", ["mirrored", "multiworker"])
def test_distribution_strategies_train_and_export(dataset, tmp_path, strategy, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)  # multiworker without a cluster: a one-worker cluster
    out = tmp_path / strategy
    manifest = task.train(_args(dataset, out, "--epochs", "1", "--strategy", strategy))
    assert manifest["epochs_run"] == 1 and manifest["output_dim"] == 8
    codes = load_reducer(str(out))(correlated_vectors(5, DIM, seed=9, rank=4))
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)
