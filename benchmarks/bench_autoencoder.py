"""Autoencoder quality and input-throughput benchmark: the autoencoder recipes against PCA.

Quality: reducers fitted on one text set, scored on the STS-benchmark test
pairs: fidelity (Pearson/Spearman between raw-512 and reduced cosines of each
pair) and Spearman of the reduced cosines against the human scores, next to
raw 512-d. Settings: ``in-domain`` (fitted on STS train+dev sentences) and
``financial`` (fitted on the financial-news corpus, the reference's setting:
the sentences outside the 100,000-sentence retrieval slice that
bench_quality.py searches, see ``financial_split``).
Autoencoders are trained in memory (same model and loss as pipelines.train) and
cached under benchmarks/out/models/ by (config, epochs, batch, seed, training
rows), so bench_quality.py scores the very models tabled here;
PCA is the exact numpy PCA of the same vectors.

Throughput: training examples/s of the same model fed from TFRecord shards
through trainer.data vs from an in-memory array.

    python benchmarks/bench_autoencoder.py --settings in-domain --epochs 100
    python benchmarks/bench_autoencoder.py --settings financial --epochs 10 --max-train 100000 \
        --stability-epochs 20 --stability-configs "cosine + sim 10, lr 1e-3"

Tables are printed; ``--write`` also replaces this script's section of
benchmarks/RESULTS.md (the whole section, with this run's tables).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import embedding_cache  # noqa: E402
import keras  # noqa: E402
import results  # noqa: E402
import tensorflow as tf  # noqa: E402

from core import pca as pca_math  # noqa: E402
from core.dataset import open_all  # noqa: E402
from core.evaluation import metrics  # noqa: E402
from tests.fixtures import write_embedding_dataset  # noqa: E402
from trainer import data  # noqa: E402
from trainer.model import build_autoencoder  # noqa: E402

TITLE = "Autoencoder recipes"
SEED = {"sizes": [256, 128], "activation": "selu", "normalize": True, "tied": True, "loss": "mse",
        "similarity_weight": 0.0, "lr": 1e-4}
# name -> changes to the seed (reference) recipe
CONFIGS = {
    "seed (mse, lr 1e-4)": {},
    "untied": {"tied": False},
    "no bottleneck norm": {"normalize": False},
    "cosine loss": {"loss": "cosine"},
    "mse + sim 1.0": {"similarity_weight": 1.0},
    "mse + sim 1.0, lr 1e-3": {"similarity_weight": 1.0, "lr": 1e-3},
    "cosine + sim 10, lr 1e-3": {"loss": "cosine", "similarity_weight": 10.0, "lr": 1e-3},
    "cosine + sim 10, lr 1e-3, untied": {"loss": "cosine", "similarity_weight": 10.0, "lr": 1e-3, "tied": False},
    "cosine + sim 10, lr 1e-3, no norm": {"loss": "cosine", "similarity_weight": 10.0, "lr": 1e-3,
                                          "normalize": False},
    "cosine + sim 30, lr 1e-3": {"loss": "cosine", "similarity_weight": 30.0, "lr": 1e-3},
    "cosine + sim 10, lr 1e-3, neighbour batches": {"loss": "cosine", "similarity_weight": 10.0, "lr": 1e-3,
                                                    "neighbour_batches": True},
    # the ranking term needs many rows per batch to hold near neighbours: batch 1024 (30 epochs ~ 2,900 steps)
    "cosine + sim 10 + rank 1, lr 1e-3, untied, batch 1024 x 30 epochs": {
        "loss": "cosine", "similarity_weight": 10.0, "rank_weight": 1.0, "lr": 1e-3, "tied": False,
        "batch_size": 1024, "epochs": 30},
    "cosine + sim 10 + rank 1, lr 1e-3, batch 1024 x 30 epochs": {
        "loss": "cosine", "similarity_weight": 10.0, "rank_weight": 1.0, "lr": 1e-3, "batch_size": 1024,
        "epochs": 30},
    "64-d seed": {"sizes": [256, 64]},
    "64-d cosine + sim 10, lr 1e-3": {"sizes": [256, 64], "loss": "cosine", "similarity_weight": 10.0,
                                      "lr": 1e-3},
}


MODEL_DIR = REPO / "benchmarks" / "out" / "models"
# The financial corpus is split once: a retrieval slice (searched by bench_quality.py, with its queries
# drawn from it) and the other sentences, which every financial-setting reducer is fitted on.
SLICE_SIZE, N_QUERIES, SPLIT_SEED = 100_000, 1_000, 0


def financial_split(n: int, slice_size: int = SLICE_SIZE, n_queries: int = N_QUERIES,
                    seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Row indices: ``slice`` (retrieval corpus), ``queries`` (positions inside the slice), ``train`` (the rest)."""
    if n <= slice_size:
        raise ValueError(f"corpus of {n} rows cannot hold a {slice_size}-row slice plus training rows")
    perm = np.random.default_rng(seed).permutation(n)
    queries = np.sort(np.random.default_rng(seed + 1).choice(slice_size, n_queries, replace=False))
    return {"slice": np.sort(perm[:slice_size]), "queries": queries, "train": np.sort(perm[slice_size:])}


