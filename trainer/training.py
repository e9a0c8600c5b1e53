"""Training the autoencoder with Keras: strategies, callbacks (logs, checkpoints, stopping, schedules), fit.

``fit`` takes a training config (``pipelines.train.TrainConfig``: any object
with its fields) and embedding datasets, and returns the trained model and
its final losses; the command around it claims the output and exports.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorflow.io import gfile

from core.errors import InputError
from trainer import data
from trainer.model import build_autoencoder
from trainer.options import HAS_TENSORBOARD

log = logging.getLogger(__name__)

# Each split is kept in memory after its first pass when it fits in this size: reading and parsing the
# shards again cost 6.5 s of every ~18 s epoch on 190,000 financial vectors (0.6 s from the cache, measured);
# larger corpora stream from the shards every epoch, so memory stays flat.
CACHE_BYTES = 1024 * 2**20


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # cluster from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


class CSVLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger, able to end on a URL (gs://...).

    There it writes through a tf.io.gfile GFile, which lacks the ``closed``
    attribute Keras 3 asks for at the end of training (AttributeError).
    """

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
        self.writer = None


class _StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Keras's TerminateOnNaN that remembers it fired, so the run fails instead of exporting NaN weights."""

    fired = False

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        self.fired = self.fired or bool(self.model.stop_training)


class PlateauStopping(keras.callbacks.Callback):
    """Stop when the monitored loss has not fallen by more than ``min_improvement`` (a fraction) of its best
    value for ``patience`` epochs; at the end, keep the weights of the epoch with the lowest loss.

    Keras's EarlyStopping only has an absolute ``min_delta``: with 0, a loss that creeps down by 0.01% an epoch
    never stalls and every run lasts ``--epochs``; a relative threshold means the same for any loss scale.
    """

    def __init__(self, monitor: str, patience: int, min_improvement: float):
        super().__init__()
        self.monitor, self.patience, self.min_improvement = monitor, patience, min_improvement
        self.best = self.lowest = math.inf
        self.wait, self.lowest_epoch = 0, -1
        self.lowest_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        if current < self.lowest:
            self.lowest, self.lowest_epoch, self.lowest_weights = current, epoch, self.model.get_weights()
        if self.best == math.inf or current < self.best - self.min_improvement * abs(self.best):
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True
            log.info("stopping after epoch %d: %s fell by less than %.2g%% in %d epochs; keeping the weights of "
                     "epoch %d (%s %.4f)", epoch + 1, self.monitor, 100 * self.min_improvement, self.patience,
                     self.lowest_epoch + 1, self.monitor, self.lowest)

    def on_train_end(self, logs=None):
        if self.lowest_weights is not None:
            self.model.set_weights(self.lowest_weights)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, eta_s: float, may_stop: bool) -> str:
    """'epoch 3/100: loss 0.1234, val_loss 0.1301, 9.8 s, ETA 15 min for the remaining 97 epochs (...)'."""
    losses = "".join(f", {k} {logs[k]:.4f}" for k in ("loss", "val_loss") if k in logs)
    line = f"epoch {epoch + 1}/{epochs}: {losses[2:]}, {seconds:.1f} s"
    remaining = epochs - epoch - 1
    if remaining > 0:
        line += f", ETA {_duration(eta_s)} for the remaining {remaining} epoch{'s' if remaining > 1 else ''}"
        line += " (early stopping may end sooner)" if may_stop else ""
    return line


def eta_seconds(epoch_seconds: list[float], remaining: int) -> float:
    """Remaining epochs times the mean epoch time, leaving out the first epoch (it traces the graph) once
    there are others."""
    times = epoch_seconds[1:] or epoch_seconds
    return remaining * sum(times) / len(times)


class EpochLog(keras.callbacks.Callback):
    """INFO lines (logger ``pipelines.train``) with losses, time and ETA, readable in any log viewer, unlike
    Keras's progress bars (``--verbose``): the first and last epoch, and one at most every ``every_s``."""

    def __init__(self, epochs: int, may_stop: bool, clock=time.perf_counter, every_s: float = 10.0):
        super().__init__()
        self.epochs, self.may_stop, self.clock, self.every_s = epochs, may_stop, clock, every_s
        self.seconds: list[float] = []
        self.started = 0.0
        self.logged_at = -math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self.started = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        self.seconds.append(now - self.started)
        last = epoch + 1 == self.epochs or bool(getattr(self.model, "stop_training", False))
        if epoch == 0 or last or now - self.logged_at >= self.every_s:
            eta = eta_seconds(self.seconds, self.epochs - epoch - 1)
            log.info("%s", epoch_line(epoch, self.epochs, logs or {}, self.seconds[-1], eta, self.may_stop))
            self.logged_at = now


