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
import json
import logging
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorflow.io import gfile

from pipelines.common import artifacts
from trainer import data, export
from trainer.model import LOSSES, build_autoencoder

log = logging.getLogger(__name__)

RUN_PARAMS = "run_params.json"
_HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
STRATEGIES = ("default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "plateau")
# Flags that change the trained model (the rest only change where it goes).
_MODEL_FLAGS = ("sizes", "activation", "normalize", "tied", "loss", "similarity_weight", "rank_weight",
                "rank_temperature", "learning_rate", "batch_size", "epochs", "early_stopping", "patience", "lr_schedule", "val_permille",
                "shuffle_buffer", "seed")


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {value!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink train", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="embedding dataset directory (output of `shrink embed`)")
    p.add_argument("--extra_input", action="append", default=[],
                   help="more embedding datasets to train on together with --input (e.g. a corpus's increments)")
    p.add_argument("--output", default=os.environ.get("AIP_MODEL_DIR"),
                   help="artifact directory (default: $AIP_MODEL_DIR)")
    p.add_argument("--sizes", type=_sizes, default=[256, 128], help="encoder layer sizes; the last is the code size")
    p.add_argument("--activation", default="selu")
    p.add_argument("--normalize", type=_bool, default=True, help="unit-L2-normalize the codes")
    p.add_argument("--tied", type=_bool, default=False,
                   help="decoder reuses the encoder kernels (reference: true)")
    # Defaults: the best measured recipe (benchmarks/RESULTS.md). The reference's seed recipe is
    # --tied true --loss mse --similarity_weight 0 --rank_weight 0 --learning_rate 1e-4 --batch_size 128.
    p.add_argument("--loss", choices=LOSSES, default="cosine", help="reconstruction loss (reference: mse)")
    p.add_argument("--similarity_weight", type=float, default=10.0,
                   help="weight of the in-batch cosine-similarity preservation term (reference: 0)")
    p.add_argument("--rank_weight", type=float, default=1.0,
                   help="weight of the in-batch neighbour-ranking (listwise distillation) term (reference: 0)")
    p.add_argument("--rank_temperature", type=float, default=0.05,
                   help="softmax temperature of the ranking term: lower focuses on the nearest rows")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate (reference: 1e-4)")
    p.add_argument("--batch_size", type=int, default=1024,
                   help="global batch size; the ranking term needs large batches (reference: 128)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--early_stopping", type=_bool, default=True, help="stop when validation loss stalls")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--lr_schedule", choices=SCHEDULES, default="constant")
    p.add_argument("--val_permille", type=int, default=50, help="validation share by id hash, per mille")
    p.add_argument("--shuffle_buffer", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", choices=STRATEGIES, default="default", help="tf.distribute strategy")
    p.add_argument("--tensorboard", type=_bool, default=_HAS_TENSORBOARD,
                   help="write TensorBoard logs to OUTPUT/train/logs (default: when tensorboard is installed)")
    p.add_argument("--hub_handle", help="also export text -> codes with this TF Hub encoder handle")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or different run in --output")
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
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


def model_config(args: argparse.Namespace) -> dict:
    return {"sizes": args.sizes, "activation": args.activation, "normalize": args.normalize,
            "tied": args.tied, "loss": args.loss, "similarity_weight": args.similarity_weight,
            "rank_weight": args.rank_weight, "rank_temperature": args.rank_temperature}


def prepare(output: str, params: dict, overwrite: bool) -> None:
    """Make ``output`` ready: refuse to clobber, keep the state of a run to resume."""
    fp = artifacts.fingerprint(params)
    params_path = os.path.join(output, "train", RUN_PARAMS)
    finished = gfile.exists(artifacts.manifest_path(output))
    previous = None
    if gfile.exists(params_path):
        with gfile.GFile(params_path) as f:
            previous = json.load(f).get("fingerprint")
    if finished or (previous is not None and previous != fp):
        if not overwrite:
            what = "a finished run" if finished else f"an unfinished different run (fingerprint {previous})"
            raise artifacts.ArtifactError(f"{output} already holds {what}; choose another --output "
                                          "or pass --overwrite")
        log.info("clearing %s", output)
        gfile.rmtree(output)
    elif previous == fp:
        log.info("resuming the unfinished run in %s", output)
    gfile.makedirs(os.path.join(output, "train"))
    with gfile.GFile(params_path, "w") as f:
        json.dump({"fingerprint": fp, "params": params}, f, indent=2, sort_keys=True)


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


def make_callbacks(args: argparse.Namespace, train_dir: str, has_val: bool) -> list:
    monitor = "val_loss" if has_val else "loss"
    cbs = [
        keras.callbacks.BackupAndRestore(os.path.join(train_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(train_dir, "checkpoints", "last.keras")),
        keras.callbacks.ModelCheckpoint(os.path.join(train_dir, "checkpoints", "best.keras"),
                                        monitor=monitor, save_best_only=True),
        CSVLogger(os.path.join(train_dir, "history.csv"), append=True),
    ]
    if args.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard), "
                             "or pass --tensorboard false; history.csv is written either way")
        cbs.append(keras.callbacks.TensorBoard(os.path.join(train_dir, "logs")))
    if args.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=args.patience,
                                                 restore_best_weights=True))
    if args.lr_schedule == "cosine":
        lr, epochs = args.learning_rate, args.epochs
        cbs.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))))
    elif args.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                     patience=max(1, args.patience // 2)))
    return cbs


def train(args: argparse.Namespace, extra_callbacks: list | None = None) -> dict:
    """Train, export and write the manifest; returns the manifest."""
    if not args.output:
        raise ValueError("--output is required (or set AIP_MODEL_DIR)")
    source = data.open_sources([args.input, *args.extra_input])
    params = {k: getattr(args, k) for k in _MODEL_FLAGS}
    params.update(input=artifacts.absolute(args.input), source_fingerprint=source.manifest.get("fingerprint"))
    if args.extra_input:  # absent from single-input params, so their fingerprints are unchanged
        params["extra_input"] = [[artifacts.absolute(d), artifacts.read_manifest(d).get("fingerprint")]
                                 for d in args.extra_input]
    prepare(args.output, params, args.overwrite)
    train_dir = os.path.join(args.output, "train")
    keras.utils.set_random_seed(args.seed)

    strategy = make_strategy(args.strategy)
    has_val = args.val_permille > 0
    train_ds = data.make_dataset(source, args.batch_size, val_permille=args.val_permille,
                                 shuffle_buffer=args.shuffle_buffer, seed=args.seed)
    val_ds = data.make_dataset(source, args.batch_size, validation=True,
                               val_permille=args.val_permille) if has_val else None
    with strategy.scope():
        model = build_autoencoder(source.dim, **model_config(args))
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    callbacks = make_callbacks(args, train_dir, has_val) + list(extra_callbacks or [])
    with warnings.catch_warnings():
        # Keras learns the length of a filtered dataset at the end of its first pass and warns; benign.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(train_ds, validation_data=val_ds, epochs=args.epochs,
                            callbacks=callbacks, verbose=args.verbose, shuffle=False)  # tf.data shuffles
        # the weights kept (the best ones, with early stopping) scored on validation
        exported_val_loss = float(np.ravel(model.evaluate(val_ds, verbose=0))[0]) if has_val else None

    if not _is_chief(strategy):  # workers of a cluster run train, only the chief writes the artifact
        return {}
    epochs_run = _epochs_run(train_dir)
    final = {k: float(v[-1]) for k, v in history.history.items() if v and k != "learning_rate"}
    if has_val:
        final["val_loss_exported"] = exported_val_loss
    model.save(os.path.join(args.output, export.KERAS_MODEL_FILE))
    head_dir = export.export_head(model, args.output)
    body = {"input_dim": source.dim, "output_dim": model.code_dim, "head": os.path.basename(head_dir),
            "keras_model": export.KERAS_MODEL_FILE, "config": model_config(args),
            "training": {k: params[k] for k in _MODEL_FLAGS if k not in model_config(args)},
            "epochs_run": epochs_run, "final_losses": final,
            "source": {"directory": params["input"], "fingerprint": params["source_fingerprint"],
                       "encoder": source.manifest.get("encoder")},
            "fingerprint": artifacts.fingerprint(params)}
    if args.hub_handle:
        export.export_text_model(args.hub_handle, head_dir, os.path.join(args.output, export.TEXT_MODEL_DIR))
        body.update(text_model=export.TEXT_MODEL_DIR, hub_handle=args.hub_handle)
    manifest = artifacts.write_manifest(args.output, "autoencoder", body)
    log.info("wrote autoencoder artifact %s (%d epochs, %s)", args.output, epochs_run, final)
    return manifest


def _epochs_run(train_dir: str) -> int:
    """Epochs finished over all attempts (the CSV log is appended across resumes)."""
    path = os.path.join(train_dir, "history.csv")
    if not gfile.exists(path):
        return 0
    with gfile.GFile(path) as f:
        rows = [line.split(",", 1)[0] for line in f.read().splitlines()[1:] if line.strip()]
    return len({r for r in rows if r.isdigit()})


def run(argv: list[str] | None = None) -> dict:
    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("trainer.task")
