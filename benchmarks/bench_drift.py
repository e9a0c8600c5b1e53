"""Drift check on a real domain shift.

Reducers are fitted on the financial-news corpus (the rows outside the
retrieval slice, as in bench_autoencoder.py). The drift check of
``shrink run --incremental`` (pipelines/drift.py: pair fidelity of the reducer
on new data vs on its fitting data) is then applied to two "new batches":
more financial news (same domain, held out) and general-domain STS-benchmark
sentences (a real shift). Autoencoder models come from bench_autoencoder's
cache when the same configuration was trained there.

    python benchmarks/bench_drift.py --epochs 10 --max-train 100000 [--write]

The table is printed; ``--write`` also replaces this script's section of
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_autoencoder as bae  # noqa: E402
import embedding_cache  # noqa: E402
import results  # noqa: E402

from core.evaluation import drift  # noqa: E402

TITLE = "Drift check on a real domain shift"
SAMPLE = 5000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-train", type=int, default=100_000)
    p.add_argument("--ae-config", default="cosine + sim 10, lr 1e-3, untied", choices=sorted(bae.CONFIGS))
    p.add_argument("--threshold", type=float, default=0.02)
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = p.parse_args(argv)

    _, fin = embedding_cache.financial()
    split = bae.financial_split(len(fin))
    train = bae.financial_train(fin, args.max_train)
    rng = np.random.default_rng(0)
    held = fin[split["slice"]]
    reference = held[rng.choice(len(held), SAMPLE, replace=False)]
    same_domain = held[rng.choice(len(held), SAMPLE, replace=False)]
    _, sts = embedding_cache.sts_train_dev()
    shifted = sts[rng.choice(len(sts), min(SAMPLE, len(sts)), replace=False)]

    cfg = {**bae.SEED, **bae.CONFIGS[args.ae_config]}
    ae, _, _ = bae.train_autoencoder(train, cfg, args.epochs, 128)
    reducers = {"PCA-128 (centered)": bae.pca_reducer(train, 128), f"AE-128 ({args.ae_config})": ae}
    rows = []
    for name, reducer in reducers.items():
        for batch_name, batch in (("financial news (same domain, held out)", same_domain),
                                  ("STS-benchmark sentences (general domain)", shifted)):
            r = drift.check(reducer, reference, batch, args.threshold)
            rows.append(f"| {name} | {batch_name} | {r['fidelity_reference']:.4f} | {r['fidelity_new']:.4f} "
                        f"| {r['drop']:+.4f} | {'**drift**' if r['drift'] else 'no'} |")
    table = "\n".join([
        f"{results.machine_line()}. Reducers fitted on {len(train):,} "
        f"financial-news sentences (outside the retrieval slice; AE: {args.epochs} epochs). Reference = "
        f"{SAMPLE:,} held-out financial sentences; each new batch {SAMPLE:,} sentences. Measure: pair fidelity "
        f"(Pearson between raw and reduced cosines of 20,000 random pairs), threshold {args.threshold}.\n",
        "| reducer | new batch | fidelity on fitting domain | fidelity on new batch | drop | drift? |",
        "|---|---|---|---|---|---|", *rows, ""])
    print(table)
    if args.write:
        results.write_section(TITLE, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
