"""Scale run (issue 6): throughput and peak memory of every stage, and a 10M-sentence extrapolation.

1. embed N sample sentences (default 200,000) with the Beam job (DirectRunner,
   two worker processes, one BLAS thread each);
2. grow those vectors to M (default 2,000,000) by replication with small
   perturbations (re-normalized, new ids; fine for throughput, meaningless
   for quality) and write them as TFRecord shards;
3. fit-pca, one training epoch of the autoencoder, and reduce over the M vectors.
Each stage runs as its own process (`python -m ...`, as a user would); peak
memory is the largest sum of resident memory over the stage's process tree,
polled every 0.2 s.

    python benchmarks/bench_scale.py --sentences 200000 --vectors 2000000 --write
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.common import artifacts, records  # noqa: E402
from pipelines import sample_corpus  # noqa: E402

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


def grow(source_dir: Path, out_dir: Path, vectors: int, shards: int = 16, seed: int = 0) -> None:
    """Write ``vectors`` perturbed copies of the embeddings in ``source_dir`` as an embedding dataset."""
    import tensorflow as tf

    rows = records.read_examples(str(source_dir / "data-*"))
    base = np.stack([r["embedding"] for r in rows])
    texts = [r["text"] for r in rows]
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True)
    writers = [tf.io.TFRecordWriter(str(out_dir / f"data-{s:05d}-of-{shards:05d}.tfrecord")) for s in range(shards)]
    for start in range(0, vectors, len(base)):
        n = min(len(base), vectors - start)
        x = base[:n] + 0.02 * rng.normal(size=(n, base.shape[1])).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for i in range(n):
            writers[(start + i) % shards].write(records.encode_example(f"v{start + i:09d}", x[i], texts[i]))
    for w in writers:
        w.close()
    records.write_schema(records.make_schema(base.shape[1]), str(out_dir))
    artifacts.write_manifest(str(out_dir), "embeddings", {
        "dim": int(base.shape[1]), "encoder": "use-m3", "counts": {"embedded": vectors},
        "shards": artifacts.list_files(str(out_dir / "data-*")), "input_patterns": [],
        "fingerprint": f"bench-scale-{vectors}-{seed}"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200_000)
    p.add_argument("--vectors", type=int, default=2_000_000)
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "scale")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    w = args.workdir
    corpus = sample_corpus.write(str(w / "corpus.txt"), args.sentences, seed=5)
    stats = {}
    stats["embed"] = run_stage("embed", ["pipelines.embed", "--input", corpus, "--output", str(w / "emb"),
                                         "--encoder_threads", "1", "--direct_running_mode=multi_processing",
                                         "--direct_num_workers=2"], w)
    stats["embed"]["items"] = args.sentences
    grow(w / "emb", w / "big", args.vectors)
    stats["fit-pca"] = run_stage("fit-pca", ["pipelines.fit_pca", "--input", str(w / "big"), "--output",
                                             str(w / "pca")], w)
    stats["train (1 epoch)"] = run_stage("train", ["trainer.task", "--input", str(w / "big"), "--output",
                                                   str(w / "ae"), "--epochs", "1", "--verbose", "0"], w)
    stats["reduce"] = run_stage("reduce", ["pipelines.reduce", "--input", str(w / "big"), "--reducer",
                                           str(w / "pca"), "--output", str(w / "reduced")], w)
    for name in ("fit-pca", "train (1 epoch)", "reduce"):
        stats[name]["items"] = args.vectors
    (w / "stats.json").write_text(json.dumps(stats, indent=2))

    total_10m = 0.0
    lines = [f"\n## Scale run (issue 6) - {dt.date.today()}\n",
             f"Machine: {platform.machine()}, 2 cores, 24 GiB, {platform.platform()}. Embed: {args.sentences:,} sample "
             f"sentences, DirectRunner (FnApiRunner) with 2 worker processes x 1 BLAS thread. fit-pca, one training "
             f"epoch (batch 128) and reduce (PCA head, TFRecord out): {args.vectors:,} vectors (the embeddings "
             "replicated with small perturbations). Each stage is its own process; peak memory = largest total "
             "resident memory of its process tree.\n",
             "| stage | items | seconds | items/s | peak memory | extrapolated for 10M on this machine |",
             "|---|---|---|---|---|---|"]
    for name, s in stats.items():
        rate = s["items"] / s["seconds"]
        est = 10_000_000 / rate
        total_10m += est
        lines.append(f"| {name} | {s['items']:,} | {s['seconds']:.0f} | {rate:,.0f} | "
                     f"{s['peak_bytes'] / 2**30:.2f} GiB | {est / 3600:.2f} h |")
    embed_rate = stats["embed"]["items"] / stats["embed"]["seconds"]
    lines += ["", f"10M sentences end to end on this 2-core machine: about **{total_10m / 3600:.1f} h**, "
              f"of which embedding is {10_000_000 / embed_rate / 3600:.1f} h.",
              "On a cluster of N workers with 2 such cores each, embed and reduce are embarrassingly parallel "
              "(no shuffle but the id de-duplication), so their time divides by about N; fit-pca's analyzers "
              "combine per-worker partial sums (also ~1/N, plus one small merge); training runs on one machine "
              "(or a multi-worker strategy). Estimates assuming linear scaling of the measured per-machine rates:", "",
              "| N workers | embed 10M | reduce 10M | fit-pca 10M | 1 training epoch 10M (1 machine) |",
              "|---|---|---|---|---|"]
    per = {k: 10_000_000 / (v["items"] / v["seconds"]) for k, v in stats.items()}
    for n in (1, 10, 50):
        lines.append(f"| {n} | {per['embed'] / n / 60:.0f} min | {per['reduce'] / n / 60:.1f} min | "
                     f"{per['fit-pca'] / n / 60:.1f} min | {per['train (1 epoch)'] / 60:.0f} min |")
    lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