SUB_EPOCHS = 10  # a budget under one pass is spread over this many Keras epochs (checkpoints, LR decay, stopping)
VALIDATION_ROWS = 50_000  # validation scores the same first rows of the split each epoch, at most this many


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long training runs: ``epochs`` Keras epochs of ``steps`` batches each (None: a whole pass)."""
    epochs: int
    steps: int | None = None


def planned_schedule(config, train_rows: int) -> Schedule:
    """What the budget of ``--train_examples`` buys on ``train_rows`` rows.

    Whole passes, round(budget / rows) within [1, --epochs]; a budget under half a pass (a large corpus) is
    that many examples instead, in up to ``SUB_EPOCHS`` epochs, so the cost of training stops growing with
    the corpus.
    """
    if not config.train_examples or config.train_examples >= train_rows / 2:
        passes = round(config.train_examples / max(train_rows, 1)) if config.train_examples else config.epochs
        return Schedule(max(1, min(config.epochs, passes)))
    epochs = min(config.epochs, SUB_EPOCHS)
    return Schedule(epochs, math.ceil(config.train_examples / (epochs * config.batch_size)))


def make_callbacks(config, train_dir: str, has_val: bool, epochs: int) -> list:
    monitor = "val_loss" if has_val else "loss"
    cbs = [
        _StopOnNonFiniteLoss(),
        EpochLog(epochs, config.early_stopping),
        keras.callbacks.BackupAndRestore(os.path.join(train_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(train_dir, "checkpoints", "last.keras")),
        keras.callbacks.ModelCheckpoint(os.path.join(train_dir, "checkpoints", "best.keras"),
                                        monitor=monitor, save_best_only=True),
        CSVLogger(os.path.join(train_dir, "history.csv"), append=True),
    ]
    if config.tensorboard:
        if not HAS_TENSORBOARD:
            raise InputError("--tensorboard needs the tensorboard package (pip install tensorboard), "
                             "or pass --no-tensorboard; history.csv is written either way")
        cbs.append(keras.callbacks.TensorBoard(os.path.join(train_dir, "logs")))
    if config.early_stopping:
        cbs.append(PlateauStopping(monitor, config.patience, config.min_improvement))
    if config.lr_schedule == "cosine":
        lr = config.learning_rate
        cbs.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))))
    elif config.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                     patience=max(1, config.patience // 2)))
    return cbs


def fit(config, datasets, train_dir: str, extra_callbacks: list,
        schedule: Schedule, train_rows: int, val_rows: int) -> tuple[keras.Model, dict]:
    """Build and fit the model; returns it and the final losses. Fails on a non-finite loss."""
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    has_val = config.val_permille > 0
    fits = lambda rows: rows * datasets[0].dim * 4 <= CACHE_BYTES  # noqa: E731
    train_ds = data.make_dataset(datasets, config.batch_size, val_permille=config.val_permille,
                                 shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                                 cache=not schedule.steps and fits(train_rows + val_rows),
                                 repeat=bool(schedule.steps))
    val_ds = data.make_dataset(datasets, config.batch_size, validation=True, val_permille=config.val_permille,
                               cache=fits(min(val_rows, VALIDATION_ROWS)), max_rows=VALIDATION_ROWS) \
        if has_val else None
    with strategy.scope():
        model = build_autoencoder(datasets[0].dim, **config.model_config())
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    gfile.makedirs(train_dir)  # the CSV log opens a file in it before any callback creates it
    callbacks = make_callbacks(config, train_dir, has_val, schedule.epochs) + list(extra_callbacks)
    with warnings.catch_warnings():
        # Keras learns the length of a filtered dataset at the end of its first pass and warns; benign.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(train_ds, validation_data=val_ds, epochs=schedule.epochs, steps_per_epoch=schedule.steps,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False)  # tf.data shuffles
        if callbacks[0].fired:
            raise InputError("training stopped: the loss became NaN or infinite. Try a lower --learning_rate "
                             "(the input vectors were checked and are finite)")
        final = {k: float(v[-1]) for k, v in history.history.items() if v and k != "learning_rate"}
        if has_val:  # the weights kept (the best ones, with early stopping) scored on validation
            final["val_loss_exported"] = float(np.ravel(model.evaluate(val_ds, verbose=0))[0])
    return model, final


def plan_line(train_rows: int, val_rows: int, batch_size: int, schedule: Schedule) -> str:
    """'training 21 epochs on 95,012 rows (93 batches of 1024 per epoch), validating on 4,988 rows (5 batches)'."""
    epochs = f"{schedule.epochs} epoch{'s' if schedule.epochs > 1 else ''}"
    if schedule.steps:
        seen = schedule.epochs * schedule.steps * batch_size
        line = (f"training on {seen:,} of {train_rows:,} rows (the --train_examples budget, {seen / train_rows:.2f} "
                f"of a pass) in {epochs} of {schedule.steps} batches of {batch_size}")
    else:
        line = f"training {epochs} on {train_rows:,} rows ({math.ceil(train_rows / batch_size)} batches of " \
               f"{batch_size} per epoch)"
    val_rows = min(val_rows, VALIDATION_ROWS)
    return line + (f", validating on {val_rows:,} rows ({math.ceil(val_rows / batch_size)} batches)" if val_rows
                   else ", no validation split")


def epochs_run(train_dir: str) -> int:
    """Epochs finished over all attempts (the CSV log is appended across resumes)."""
    path = os.path.join(train_dir, "history.csv")
    if not gfile.exists(path):
        return 0
    with gfile.GFile(path) as f:
        rows = [line.split(",", 1)[0] for line in f.read().splitlines()[1:] if line.strip()]
    return len({r for r in rows if r.isdigit()})
