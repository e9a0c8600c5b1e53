"""Train the tied autoencoder on embedding shards and export a reduction head.

Vertex AI-style entry point: ``python -m trainer.task --input DIR --output DIR``
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
import importlib.util
import logging
import math
import os
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.io import gfile

from pipelines.common import config as cfg
from pipelines.common import deadletter as dl
from pipelines.common import files, manifests, reducers
from pipelines.common.dataset import HOLDOUT_BUCKETS, open_all
from pipelines.common.errors import InputError
from pipelines.common.outputs import OutputDir
from trainer import data, export
from trainer.model import LOSSES, build_autoencoder

log = logging.getLogger(__name__)

_HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
STRATEGIES = ("default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "plateau")
OWNED = (f"{reducers.HEAD_DIR}/*", export.KERAS_MODEL_FILE, f"{export.TEXT_MODEL_DIR}/*", "train/*", "deadletter/*")


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's flags. Defaults: the best measured recipe (benchmarks/RESULTS.md); the reference's
    seed recipe is ``--tied --loss mse --similarity_weight 0 --rank_weight 0 --learning_rate 1e-4
    --batch_size 128``."""
    input: str
    output: str | None = None
    extra_input: tuple[str, ...] = ()
    sizes: tuple[int, ...] = (256, 128)
    activation: str = "selu"
    normalize: bool = True
    tied: bool = False
    loss: str = "cosine"
    similarity_weight: float = 10.0
    rank_weight: float = 1.0
    rank_temperature: float = 0.05
    learning_rate: float = 1e-3
    batch_size: int = 1024
    epochs: int = 100
    early_stopping: bool = True
    patience: int = 5
    lr_schedule: str = "constant"
    val_permille: int = 50
    shuffle_buffer: int = 10_000
    seed: int = 0
    strategy: str = "default"
    tensorboard: bool = _HAS_TENSORBOARD
    hub_handle: str | None = None
    overwrite: bool = False
    verbose: int = 2

    def model_config(self) -> dict:
        return {"sizes": list(self.sizes), "activation": self.activation, "normalize": self.normalize,
                "tied": self.tied, "loss": self.loss, "similarity_weight": self.similarity_weight,
                "rank_weight": self.rank_weight, "rank_temperature": self.rank_temperature}

    def params(self) -> dict:
        """What changes the trained model (the rest only changes where it goes or how it is logged)."""
        return cfg.params(self, exclude=("input", "output", "extra_input", "strategy", "tensorboard", "hub_handle",
                                         "overwrite", "verbose"))


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {value!r}")
    return sizes


def build_parser(**overrides) -> argparse.ArgumentParser:
    """The trainer's flags (``overrides`` replace parser settings, e.g. ``argument_default``)."""
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink train", description=__doc__.split("\n")[0],
                                **overrides)
    d = TrainConfig
    p.add_argument("--input", required=True, help="embedding dataset directory (output of `shrink embed`)")
    p.add_argument("--extra_input", action="append", default=[],
                   help="more embedding datasets to train on together with --input (e.g. a corpus's increments)")
    p.add_argument("--output", default=os.environ.get("AIP_MODEL_DIR"),
                   help="artifact directory (default: $AIP_MODEL_DIR)")
    p.add_argument("--sizes", type=_sizes, default=d.sizes, help="encoder layer sizes; the last is the code size")
    p.add_argument("--activation", default=d.activation)
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=d.normalize,
                   help="unit-L2-normalize the codes")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=d.tied,
                   help="decoder reuses the transposed encoder kernels (reference: tied)")
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help="reconstruction loss (reference: mse)")
    p.add_argument("--similarity_weight", type=float, default=d.similarity_weight,
                   help="weight of the in-batch cosine-similarity preservation term (reference: 0)")
    p.add_argument("--rank_weight", type=float, default=d.rank_weight,
                   help="weight of the in-batch neighbour-ranking (listwise distillation) term (reference: 0)")
    p.add_argument("--rank_temperature", type=float, default=d.rank_temperature,
                   help="softmax temperature of the ranking term: lower focuses on the nearest rows")
    p.add_argument("--learning_rate", type=float, default=d.learning_rate, help="Adam learning rate (reference: 1e-4)")
    p.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="global batch size; the ranking term needs large batches (reference: 128)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="most epochs to train")
    p.add_argument("--early_stopping", action=argparse.BooleanOptionalAction, default=d.early_stopping,
                   help="stop when validation loss stalls")
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--lr_schedule", choices=SCHEDULES, default=d.lr_schedule)
    p.add_argument("--val_permille", type=int, default=d.val_permille,
                   help="validation share by id hash, per mille (0 <= v < 1000)")
    p.add_argument("--shuffle_buffer", type=int, default=d.shuffle_buffer)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy, help="tf.distribute strategy")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=d.tensorboard,
                   help="write TensorBoard logs to OUTPUT/train/logs (default: when tensorboard is installed)")
    p.add_argument("--hub_handle", help="also export text -> codes with this TF Hub encoder handle")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an earlier training run of different parameters in --output")
    p.add_argument("--verbose", type=int, default=d.verbose, help="Keras fit verbosity")
    return p


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


