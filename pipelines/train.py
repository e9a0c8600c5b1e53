"""Train the tied autoencoder on embedding shards and export a reduction head.

Vertex AI-style entry point: ``python -m pipelines.train --input DIR --output DIR``
(``shrink train`` is the same). ``--output`` defaults to ``$AIP_MODEL_DIR``.

The output directory is the reducer artifact: ``manifest.json`` (kind
"autoencoder", written last), ``head/`` (SavedModel, the reduction head),
``model.keras`` (the full model, to reload or continue), optionally
``text_model/``; and ``train/`` with TensorBoard logs, per-epoch checkpoints
and the ``BackupAndRestore`` state. A run that is killed and started again
with the same arguments resumes from its last finished epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.io import gfile

from core import config as cfg
from core import deadletter as dl
from core import files, manifests, reducers
from core.config import option
from core.dataset import HOLDOUT_BUCKETS, open_all
from core.errors import InputError
from core.outputs import OutputDir
from pipelines import cli
from pipelines.cli import job_parser
from trainer import data, export
from trainer.model import LOSSES, build_autoencoder

log = logging.getLogger(__name__)

_HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
# Each split is kept in memory after its first pass when it fits in this size: reading and parsing the
# shards again cost 6.5 s of every ~18 s epoch on 190,000 financial vectors (0.6 s from the cache, measured);
# larger corpora stream from the shards every epoch, so memory stays flat.
CACHE_BYTES = 1024 * 2**20
STRATEGIES = ("default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "plateau")


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {value!r}")
    return sizes


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's flags. Defaults: the best measured recipe (benchmarks/RESULTS.md), trained for a budget
    of examples seen with a cosine decay; the reference's seed recipe is ``--tied --loss mse
    --similarity_weight 0 --rank_weight 0 --learning_rate 1e-4 --batch_size 128 --lr_schedule constant
    --train_examples 0``."""
    input: str = option(help="embedding dataset directory (output of `shrink embed`)")
    output: str | None = option(None, "artifact directory (default: $AIP_MODEL_DIR)")
    extra_input: tuple[str, ...] = option((), "more embedding datasets to train on together with --input (e.g. a "
                                              "corpus's increments)")
    sizes: tuple[int, ...] = option((256, 128), "encoder layer sizes; the last is the code size", type=_sizes)
    activation: str = option("selu", "activation of the reducing layers (one the exported head can compute)",
                             choices=list(reducers.ACTIVATIONS))
    normalize: bool = option(True, "unit-L2-normalize the codes")
    tied: bool = option(False, "decoder reuses the transposed encoder kernels (reference: tied)")
    loss: str = option("cosine", "reconstruction loss (reference: mse)", choices=LOSSES)
    similarity_weight: float = option(10.0, "weight of the in-batch cosine-similarity preservation term "
                                            "(reference: 0)")
    rank_weight: float = option(1.0, "weight of the in-batch neighbour-ranking (listwise distillation) term "
                                     "(reference: 0)")
    rank_temperature: float = option(0.05, "softmax temperature of the ranking term: lower focuses on the nearest "
                                           "rows")
    learning_rate: float = option(1e-2, "Adam (peak) learning rate (reference: 1e-4). With the cosine decay over 20 "
                                        "epochs of 95k financial sentences, 1e-2 came within 0.003 recall@10 of 100 "
                                        "epochs at a constant 1e-3; 1e-3 and 5e-3 fell 0.013 and 0.005 short "
                                        "(benchmarks/bench_training.py)")
    batch_size: int = option(1024, "global batch size; the ranking term needs large batches (reference: 128)")
    epochs: int = option(100, "most epochs to train (an upper bound: --train_examples and early stopping end "
                              "sooner)")
    train_examples: int = option(2_000_000, "training budget in examples seen: train round(N / training rows) "
                                            "epochs (at least 1, at most --epochs), the cosine decay spread over "
                                            "them; 0: --epochs. 2M is 21 epochs of 95k financial sentences, measured "
                                            "against 100 constant-rate epochs (benchmarks/RESULTS.md); a larger "
                                            "corpus gets fewer epochs of as many steps")
    early_stopping: bool = option(True, "stop when validation loss stalls")
    patience: int = option(5, "early stopping: epochs without an improvement before training stops")
    min_improvement: float = option(0.002, "early stopping: an epoch improves only when its validation loss falls "
                                           "below the best so far by more than this fraction of it (0: any "
                                           "decrease, Keras's rule); 0.002 stops only a loss that has really "
                                           "flattened (docs/train.md)")
    lr_schedule: str = option("cosine", "cosine: decay from --learning_rate to 0 over the planned epochs; plateau: "
                                        "halve it when the validation loss stalls; constant", choices=SCHEDULES)
    val_permille: int = option(50, "validation share by id hash, per mille (0 <= v < 1000)")
    shuffle_buffer: int = option(10_000, "rows shuffled together between epochs")
    seed: int = option(0, "initialization, shuffling and split seed")
    strategy: str = option("default", "tf.distribute strategy", choices=STRATEGIES)
    tensorboard: bool = option(_HAS_TENSORBOARD, "write TensorBoard logs to OUTPUT/train/logs (default: when "
                                                 "tensorboard is installed)")
    hub_handle: str | None = option(None, "also export text -> codes with this TF Hub encoder handle")
    overwrite: bool = option(False, "replace an earlier training run of different parameters in --output")
    verbose: int = option(0, "Keras fit verbosity (default 0: one log line per epoch instead)")

    def model_config(self) -> dict:
        return {"sizes": list(self.sizes), "activation": self.activation, "normalize": self.normalize,
                "tied": self.tied, "loss": self.loss, "similarity_weight": self.similarity_weight,
                "rank_weight": self.rank_weight, "rank_temperature": self.rank_temperature}

    def params(self) -> dict:
        """What changes the trained model (the rest only changes where it goes or how it is logged)."""
        return cfg.params(self, exclude=("input", "output", "extra_input", "strategy", "tensorboard", "hub_handle",
                                         "overwrite", "verbose"))