def financial_train(x: np.ndarray, max_train: int = 0) -> np.ndarray:
    """The financial-setting training rows: outside the retrieval slice, optionally subsampled."""
    idx = financial_split(len(x))["train"]
    if max_train and len(idx) > max_train:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_train, replace=False))
    return x[idx]


def pca_reducer(x: np.ndarray, k: int):
    fit = pca_math.fit(x.astype(np.float64), k)
    return lambda v: pca_math.project(v, fit["components"], fit["mean"]).astype(np.float32)


def _encoder(model):
    def reduce(v: np.ndarray) -> np.ndarray:
        return np.concatenate([keras.ops.convert_to_numpy(model.reduce(v[i:i + 65536]))
                               for i in range(0, len(v), 65536)])
    return reduce


def approximate_neighbours(x: np.ndarray, block: int = 2048) -> np.ndarray:
    """Index of each row's nearest other row by cosine in the centered PCA-64 space."""
    z = metrics.normalize_rows(pca_reducer(x, 64)(x))
    nn = np.empty(len(z), dtype=np.int64)
    for start in range(0, len(z), block):
        sims = z[start:start + block] @ z.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        nn[start:start + block] = sims.argmax(axis=1)
    return nn


def neighbour_batches(x: np.ndarray, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Batches of batch_size/2 random rows plus each one's raw-cosine nearest neighbour.

    Random batches almost never hold near neighbours, so the similarity term
    never sees the high cosines that decide top-10 retrieval; pairing every
    row with its nearest neighbour puts such pairs in every batch
    (a benchmark-only sampling lever, not a trainer option).
    Neighbours are searched in the PCA-64 space of x (8x cheaper than 512-d; close enough to pick near pairs).
    """
    nn = approximate_neighbours(x)
    xs, nns = tf.constant(x), tf.constant(nn)
    half = batch_size // 2
    return (tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(half, drop_remainder=True)
            .map(lambda i: tf.concat([tf.gather(xs, i), tf.gather(xs, tf.gather(nns, i))], 0))
            .prefetch(2))


def model_path(x: np.ndarray, cfg: dict, epochs: int, batch_size: int, seed: int = 0) -> Path:
    """Cache file of the model trained on ``x`` with these settings (digest of data and settings)."""
    data_digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    key = json.dumps({"cfg": cfg, "epochs": epochs, "batch": batch_size, "seed": seed, "data": data_digest,
                      "rows": len(x)}, sort_keys=True)
    return MODEL_DIR / f"ae-{hashlib.sha256(key.encode()).hexdigest()[:16]}.keras"


def train_autoencoder(x: np.ndarray, cfg: dict, epochs: int, batch_size: int, seed: int = 0):
    """(reduce function, final training loss, training seconds).

    ``cfg`` may override ``epochs`` and ``batch_size``. A model trained before with equal settings is
    reloaded from the cache (with its recorded loss and time).
    """
    epochs, batch_size = cfg.get("epochs", epochs), cfg.get("batch_size", batch_size)
    path = model_path(x, cfg, epochs, batch_size, seed)
    if path.exists():
        info = json.loads(path.with_suffix(".json").read_text())
        return _encoder(keras.saving.load_model(path)), info["final_loss"], info["fit_s"]
    keras.utils.set_random_seed(seed)
    model_cfg = {k: v for k, v in cfg.items() if k not in ("lr", "neighbour_batches", "epochs", "batch_size")}
    model = build_autoencoder(x.shape[1], **model_cfg)
    model.compile(optimizer=keras.optimizers.Adam(cfg["lr"]))
    start = time.perf_counter()
    if cfg.get("neighbour_batches"):
        hist = model.fit(neighbour_batches(x, batch_size, seed), epochs=epochs, verbose=0, shuffle=False)
    else:
        hist = model.fit(x, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    loss, fit_s = float(hist.history["loss"][-1]), round(time.perf_counter() - start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps(
        {"cfg": cfg, "epochs": epochs, "batch_size": batch_size, "seed": seed, "rows": len(x),
         "final_loss": loss, "fit_s": fit_s}, indent=2) + "\n")
    return _encoder(model), loss, fit_s


def score(reduce, a, b, scores, raw_a, raw_b) -> dict:
    ra, rb = reduce(a), reduce(b)
    fid = metrics.sts_fidelity(raw_a, raw_b, ra, rb)
    human = metrics.human_correlation(ra, rb, scores)
    return {"fid_p": fid["pearson"], "fid_s": fid["spearman"], "human_s": human["spearman"]}


def quality_table(setting: str, train_x: np.ndarray, test, epochs: int, batch_size: int,
                  configs: list[str], stability: tuple[int, list[str]] = (0, [])) -> list[str]:
    a, b, scores = test
    raw_human = metrics.human_correlation(a, b, scores)["spearman"]
    rows = [("raw 512-d", {"fid_p": 1.0, "fid_s": 1.0, "human_s": raw_human}, "", 0.0)]
    for k in (128, 64):
        t = time.perf_counter()
        rows.append((f"PCA-{k}", score(pca_reducer(train_x, k), a, b, scores, a, b), "", time.perf_counter() - t))
        print(rows[-1], flush=True)
    runs = [(name, epochs) for name in configs] + [(name, stability[0]) for name in stability[1]]
    for name, n_epochs in runs:
        cfg = {**SEED, **CONFIGS[name]}
        reduce, loss, fit_s = train_autoencoder(train_x, cfg, n_epochs, batch_size)
        label = f"AE {name}" + (f" @ {n_epochs} epochs" if n_epochs != epochs else "")
        rows.append((label, score(reduce, a, b, scores, a, b), f"{loss:.4g}", fit_s))
        print(rows[-1], flush=True)
    lines = [f"### {setting}: fitted on {len(train_x)} sentences, scored on {len(a)} STS test pairs",
             "", "| reducer | fidelity Pearson | fidelity Spearman | Spearman vs human | "
             "human - raw | final train loss | fit s |", "|---|---|---|---|---|---|---|"]
    for name, r, loss, secs in rows:
        lines.append(f"| {name} | {r['fid_p']:.4f} | {r['fid_s']:.4f} | {r['human_s']:.4f} | "
                     f"{r['human_s'] - raw_human:+.4f} | {loss} | {secs:.0f} |")
    return lines


def throughput(x: np.ndarray, batch_size: int, epochs: int = 3) -> list[str]:
    """Examples/s of one model trained from shards vs from memory (best of ``epochs`` epochs each)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_embedding_dataset(tmp, x, num_shards=4, with_text=False)
        source = open_all([tmp])
        ds = data.make_dataset(source, batch_size, val_permille=0)
        n_shards = sum(1 for _ in ds.unbatch())
        model = build_autoencoder(x.shape[1])
        model.compile(optimizer=keras.optimizers.Adam(1e-4))

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.t)

        def best(fit_input, n, **kw):
            timer = Timer()
            timer.times = []
            model.fit(fit_input, epochs=epochs + 1, verbose=0, callbacks=[timer], **kw)
            return n / min(timer.times[1:])  # epoch 0 traces and warms up

        import warnings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            shards = best(ds, n_shards, shuffle=False)
        memory = best(x, len(x), batch_size=batch_size, shuffle=True)
    return ["### Training input throughput (same model, batch %d, %d examples, best of %d epochs)" % (
        batch_size, len(x), epochs), "", "| input | examples/s |", "|---|---|",
        f"| TFRecord shards via trainer.data | {shards:,.0f} |", f"| in-memory array | {memory:,.0f} |",
        "", f"Ratio shards / in-memory: **{shards / memory:.2f}** (target >= 0.8)."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=embedding_cache.DEFAULT_DATA_DIR)
    p.add_argument("--settings", nargs="+", choices=["in-domain", "financial"], default=["in-domain"])
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=100, help="training epochs (the reference: 100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-train", type=int, default=0, help="subsample the training set (0: all)")
    p.add_argument("--stability-epochs", type=int, default=0,
                   help="also train --stability-configs for this many epochs (is the result stable?)")
    p.add_argument("--stability-configs", nargs="*", choices=sorted(CONFIGS), default=[])
    p.add_argument("--throughput", action="store_true", help="also measure shard vs in-memory input")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = p.parse_args(argv)

    test = embedding_cache.sts_test(args.data_dir)
    start = time.perf_counter()
    lines = []
    for setting in args.settings:
        if setting == "financial":
            x = financial_train(embedding_cache.financial(args.data_dir)[1], args.max_train)
        else:
            _, x = embedding_cache.sts_train_dev(args.data_dir)
            if args.max_train and len(x) > args.max_train:
                x = x[np.random.default_rng(0).choice(len(x), args.max_train, replace=False)]
        lines += quality_table(setting, x, test, args.epochs, args.batch_size, args.configs,
                               (args.stability_epochs, args.stability_configs)) + [""]
        if args.throughput and setting == args.settings[0]:
            lines += throughput(x, args.batch_size) + [""]
    header = [f"{results.machine_line()}; TF {tf.__version__}, Keras {keras.__version__}. "
              f"Settings: epochs {args.epochs}, batch {args.batch_size}, max-train {args.max_train or 'all'}; "
              f"AE rows change the seed recipe {SEED} as named. Run time {time.perf_counter() - start:.0f} s.",
              ""]
    text = "\n".join(header + lines)
    print(text)
    if args.write:
        results.write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
