"""``make demo``: the whole flow on the built-in synthetic corpus, locally, then one search.

Writes the sample corpus into the work directory, runs ``shrink run`` on it
with DirectRunner, the offline encoder and a short autoencoder training,
then searches the reduced corpus for one query and prints the top 5. Uses
the STS benchmark from ``../shared/data`` when it is there (or the download
cache); otherwise the report says how to add it.
"""
from __future__ import annotations

import argparse
import os

from pipelines import run as run_job
from pipelines import sample_corpus, search

SHARED_STS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "stsbenchmark")
QUERY = "Shares of the bank fell after it cut its dividend"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink demo", description=__doc__)
    parser.add_argument("--workdir", default="demo_output")
    parser.add_argument("--n", type=int, default=5000, help="sample sentences to generate")
    parser.add_argument("--epochs", type=int, default=30, help="most autoencoder epochs")
    parser.add_argument("--query", default=QUERY, help="the query searched at the end")
    args, rest = parser.parse_known_args(argv)
    corpus = os.path.join(args.workdir, "corpus", f"sample_corpus_{args.n}.txt")  # beside the run, never in it
    if not os.path.exists(corpus):
        os.makedirs(os.path.dirname(corpus), exist_ok=True)
        sample_corpus.write(corpus, args.n)
    sts = ["--sts_dir", os.path.abspath(SHARED_STS)] if os.path.isdir(SHARED_STS) else []
    summary = run_job.main(["--input", corpus, "--workdir", os.path.join(args.workdir, "run"), "--epochs",
                            str(args.epochs), "--queries", "500", *sts, *rest])
    search.main(["--corpus", summary["reduced"][0], "--query", args.query, "--k", "5"])
    return summary


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.demo")