def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink train", __doc__.split("\n")[0], TrainConfig)


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # cluster from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def check_config(config: TrainConfig) -> None:
    """Settings that cannot train anything fail before any work."""
    if not config.output:
        raise InputError("--output is required (or set AIP_MODEL_DIR)")
    if config.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {config.epochs}")
    if not 0 <= config.val_permille < HOLDOUT_BUCKETS:
        raise InputError(f"--val_permille must be in [0, {HOLDOUT_BUCKETS}) (1000 would leave no training data), "
                         f"got {config.val_permille}")
    if config.batch_size < 1:
        raise InputError(f"--batch_size must be positive, got {config.batch_size}")
    if config.train_examples < 0:
        raise InputError(f"--train_examples must be 0 (no budget) or positive, got {config.train_examples}")
    if config.activation not in reducers.ACTIVATIONS:
        raise InputError(f"--activation must be one of {', '.join(reducers.ACTIVATIONS)} (the exported reducer is "
                         f"plain data), got {config.activation!r}")
    if not 0 <= config.min_improvement < 1:
        raise InputError(f"--min_improvement is a fraction in [0, 1), got {config.min_improvement}")


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


def planned_epochs(config: TrainConfig, train_rows: int) -> int:
    """Epochs the budget of ``--train_examples`` buys on ``train_rows`` rows, within [1, --epochs]."""
    if not config.train_examples:
        return config.epochs
    return max(1, min(config.epochs, round(config.train_examples / max(train_rows, 1))))


def make_callbacks(config: TrainConfig, train_dir: str, has_val: bool, epochs: int) -> list:
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
        if not _HAS_TENSORBOARD:
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


def fit(config: TrainConfig, datasets, train_dir: str, extra_callbacks: list,
        epochs: int, train_rows: int, val_rows: int) -> tuple[keras.Model, dict]:
    """Build and fit the model; returns it and the final losses. Fails on a non-finite loss."""
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    has_val = config.val_permille > 0
    fits = lambda rows: rows * datasets[0].dim * 4 <= CACHE_BYTES  # noqa: E731
    train_ds = data.make_dataset(datasets, config.batch_size, val_permille=config.val_permille,
                                 shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                                 cache=fits(train_rows + val_rows))
    val_ds = data.make_dataset(datasets, config.batch_size, validation=True, val_permille=config.val_permille,
                               cache=fits(val_rows)) if has_val else None
    with strategy.scope():
        model = build_autoencoder(datasets[0].dim, **config.model_config())
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    gfile.makedirs(train_dir)  # the CSV log opens a file in it before any callback creates it
    callbacks = make_callbacks(config, train_dir, has_val, epochs) + list(extra_callbacks)
    with warnings.catch_warnings():
        # Keras learns the length of a filtered dataset at the end of its first pass and warns; benign.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False)  # tf.data shuffles
        if callbacks[0].fired:
            raise InputError("training stopped: the loss became NaN or infinite. Try a lower --learning_rate "
                             "(the input vectors were checked and are finite)")
        final = {k: float(v[-1]) for k, v in history.history.items() if v and k != "learning_rate"}
        if has_val:  # the weights kept (the best ones, with early stopping) scored on validation
            final["val_loss_exported"] = float(np.ravel(model.evaluate(val_ds, verbose=0))[0])
    return model, final


