"""The training entry point on tiny embedding shards: input, train, resume, export."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from core import manifests
from core.dataset import open_all
from core.errors import ArtifactError, InputError
from core.reducers import load_reducer
from pipelines import train as task
from tests.fixtures import correlated_vectors, read_records, write_embedding_dataset
from trainer import data, export, training
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
    assert data.verify(source, 200).validation == len(val)  # what the trainer logs before training


def test_input_pipelines_run_without_the_autotuner(dataset):
    """Its per-iterator thread held each finished epoch's iterator for up to a minute (see records)."""
    source = open_all([dataset])
    for ds in (data.make_dataset(source, 50), data.make_dataset(source, 50, validation=True, repeat=True)):
        assert ds.options().autotune.enabled is False


def test_a_directory_without_manifest_is_not_a_dataset(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        open_all([str(tmp_path)])


def test_two_epochs_reduce_validation_loss_and_export_the_artifact(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.train")
    caplog.set_level(logging.INFO, logger="trainer.training")
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
    lines = [r.getMessage() for r in caplog.records if r.name in ("pipelines.train", "trainer.training")]
    n_val = len(_all(val))
    assert f"training 2 epochs on {600 - n_val} rows ({-(-(600 - n_val) // 32)} batches of 32 per epoch), " \
           f"validating on {n_val} rows ({-(-n_val // 32)} batches)" in lines
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert f"val_loss {seen[1]:.4f}" in [line for line in lines if line.startswith("epoch 2/2")][0]
    on_disk = manifests.read(str(out), "autoencoder")
    assert on_disk["input_dim"] == DIM and on_disk["output_dim"] == 8 and on_disk["epochs_run"] == 2
    assert on_disk["final_losses"]["val_loss"] == pytest.approx(seen[1])
    assert on_disk["config"]["sizes"] == [16, 8] and on_disk["source"]["digest"] == open_all([dataset])[0].digest
    assert manifest["fingerprint"] == on_disk["fingerprint"]

    model = keras.models.load_model(str(out / export.KERAS_MODEL_FILE), safe_mode=True)
    x = _all(val)
    codes = load_reducer(str(out))(x)
    np.testing.assert_allclose(codes, keras.ops.convert_to_numpy(model.reduce(x)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    reducer = load_reducer(str(out))  # the interface the reduce job uses
    assert (reducer.kind, reducer.input_dim, reducer.output_dim) == ("autoencoder", DIM, 8)
    np.testing.assert_allclose(reducer(x), codes, atol=1e-6)
    assert (out / "train" / "checkpoints" / "last.keras").exists()
    assert (out / "train" / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_a_budget_under_half_a_pass_trains_that_many_examples_in_partial_epochs(dataset, tmp_path):
    steps = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    # About 480 training rows, a budget of 150 examples: 10 epochs of ceil(150 / 320) = 1 batch of 32.
    manifest = task.train(_args(dataset, tmp_path / "ae", "--train_examples", "150", "--no-early_stopping"),
                          extra_callbacks=[Count()])
    assert manifest["epochs_run"] == 10 and steps == [0] * 10
    assert (tmp_path / "ae" / "train" / "history.csv").read_text().count("\n") == 11


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
                                            (["--batch_size", "0"], "positive"),
                                            (["--min_improvement", "1"], "fraction"),
                                            (["--train_examples", "-1"], "no budget")])
def test_settings_that_cannot_train_fail_before_any_work(dataset, tmp_path, flags, message):
    with pytest.raises(InputError, match=message):
        task.train(_args(dataset, tmp_path / "ae", *flags))
    assert not (tmp_path / "ae").exists()


def test_an_empty_dataset_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    write_embedding_dataset(empty, np.zeros((0, DIM), np.float32), num_shards=1)
    with pytest.raises(InputError, match="no finite vectors"):
        task.train(_args(str(empty), tmp_path / "ae"))


@pytest.mark.parametrize("rows", [1, 10, 100])
def test_a_tiny_corpus_with_an_empty_split_trains_without_validation(tmp_path, rows):
    write_embedding_dataset(tmp_path / "emb", correlated_vectors(rows, 16, seed=rows), num_shards=1)
    manifest = task.main(["--input", str(tmp_path / "emb"), "--output", str(tmp_path / "ae"), "--epochs", "1",
                          "--sizes", "8,4", "--batch_size", "8", "--val_permille", "50" if rows > 1 else "500"])
    assert manifest["epochs_run"] == 1 and manifest["output_dim"] == 4
    if rows == 1:  # one row leaves one of the splits empty
        assert "val_loss" not in manifest["final_losses"]


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
        task.make_parser().parse_args(["--input", "x", "--sizes", "16,zero"])
    with pytest.raises(SystemExit):
        task.make_parser().parse_args(["--input", "x", "--normalize", "maybe"])


@pytest.mark.slow  # separate processes (runner/crash): make test-slow
def test_sigkilled_process_resumes_through_the_entry_point(dataset, tmp_path):
    """A hard kill (no exception handling, no clean-up) after epoch 2, then `python -m pipelines.train`."""
    out = tmp_path / "ae"
    flags = ["--input", dataset, "--output", str(out), "--sizes", "16,8", "--batch_size", "32",
             "--val_permille", "200", "--epochs", "3", "--verbose", "0"]
    killer = (
        "import os, signal, sys, keras\n"
        "from pipelines import train as task\n"
        "class Kill(keras.callbacks.Callback):\n"
        "    def on_epoch_end(self, epoch, logs=None):\n"
        "        if epoch == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "task.train(task.parse_config(sys.argv[1:]), extra_callbacks=[Kill()])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", killer, *flags], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    done = subprocess.run([sys.executable, "-m", "pipelines.train", *flags], env=env, capture_output=True,
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


@pytest.mark.parametrize("strategy", ["mirrored", pytest.param("multiworker", marks=pytest.mark.slow)])
def test_distribution_strategies_train_and_export(dataset, tmp_path, strategy, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)  # multiworker without a cluster: a one-worker cluster
    out = tmp_path / strategy
    manifest = task.train(_args(dataset, out, "--epochs", "1", "--strategy", strategy))
    assert manifest["epochs_run"] == 1 and manifest["output_dim"] == 8
    codes = load_reducer(str(out))(correlated_vectors(5, DIM, seed=9, rank=4))
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)


class _Model:
    """What the stopping rule touches on a model: weights (here: the epoch they were saved at) and the stop flag."""

    def __init__(self):
        self.weights, self.stop_training = [np.array(-1)], False

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = weights


def _replay(curve, patience=5, min_improvement=0.002) -> tuple[int, int, _Model]:
    """Feed a validation-loss curve to PlateauStopping as fit would: (epochs run, epoch whose weights are kept)."""
    rule, model = training.PlateauStopping("val_loss", patience, min_improvement), _Model()
    rule.set_model(model)
    for epoch, loss in enumerate(curve):
        model.weights = [np.array(epoch)]
        rule.on_epoch_end(epoch, {"loss": 9.0, "val_loss": float(loss)})
        if model.stop_training:
            break
    rule.on_train_end()
    return epoch + 1, int(model.weights[0]), model


def test_plateau_rule_stops_on_a_curve_that_flattens_and_keeps_the_lowest_epoch():
    epochs = np.arange(100)
    curve = 0.2 + 0.5 * np.exp(-epochs / 4)  # falls fast, then by less than 0.2% an epoch from epoch ~20 on
    run, kept, _ = _replay(curve)
    assert 20 < run < 40 and kept == run - 1  # still creeping down: the last epoch is the lowest
    assert _replay(curve, min_improvement=0.0)[0] == 100  # Keras's absolute rule (min_delta 0) never stops
    bumpy = curve.copy()
    bumpy[run + 5:] += 0.01  # worse from then on: stops, keeps the best epoch
    assert _replay(bumpy, min_improvement=0.0)[:2] == (run + 10, run + 4)


def test_plateau_rule_does_not_stop_while_the_loss_keeps_falling():
    steady = 0.5 * 0.99 ** np.arange(100)  # 1% an epoch, above the 0.2% threshold
    noisy = steady * (1 + 0.003 * np.sin(np.arange(100)))  # and with a wobble of +-0.3%
    assert _replay(steady)[:2] == (100, 99)
    assert _replay(noisy)[0] == 100


def test_plateau_rule_measures_improvement_relative_to_the_loss():
    """A curve and the same curve x1000 stop at the same epoch (an absolute min_delta could not do both)."""
    curve = 0.2 + 0.5 * np.exp(-np.arange(100) / 4)
    assert _replay(curve)[:2] == _replay(curve * 1000)[:2]


def test_epoch_line_says_losses_time_and_eta():
    line = training.epoch_line(2, 100, {"loss": 0.12341, "val_loss": 0.13012}, 9.8, 97 * 9.3, True)
    assert line == ("epoch 3/100: loss 0.1234, val_loss 0.1301, 9.8 s, ETA 15 min for the remaining 97 epochs "
                    "(early stopping may end sooner)")
    assert training.epoch_line(98, 100, {"loss": 0.5}, 2.04, 40, False) == \
        "epoch 99/100: loss 0.5000, 2.0 s, ETA 40 s for the remaining 1 epoch"
    assert training.epoch_line(99, 100, {"loss": 0.5, "val_loss": 0.6}, 2.0, 0, True) == \
        "epoch 100/100: loss 0.5000, val_loss 0.6000, 2.0 s"
    assert "ETA 2.5 h" in training.epoch_line(0, 1000, {"loss": 1.0}, 9.0, 9000, False)


def test_eta_is_the_mean_epoch_time_after_the_first_times_the_epochs_left():
    assert training.eta_seconds([30.0], 4) == 120.0  # only the first epoch so far: all there is
    assert training.eta_seconds([30.0, 10.0, 12.0], 5) == 55.0  # the first (graph tracing) left out


def test_epoch_log_writes_the_first_and_last_epoch_and_a_line_at_most_every_10_s(caplog):
    caplog.set_level(logging.INFO, logger="trainer.training")
    ticks = iter([0.0, 20.0, 20.0, 30.0, 30.0, 34.0, 34.0, 38.0])  # begin/end of epochs taking 20, 10, 4, 4 s
    callback = training.EpochLog(epochs=4, may_stop=False, clock=lambda: next(ticks))
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/4: loss 1.0000, 20.0 s, ETA 60 s for the remaining 3 epochs",
        "epoch 2/4: loss 0.5000, 10.0 s, ETA 20 s for the remaining 2 epochs",
        "epoch 4/4: loss 0.2500, 4.0 s"]  # epoch 3 ended 4 s after the last line


def test_the_default_run_decays_over_a_budget_stops_on_a_plateau_and_logs_epochs(tmp_path):
    config = task.parse_config(["--input", "x", "--output", str(tmp_path)])
    assert config == task.TrainConfig(input="x", output=str(tmp_path))  # flags and dataclass agree
    assert (config.learning_rate, config.lr_schedule, config.train_examples, config.epochs) == \
        (1e-2, "cosine", 2_000_000, 100)
    assert (config.early_stopping, config.patience, config.min_improvement, config.verbose) == (True, 5, 0.002, 0)
    plan = lambda rows, **changes: training.planned_schedule(dataclasses.replace(config, **changes), rows)  # noqa: E731
    assert plan(95_067) == training.Schedule(21)  # the benchmark's 100k financial rows, 5% held out
    assert plan(202_000) == training.Schedule(10)  # a larger corpus: fewer epochs, as many steps
    assert plan(600) == training.Schedule(100)  # a small one: --epochs is the upper bound
    assert plan(3_000_000) == training.Schedule(1)  # two thirds of a pass rounds to one
    assert plan(95_067, train_examples=0) == training.Schedule(100)
    # Over twice the budget: the budget itself, in 10 partial epochs, so training stops growing with the corpus.
    assert plan(5_000_000) == plan(9_500_000) == training.Schedule(10, 196)  # ceil(2M / (10 * 1024))
    assert plan(9_500_000, epochs=4) == training.Schedule(4, 489)
    assert "on 2,007,040 of 9,500,000 rows" in training.plan_line(9_500_000, 500_000, 1024, plan(9_500_000))
    assert "validating on 50,000 rows" in training.plan_line(9_500_000, 500_000, 1024, plan(9_500_000))
    callbacks = training.make_callbacks(config, str(tmp_path), has_val=True, epochs=21)
    [rule] = [c for c in callbacks if isinstance(c, training.PlateauStopping)]
    assert (rule.monitor, rule.patience, rule.min_improvement) == ("val_loss", 5, 0.002)
    assert not [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    assert [c.epochs for c in callbacks if isinstance(c, training.EpochLog)] == [21]
    [schedule] = [c for c in callbacks if isinstance(c, keras.callbacks.LearningRateScheduler)]
    rates = [schedule.schedule(e) for e in range(21)]
    assert rates[0] == 1e-2 and rates == sorted(rates, reverse=True) and rates[-1] < 1e-4  # decays over the plan
