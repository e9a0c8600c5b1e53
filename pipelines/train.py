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
import logging
import os
from dataclasses import dataclass

from core import config as cfg
from core import deadletter as dl
from core import files, manifests, reducers
from core.config import option
from core.dataset import HOLDOUT_BUCKETS, open_all
from core.errors import InputError
from core.outputs import OutputDir
from pipelines import cli
from pipelines.cli import job_parser
from trainer.options import HAS_TENSORBOARD, LOSSES, SCHEDULES, STRATEGIES

log = logging.getLogger(__name__)



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
                                            "corpus gets fewer epochs of as many steps, and one over 2N rows sees "
                                            "N examples in 10 partial epochs")
    early_stopping: bool = option(True, "stop when validation loss stalls")
    patience: int = option(5, "early stopping: epochs without an improvement before training stops")
    min_improvement: float = option(0.002, "early stopping: an epoch improves only when its validation loss falls "
                                           "below the best so far by more than this fraction of it (0: any "
                                           "decrease, Keras's rule); 0.002 stops only a loss that has really "
                                           "flattened (docs/train.md)")
    lr_schedule: str = option("cosine", "cosine: decay from --learning_rate to 0 over the planned epochs; plateau: "
                                        "halve it when the validation loss stalls; constant",
                              choices=SCHEDULES)
    val_permille: int = option(50, "validation share by id hash, per mille (0 <= v < 1000)")
    shuffle_buffer: int = option(10_000, "rows shuffled together between epochs")
    seed: int = option(0, "initialization, shuffling and split seed")
    strategy: str = option("default", "tf.distribute strategy", choices=STRATEGIES)
    tensorboard: bool = option(HAS_TENSORBOARD, "write TensorBoard logs to OUTPUT/train/logs (default: when "
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


def train(config: TrainConfig, extra_callbacks: list | None = None) -> dict:
    """Train, export and write the manifest; returns the manifest ({} on a non-chief worker)."""
    from trainer import data, training  # Keras: imported when training, not to show --help

    check_config(config)
    datasets = open_all([config.input, *config.extra_input])
    params = {**config.params(), "inputs": [d.digest for d in datasets]}
    chief = training.is_chief(training.make_strategy(config.strategy))
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
        schedule = training.planned_schedule(config, train_rows)
        log.info("%s", training.plan_line(train_rows, verified.validation, config.batch_size, schedule))
        train_dir = out.path("train")
        model, final = training.fit(config, datasets, train_dir, extra_callbacks or [], schedule, train_rows,
                                    verified.validation)
        if not chief:  # workers of a cluster train; only the chief writes the artifact
            return {}
        return _export(config, out, model, final, datasets, verified)


def _export(config: TrainConfig, out: OutputDir, model, final: dict, datasets, verified) -> dict:
    from trainer import export, training

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
            "epochs_run": training.epochs_run(out.path("train")), "final_losses": final,
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


def parse_config(argv: list[str] | None) -> TrainConfig:
    config = cli.parse_config(make_parser(), TrainConfig, argv, beam=False)[0]
    return config if config.output else dataclasses.replace(config, output=os.environ.get("AIP_MODEL_DIR"))


def main(argv: list[str] | None = None) -> dict:
    return train(parse_config(argv))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.train")
