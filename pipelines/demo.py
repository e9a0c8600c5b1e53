"""``make demo``: the whole flow on the built-in synthetic corpus, locally.

Writes the sample corpus into the work directory, then runs ``shrink run`` on
it with DirectRunner, the offline encoder and a short autoencoder training,
and prints where the 128-d corpus and the report are. Uses the STS benchmark
from ``../shared/data`` when it is there (or the download cache); otherwise
the report says how to add it.
"""
from __future__ import annotations

import argparse
import os

from pipelines import run as run_job
from pipelines import sample_corpus

SHARED_STS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "stsbenchmark")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink demo", description=__doc__)
    parser.add_argument("--workdir", default="demo_output")
    parser.add_argument("--n", type=int, default=5000, help="sample sentences to generate")
    parser.add_argument("--epochs", type=int, default=30,
                        help="autoencoder epochs, a few seconds each here (the real default is 100)")
    args, rest = parser.parse_known_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, f"sample_corpus_{args.n}.txt")
    if not os.path.exists(corpus):
        sample_corpus.write(corpus, args.n)
    sts = ["--sts_dir", os.path.abspath(SHARED_STS)] if os.path.isdir(SHARED_STS) else []
    return run_job.main(["--input", corpus, "--workdir", args.workdir, "--epochs", str(args.epochs),
                        "--queries", "500", *sts, *rest])


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.demo")
