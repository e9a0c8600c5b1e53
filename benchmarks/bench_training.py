"""Training budget: today's 100-epoch recipe vs the default stopping rule, through ``pipelines.train.train``.

Every variant is a set of ``shrink train`` flags on top of the trainer's
defaults, trained by the real entry point (``pipelines.train.train``: same
model, losses, input pipeline and callbacks) on the financial setting's
fit rows (``bench_autoencoder.financial_train``: 100,000 sentences outside
the retrieval slice) written as an embedding dataset. Each artifact is scored
as the product loads it (``load_reducer``): STS-B test fidelity (Pearson of
raw vs reduced pair cosines) and label-free retrieval on the 100,000-sentence
slice (1,000 queries, raw-512 exact top-10 as the golden set: MRR@10,
recall@10). Training time is the wall clock of ``train()`` (verify, fit,
export), all variants in one run so their ratios share the machine's load.

The per-epoch validation loss (``history.csv``) of the first variant is
also replayed through ``pipelines.train.PlateauStopping`` for a grid of
(patience, min_improvement): where each rule would have stopped on that
curve. ``--probe`` scores every epoch's model too (slower; for the curves).

    python benchmarks/bench_training.py                     # previous default (100 epochs) vs default
    python benchmarks/bench_training.py --variants "100 epochs (previous default)" "lr 5e-3, cosine 20" --probe
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_autoencoder as ae  # noqa: E402
import embedding_cache  # noqa: E402
import keras  # noqa: E402

from core import search  # noqa: E402
from core.evaluation import metrics  # noqa: E402
from core.reducers import load_reducer  # noqa: E402
from pipelines import train as task  # noqa: E402
from tests.fixtures import write_embedding_dataset  # noqa: E402
from trainer import training  # noqa: E402

TITLE = "Training budget: when training stops"
OUT = REPO / "benchmarks" / "out" / "training"
# name -> shrink train flags on top of the trainer's defaults
VARIANTS = {
    "100 epochs (previous default)": ["--learning_rate", "1e-3", "--lr_schedule", "constant", "--epochs", "100",
                                      "--train_examples", "0", "--patience", "5", "--min_improvement", "0"],
    "default": [],
    # the candidates measured on the way (benchmarks/RESULTS.md); a budget of 20 epochs is 1.9M examples here
    "lr 1e-3, cosine 20": ["--learning_rate", "1e-3", "--epochs", "20", "--train_examples", "0"],
    "lr 5e-3, cosine 20": ["--learning_rate", "5e-3", "--epochs", "20", "--train_examples", "0"],
    "lr 1e-2, cosine 20": ["--epochs", "20", "--train_examples", "0"],
    "lr 3e-3, constant": ["--learning_rate", "3e-3", "--lr_schedule", "constant", "--train_examples", "0",
                          "--epochs", "40", "--min_improvement", "0"],
    "lr 5e-3, constant": ["--learning_rate", "5e-3", "--lr_schedule", "constant", "--train_examples", "0",
                          "--epochs", "40", "--min_improvement", "0"],
}
RULES = [(p, m) for p in (3, 5, 10) for m in (0.0, 0.001, 0.002, 0.005, 0.01)]
CURVE_EPOCHS = (1, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100)


class Eval:
    """The scoring data, prepared once: STS test pairs, the retrieval slice, its queries and raw top-10."""

    def __init__(self, x: np.ndarray, data_dir: Path):
        split = ae.financial_split(len(x))
        self.a, self.b, _ = embedding_cache.sts_test(data_dir)
        self.corpus, self.queries = x[split["slice"]], split["queries"]
        self.raw_top, _ = search.top_k(self.corpus[self.queries], self.corpus, 10, exclude=self.queries)

    def score(self, reduce) -> dict:
        fid = metrics.sts_fidelity(self.a, self.b, reduce(self.a), reduce(self.b))["pearson"]
        c = reduce(self.corpus)
        top, _ = search.top_k(c[self.queries], c, 10, exclude=self.queries)
        lf = metrics.neighbour_fidelity(self.raw_top, top)
        return {"fidelity": fid, "mrr@10": lf["mrr@10"], "recall@10": lf["recall@10"]}


class Probe(keras.callbacks.Callback):
    """Scores the model after every epoch (for the quality-vs-epoch curves; adds its time to the run's)."""

    def __init__(self, ev: Eval):
        super().__init__()
        self.ev, self.rows = ev, []

    def on_epoch_end(self, epoch, logs=None):
        reduce = lambda v: np.concatenate([keras.ops.convert_to_numpy(self.model.reduce(v[i:i + 65536]))  # noqa
                                           for i in range(0, len(v), 65536)])
        self.rows.append({"epoch": epoch + 1, "val_loss": (logs or {}).get("val_loss"), **self.ev.score(reduce)})
        print("probe", self.rows[-1], flush=True)


def history(out: Path) -> list[dict]:
    with open(out / "train" / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_variant(name: str, dataset: str, ev: Eval, probe: bool) -> dict:
    """Train one variant from scratch and score its artifact."""
    out = OUT / name.replace(" ", "_").replace("%", "pct").replace("+", "and")
    shutil.rmtree(out, ignore_errors=True)
    config = task.parse_config(["--input", dataset, "--output", str(out), *VARIANTS[name]])
    callbacks = [Probe(ev)] if probe else []
    start = time.perf_counter()
    manifest = task.train(config, extra_callbacks=callbacks)
    seconds = time.perf_counter() - start
    result = {"name": name, "seconds": seconds, "epochs": manifest["epochs_run"], "history": history(out),
              "probe": callbacks[0].rows if probe else [], "config": config, **ev.score(load_reducer(str(out)))}
    print({k: v for k, v in result.items() if k not in ("history", "probe")}, flush=True)
    return result


class _Weights:
    """Stands in for a model when replaying a loss curve through the stopping rule."""
    stop_training = False

    def get_weights(self):
        return []

    def set_weights(self, weights):
        pass


def replay(val_losses: list[float], patience: int, min_improvement: float) -> tuple[int, int]:
    """(epochs run, epoch kept), 1-based, had ``PlateauStopping`` watched this curve."""
    rule = training.PlateauStopping("val_loss", patience, min_improvement)
    rule.set_model(_Weights())
    for epoch, loss in enumerate(val_losses):
        rule.on_epoch_end(epoch, {"val_loss": loss})
        if rule.model.stop_training:
            return epoch + 1, rule.lowest_epoch + 1
    return len(val_losses), rule.lowest_epoch + 1


def flags(result: dict) -> str:
    c = result["config"]
    return (f"`--learning_rate {c.learning_rate:g} --lr_schedule {c.lr_schedule} --train_examples {c.train_examples} "
            f"--epochs {c.epochs} --patience {c.patience} --min_improvement {c.min_improvement:g}`")


def results_table(results: list[dict]) -> list[str]:
    base = results[0]
    lines = [f"| variant | flags | epochs run | train s | time / {base['name']} | STS fidelity | "
             "MRR@10 | recall@10 |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {flags(r)} | {r['epochs']} | {r['seconds']:.0f} | {r['seconds'] / base['seconds']:.2f} | "
            f"{r['fidelity']:.4f} ({r['fidelity'] - base['fidelity']:+.4f}) | "
            f"{r['mrr@10']:.4f} ({r['mrr@10'] - base['mrr@10']:+.4f}) | "
            f"{r['recall@10']:.4f} ({r['recall@10'] - base['recall@10']:+.4f}) |")
    return lines


def targets(base: dict, r: dict) -> str:
    """The issue's targets for ``r`` against ``base`` (the 100-epoch recipe)."""
    checks = [(f"STS fidelity within 0.003 ({r['fidelity'] - base['fidelity']:+.4f})",
               r["fidelity"] >= base["fidelity"] - 0.003),
              (f"recall@10 within 0.005 ({r['recall@10'] - base['recall@10']:+.4f})",
               r["recall@10"] >= base["recall@10"] - 0.005),
              (f"at most 1/4 of the time ({r['seconds'] / base['seconds']:.2f})", r["seconds"] <= base["seconds"] / 4)]
    return f"{r['name']}: " + "; ".join(f"{text} {'met' if ok else 'MISSED'}" for text, ok in checks)


def curve_table(results: list[dict]) -> list[str]:
    """val_loss at chosen epochs, with its relative fall over the 5 epochs before."""
    lines = ["| epoch | " + " | ".join(r["name"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for e in CURVE_EPOCHS:
        cells = []
        for r in results:
            v = [h["val_loss"] for h in r["history"]]
            cells.append("" if e > len(v) else f"{v[e - 1]:.4f}" + (
                f" ({(v[e - 1] - v[e - 6]) / v[e - 6]:+.2%} / 5 ep)" if e > 5 else ""))
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def rules_table(result: dict) -> list[str]:
    """Where each (patience, min_improvement) rule stops on ``result``'s curve, and (with --probe) its quality."""
    val = [h["val_loss"] for h in result["history"]]
    probe = {p["epoch"]: p for p in result["probe"]}
    lines = ["| patience | min_improvement | epochs run | epoch kept | val_loss kept | STS fidelity | recall@10 |",
             "|---|---|---|---|---|---|---|"]
    for patience, m in RULES:
        run, kept = replay(val, patience, m)
        q = probe.get(kept)
        quality = f"{q['fidelity']:.4f} | {q['recall@10']:.4f}" if q else " | "
        lines.append(f"| {patience} | {m:.1%} | {run} | {kept} | {val[kept - 1]:.4f} | {quality} |")
    return lines


def probe_table(result: dict) -> list[str]:
    rows = {p["epoch"]: p for p in result["probe"]}
    lines = [f"Per-epoch quality of `{result['name']}`:", "",
             "| epoch | val_loss | STS fidelity | MRR@10 | recall@10 |", "|---|---|---|---|---|"]
    for e in sorted(rows):
        p = rows[e]
        lines.append(f"| {e} | {p['val_loss']:.4f} | {p['fidelity']:.4f} | {p['mrr@10']:.4f} | {p['recall@10']:.4f} |")
    return lines


def report(results: list[dict], rows: int, run_s: float) -> str:
    from results import machine_line

    base = results[0]
    variants = " ".join(map(repr, [r["name"] for r in results]))
    lines = [f"{machine_line()}. `python benchmarks/bench_training.py --variants {variants}`, run time "
             f"{run_s / 60:.0f} min. Each variant is `shrink train` (`pipelines.train.train`) with the "
             f"trainer's defaults plus its flags, on the {rows:,} financial fit rows (5% held out for validation), "
             "scored as a loaded artifact: STS-B test fidelity (Pearson, raw vs reduced pair cosines), label-free "
             "retrieval on the 100,000-sentence slice (1,000 queries, raw-512 top-10 golden). Train s: wall clock "
             "of `train()` (verify, fit, export), one run, the machine shared.", "", *results_table(results), "",
             *[f"- {targets(base, r)}" for r in results[1:]], "",
             "Validation loss per epoch (relative change over the 5 epochs before):", "", *curve_table(results), "",
             f"Stopping rules replayed on the `{base['name']}` curve (`pipelines.train.PlateauStopping`; quality "
             "of the kept epoch when probed):", "", *rules_table(base)]
    for r in results:
        if r["probe"]:
            lines += ["", *probe_table(r)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=embedding_cache.DEFAULT_DATA_DIR)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:2],
                   help="the first is the reference the others are compared with")
    p.add_argument("--max-train", type=int, default=100_000, help="fit rows (0: all outside the slice)")
    p.add_argument("--probe", action="store_true", help="score every epoch's model (quality curves; slower)")
    p.add_argument("--write", action="store_true", help=f"replace '## {TITLE}' in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    start = time.perf_counter()
    x = embedding_cache.financial(args.data_dir)[1]
    train_x = ae.financial_train(x, args.max_train)
    ev = Eval(x, args.data_dir)
    del x
    with tempfile.TemporaryDirectory() as tmp:
        write_embedding_dataset(tmp, train_x, num_shards=8, with_text=False)
        results = [run_variant(name, tmp, ev, args.probe) for name in args.variants]
    text = report(results, len(train_x), time.perf_counter() - start)
    print(text)
    if args.write:
        from results import write_section

        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