def plan_line(train_rows: int, val_rows: int, batch_size: int, epochs: int) -> str:
    """'training 21 epochs on 95,012 rows (93 batches of 1024 per epoch), validating on 4,988 rows (5 batches)'."""
    line = (f"training {epochs} epoch{'s' if epochs > 1 else ''} on {train_rows:,} rows "
            f"({math.ceil(train_rows / batch_size)} batches of {batch_size} per epoch)")
    return line + (f", validating on {val_rows:,} rows ({math.ceil(val_rows / batch_size)} batches)" if val_rows
                   else ", no validation split")


def train(config: TrainConfig, extra_callbacks: list | None = None) -> dict:
    """Train, export and write the manifest; returns the manifest ({} on a non-chief worker)."""
    check_config(config)
    datasets = open_all([config.input, *config.extra_input])
    params = {**config.params(), "inputs": [d.digest for d in datasets]}
    chief = _is_chief(make_strategy(config.strategy))
    out = OutputDir(config.output, "autoencoder", manifests.fingerprint(params), [config.input, *config.extra_input])
    if chief:
        out.claim(config.overwrite, resume=True)
    with out:
        verified = data.verify(datasets, config.val_permille)
        usable = verified.records - len(verified.non_finite_ids)
        if usable == 0:
            raise InputError(f"{config.input} holds no finite vectors to train on")
        if verified.non_finite_ids:
            log.warning("%d vector(s) hold NaN/Inf and are left out of training (ids in %s)",
                        len(verified.non_finite_ids), out.path("deadletter"))
        train_rows = usable - verified.validation
        if not (train_rows and verified.validation) and config.val_permille:
            log.info("%d usable vector(s) leave one of the splits empty: training on all of them, without validation",
                     usable)
            config = dataclasses.replace(config, val_permille=0)
            train_rows, verified = usable, dataclasses.replace(verified, validation=0)
        epochs = planned_epochs(config, train_rows)
        log.info("%s", plan_line(train_rows, verified.validation, config.batch_size, epochs))
        train_dir = out.path("train")
        model, final = fit(config, datasets, train_dir, extra_callbacks or [], epochs, train_rows,
                           verified.validation)
        if not chief:  # workers of a cluster train; only the chief writes the artifact
            return {}
        return _export(config, out, model, final, datasets, verified)


def _export(config: TrainConfig, out: OutputDir, model, final: dict, datasets, verified: data.Verified) -> dict:
    model.save(out.path(export.KERAS_MODEL_FILE))
    head, entry = export.export_head(model, config.output)
    if verified.non_finite_ids:
        files.write_text(out.path("deadletter", "non_finite.jsonl"), "".join(
            dl.dead_letter(dl.NON_FINITE, config.input, None, id_=i, detail="left out of training") + "\n"
            for i in verified.non_finite_ids))
    body = {"input_dim": datasets[0].dim, "output_dim": model.code_dim, "head": entry,
            "serving_head": reducers.HEAD_DIR,
            "keras_model": export.KERAS_MODEL_FILE, "config": config.model_config(),
            "training": {k: v for k, v in config.params().items() if k not in config.model_config()},
            "epochs_run": _epochs_run(out.path("train")), "final_losses": final,
            "records": verified.records, "records_non_finite": len(verified.non_finite_ids),
            "source": {"directory": files.absolute(config.input), "digest": datasets[0].digest,
                       "encoder": datasets[0].encoder}}
    if config.hub_handle:
        export.export_text_model(config.hub_handle, head, out.path(export.TEXT_MODEL_DIR))
        body.update(text_model=export.TEXT_MODEL_DIR, hub_handle=config.hub_handle)
    manifest = out.commit(body)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k in ("loss", "val_loss"))
    log.info("wrote autoencoder artifact %s (%d epochs, %s)", config.output, body["epochs_run"], losses)
    return manifest


def _epochs_run(train_dir: str) -> int:
    """Epochs finished over all attempts (the CSV log is appended across resumes)."""
    path = os.path.join(train_dir, "history.csv")
    if not gfile.exists(path):
        return 0
    with gfile.GFile(path) as f:
        rows = [line.split(",", 1)[0] for line in f.read().splitlines()[1:] if line.strip()]
    return len({r for r in rows if r.isdigit()})


def parse_config(argv: list[str] | None) -> TrainConfig:
    config = cli.parse_config(make_parser(), TrainConfig, argv, beam=False)[0]
    return config if config.output else dataclasses.replace(config, output=os.environ.get("AIP_MODEL_DIR"))


def main(argv: list[str] | None = None) -> dict:
    return train(parse_config(argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.train")
