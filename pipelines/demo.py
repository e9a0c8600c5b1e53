"""``make demo``: the whole flow on the built-in synthetic corpus, locally.

Writes the sample corpus into the work directory, then runs the pipeline on
it with DirectRunner and the offline encoder, and prints where everything is.
"""
from __future__ import annotations

import argparse
import os

from pipelines import embed, sample_corpus


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shrink demo", description=__doc__)
    parser.add_argument("--workdir", default="demo_output")
    parser.add_argument("--n", type=int, default=5000, help="sample sentences to generate")
    args, beam_args = parser.parse_known_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    corpus = sample_corpus.write(os.path.join(args.workdir, "sample_corpus.txt"), args.n)
    manifest = embed.run(["--input", corpus, "--output", os.path.join(args.workdir, "embeddings"),
                          "--overwrite", *beam_args])
    print(f"\nembedded {manifest['counts']['embedded']} sentences -> {args.workdir}/embeddings")


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.demo")