def make_callbacks(config: TrainConfig, train_dir: str, has_val: bool) -> list:
    monitor = "val_loss" if has_val else "loss"
    cbs = [
        _StopOnNonFiniteLoss(),
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
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                                 restore_best_weights=True))
    if config.lr_schedule == "cosine":
        lr, epochs = config.learning_rate, config.epochs
        cbs.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))))
    elif config.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                     patience=max(1, config.patience // 2)))
    return cbs


def fit(config: TrainConfig, datasets, train_dir: str, extra_callbacks: list) -> tuple[keras.Model, dict]:
    """Build and fit the model; returns it and the final losses. Fails on a non-finite loss."""
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    has_val = config.val_permille > 0
    train_ds = data.make_dataset(datasets, config.batch_size, val_permille=config.val_permille,
                                 shuffle_buffer=config.shuffle_buffer, seed=config.seed)
    val_ds = data.make_dataset(datasets, config.batch_size, validation=True,
                               val_permille=config.val_permille) if has_val else None
    with strategy.scope():
        model = build_autoencoder(datasets[0].dim, **config.model_config())
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    callbacks = make_callbacks(config, train_dir, has_val) + list(extra_callbacks)
    with warnings.catch_warnings():
        # Keras learns the length of a filtered dataset at the end of its first pass and warns; benign.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False)  # tf.data shuffles
        if callbacks[0].fired:
            raise InputError("training stopped: the loss became NaN or infinite. Try a lower --learning_rate "
                             "(the input vectors were checked and are finite)")
        final = {k: float(v[-1]) for k, v in history.history.items() if v and k != "learning_rate"}
        if has_val:  # the weights kept (the best ones, with early stopping) scored on validation
            final["val_loss_exported"] = float(np.ravel(model.evaluate(val_ds, verbose=0))[0])
    return model, final


def train(config: TrainConfig, extra_callbacks: list | None = None) -> dict:
    """Train, export and write the manifest; returns the manifest ({} on a non-chief worker)."""
    check_config(config)
    datasets = open_all([config.input, *config.extra_input])
    params = {**config.params(), "inputs": [[files.absolute(d.directory), d.fingerprint] for d in datasets]}
    chief = _is_chief(make_strategy(config.strategy))
    out = OutputDir(config.output, "autoencoder", manifests.fingerprint(params), OWNED)
    if chief:
        out.claim(config.overwrite, resume=True)
    with out:
        verified = data.verify(datasets)
        usable = verified.records - len(verified.non_finite_ids)
        if usable == 0:
            raise InputError(f"{config.input} holds no finite vectors to train on")
        if verified.non_finite_ids:
            log.warning("%d vector(s) hold NaN/Inf and are left out of training (ids in %s)",
                        len(verified.non_finite_ids), out.path("deadletter"))
        train_dir = out.path("train")
        model, final = fit(config, datasets, train_dir, extra_callbacks or [])
        if not chief:  # workers of a cluster train; only the chief writes the artifact
            return {}
        return _export(config, out, model, final, datasets, verified)


def _export(config: TrainConfig, out: OutputDir, model, final: dict, datasets, verified: data.Verified) -> dict:
    model.save(out.path(export.KERAS_MODEL_FILE))
    head_dir = export.export_head(model, config.output)
    if verified.non_finite_ids:
        files.write_text(out.path("deadletter", "non_finite.jsonl"), "".join(
            dl.dead_letter(dl.NON_FINITE, config.input, None, id_=i, detail="left out of training") + "\n"
            for i in verified.non_finite_ids))
    body = {"input_dim": datasets[0].dim, "output_dim": model.code_dim, "head": reducers.HEAD_DIR,
            "keras_model": export.KERAS_MODEL_FILE, "config": config.model_config(),
            "training": {k: v for k, v in config.params().items() if k not in config.model_config()},
            "epochs_run": _epochs_run(out.path("train")), "final_losses": final,
            "records": verified.records, "records_non_finite": len(verified.non_finite_ids),
            "source": {"directory": files.absolute(config.input), "fingerprint": datasets[0].fingerprint,
                       "encoder": datasets[0].encoder}}
    if config.hub_handle:
        export.export_text_model(config.hub_handle, head_dir, out.path(export.TEXT_MODEL_DIR))
        body.update(text_model=export.TEXT_MODEL_DIR, hub_handle=config.hub_handle)
    manifest = out.commit(body)
    log.info("wrote autoencoder artifact %s (%d epochs, %s)", config.output, body["epochs_run"], final)
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
    return cfg.from_namespace(TrainConfig, build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> dict:
    return train(parse_config(argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("trainer.task")
