"""Codecs: quality per stored byte on the financial slice (numpy + faiss directly, no Beam).

Setting of the label-free retrieval of bench_quality.py: the financial corpus split by
``bench_autoencoder.financial_split`` (seed 0): the 100,000-sentence retrieval
slice is searched, its 1,000 seeded queries each excluded from their own
results, and the raw-512 exact top-10 is the golden set. Reducers (PCA, the
default autoencoder) and codecs (int8 ranges, OPQ/PQ) are fitted on
``financial_train(max_train=100000)``: 100,000 sentences outside the slice.
Queries stay float32 (reduced, not coded); the corpus is stored coded and
searched decoded (dense) or by faiss ADC (PQ). STS fidelity: Pearson of raw
vs coded pair cosines on the 1,379 STS-benchmark test pairs.

    python benchmarks/bench_codecs.py [--pq-sample 100000] [--no-ae] [--plot frontier.png] [--write]

Tables are printed; ``--write`` replaces this script's section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_autoencoder as ae  # noqa: E402
import embedding_cache  # noqa: E402
import faiss  # noqa: E402
import results  # noqa: E402

from core import pca as pca_math  # noqa: E402
from core import (
    pq,  # noqa: E402
    search,  # noqa: E402
)
from core import quantization as qz  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.evaluation import frontier, metrics  # noqa: E402

TITLE = "Codecs: quality per stored byte"
K, CANDIDATES = 10, 100
AE_CONFIG = "cosine + sim 10 + rank 1, lr 1e-3, untied, batch 1024 x 30 epochs"  # the trainer's default recipe
CALIBRATIONS = (("minmax", 0.0), ("quantile", 0.001), ("quantile", 0.005))


def quantile_ranges(x: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """int8 ranges that clip a fraction ``q`` of each tail (numpy's linear quantiles), for finer steps."""
    lo, hi = np.quantile(np.asarray(x, np.float32), (q, 1 - q), axis=0)
    return lo.astype(np.float32), hi.astype(np.float32)
SAMPLE_SIZES = (10_000, 25_000, 50_000, 100_000)


@dataclass
class Data:
    fit: np.ndarray  # fitting rows, raw 512-d
    corpus: np.ndarray  # the searched slice, raw 512-d
    queries: np.ndarray  # query positions in the corpus
    golden: np.ndarray  # raw-512 exact top-10 of each query
    sts: tuple[np.ndarray, np.ndarray]  # STS test pairs (sentence-1 and sentence-2 embeddings)


def load(data_dir: Path, max_train: int) -> Data:
    x = embedding_cache.financial(data_dir)[1]
    split = ae.financial_split(len(x))
    corpus, queries = x[split["slice"]], split["queries"]
    golden = search.top_k(corpus[queries], corpus, K, exclude=queries)[0]
    a, b, _ = embedding_cache.sts_test(data_dir)
    return Data(ae.financial_train(x, max_train), corpus, queries, golden, (a, b))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def identity(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def pca(fit: np.ndarray, k: int):
    """Centered PCA-k fitted on ``fit`` (numpy reference), applied in float32 as the TF head does."""
    p = pca_math.fit(fit.astype(np.float64), k)
    mean, components = p["mean"].astype(np.float32), p["components"].astype(np.float32)
    return lambda v: (np.asarray(v, dtype=np.float32) - mean) @ components


def drop_self(found: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """First k of each row of ``found`` other than the query's own index (faiss cannot exclude)."""
    order = np.argsort(found == exclude[:, None], axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1)[:, :k]


def row(data: Data, name: str, family: str, nbytes: int, top: np.ndarray, encode_s: float, search_s: float,
        fidelity: float | None, label: str = "") -> dict:
    r = {"name": name, "family": family, "bytes_per_vector": nbytes, "bytes_label": label or str(nbytes),
         **metrics.neighbour_fidelity(data.golden, top, K), "sts_fidelity": fidelity,
         "encode_us": encode_s / len(data.corpus) * 1e6, "search_ms": search_s / len(data.queries) * 1e3}
    print(f"{name}: recall@10 {r['recall@10']:.4f} mrr {r['mrr@10']:.4f}", flush=True)
    return r


# ---------------------------------------------------------------- dense: reducer + precision codec

def dense_corpus(data: Data, reduce, codec) -> tuple[np.ndarray, float]:
    """(decoded corpus, encode seconds: reduce + encode of every corpus row)."""
    (codes, _), encode_s = timed(lambda: codec.encode(reduce(data.corpus)))
    return codec.decode(codes), encode_s


def dense_search(data: Data, reduce, decoded: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    qv = reduce(data.corpus[data.queries])
    (top, _), search_s = timed(lambda: search.top_k(qv, decoded, k, exclude=data.queries))
    return top, search_s


def dense_fidelity(data: Data, reduce, codec) -> float:
    a, b = data.sts
    ca, cb = (codec.decode(codec.encode(reduce(v))[0]) for v in (a, b))
    return metrics.sts_fidelity(a, b, ca, cb)["pearson"]


def dense_row(data: Data, name: str, family: str, reduce, dim: int, codec) -> dict:
    decoded, encode_s = dense_corpus(data, reduce, codec)
    top, search_s = dense_search(data, reduce, decoded)
    return row(data, name, family, qz.bytes_per_vector(dim, codec.precision), top, encode_s, search_s,
               dense_fidelity(data, reduce, codec))


def dense_rows(data: Data, reducers: dict) -> list[dict]:
    """``reducers``: family -> (reduce, dim, precisions)."""
    out = []
    for family, (reduce, dim, precisions) in reducers.items():
        fitted = reduce(data.fit)
        for precision in precisions:
            out.append(dense_row(data, f"{family} {precision}", family, reduce, dim,
                                 qz.fit_codec(precision, fitted)))
    return out


# ---------------------------------------------------------------- product quantization

class PQCache:
    """Trained codecs by (m, opq, sample size), each trained once; samples are nested seeded subsets."""

    def __init__(self, fit: np.ndarray):
        self.fit, self.order, self.codecs = fit, np.random.default_rng(0).permutation(len(fit)), {}

    def get(self, m: int, opq: bool, n: int) -> tuple[pq.PQCodec, float, float]:
        """(codec, training wall seconds, training CPU seconds: steadier on shared cores)."""
        key = (m, opq, min(n, len(self.fit)))
        if key not in self.codecs:
            sample = self.fit[np.sort(self.order[:key[2]])]
            cpu = time.process_time()
            codec, wall = timed(lambda: pq.train_pq(sample, m, opq=opq))
            self.codecs[key] = (codec, wall, time.process_time() - cpu)
            print(f"trained m={m} opq={opq} n={key[2]} in {wall:.0f} s", flush=True)
        return self.codecs[key]


def pq_search(data: Data, codec: pq.PQCodec, codes: np.ndarray, metric: str | None = None,
              k: int = K) -> tuple[np.ndarray, float]:
    index = pq.search_index(codec, codes)
    if metric:  # what the metric table compares: the same codes ranked by another ADC metric
        (faiss.downcast_index(index.index) if codec.opq else index).metric_type = pq.METRICS[metric]
    (_, found), search_s = timed(lambda: index.search(data.corpus[data.queries], k + 1))
    return drop_self(found, data.queries, k), search_s


def pq_fidelity(data: Data, codec: pq.PQCodec) -> float:
    a, b = data.sts
    return metrics.sts_fidelity(a, b, codec.decode(codec.encode(a)), codec.decode(codec.encode(b)))["pearson"]


def pq_row(data: Data, cache: PQCache, m: int, n: int, opq: bool = True) -> dict:
    codec = cache.get(m, opq, n)[0]
    codes, encode_s = timed(lambda: codec.encode(data.corpus))
    top, search_s = pq_search(data, codec, codes)
    name = f"{'OPQ' if opq else ''}{m},PQ{m}"
    return row(data, name, "OPQ+PQ", codec.code_size, top, encode_s, search_s, pq_fidelity(data, codec))


# ---------------------------------------------------------------- two-stage: compact candidates, int8 re-rank

def two_stage_row(data: Data, name: str, first: tuple[np.ndarray, float, float, int],
                  fine: tuple[qz.Int8Codec, np.ndarray]) -> dict:
    """``first``: (candidates, its encode s, its search s, its bytes); ``fine``: raw int8 codec and corpus codes."""
    candidates, encode_s, first_s, nbytes = first
    codec, codes = fine
    top, second_s = timed(lambda: search.rerank(candidates, data.corpus[data.queries],
                                                lambda idx: codec.decode(codes[idx]), K)[0])
    return row(data, name, "two-stage", nbytes + codec.dim, top, encode_s, first_s + second_s, None,
               label=f"{nbytes + codec.dim} ({nbytes} + {codec.dim})")


def two_stage_rows(data: Data, cache: PQCache, pca128, sample: int) -> list[dict]:
    raw8 = qz.fit_codec("int8", data.fit)
    (raw_codes, _), raw_s = timed(lambda: raw8.encode(data.corpus))
    codec = cache.get(64, True, sample)[0]
    pq_codes, pq_s = timed(lambda: codec.encode(data.corpus))
    pq_top, pq_search_s = pq_search(data, codec, pq_codes, k=CANDIDATES)
    pca8 = qz.fit_codec("int8", pca128(data.fit))
    pca_decoded, pca_s = dense_corpus(data, pca128, pca8)
    pca_top, pca_search_s = dense_search(data, pca128, pca_decoded, CANDIDATES)
    return [two_stage_row(data, "OPQ64,PQ64 top-100 -> raw int8", (pq_top, pq_s + raw_s, pq_search_s, 64),
                          (raw8, raw_codes)),
            two_stage_row(data, "PCA-128 int8 top-100 -> raw int8", (pca_top, pca_s + raw_s, pca_search_s, 128),
                          (raw8, raw_codes))]


# ---------------------------------------------------------------- side tables

def calibration_table(data: Data, pca128) -> list[str]:
    lines = ["| space | int8 calibration | corpus values clipped | MRR@10 | recall@10 | STS fidelity |",
             "|---|---|---|---|---|---|"]
    for space, reduce in (("raw 512-d", identity), ("PCA-128", pca128)):
        fitted, reduced = reduce(data.fit), reduce(data.corpus)
        for method, q in CALIBRATIONS:
            codec = qz.Int8Codec(*(qz.calibrate(fitted) if method == "minmax" else quantile_ranges(fitted, q)))
            codes, clipped = codec.encode(reduced)
            top, _ = dense_search(data, reduce, codec.decode(codes))
            fid = metrics.neighbour_fidelity(data.golden, top, K)
            label = "min/max" if method == "minmax" else f"quantile {100 * q:g} / {100 - 100 * q:g} %"
            lines.append(f"| {space} | {label} | {clipped / reduced.size:.4%} | {fid['mrr@10']:.4f} | "
                         f"{fid['recall@10']:.4f} | {dense_fidelity(data, reduce, codec):.4f} |")
            print(lines[-1], flush=True)
    return lines


def sample_table(data: Data, cache: PQCache) -> list[str]:
    lines = ["| codec | training rows | MRR@10 | recall@10 | training wall s | training CPU s |",
             "|---|---|---|---|---|---|"]
    for m, opq in ((64, True), (128, True), (64, False)):
        for n in SAMPLE_SIZES:
            codec, wall_s, cpu_s = cache.get(m, opq, n)
            top, _ = pq_search(data, codec, codec.encode(data.corpus))
            fid = metrics.neighbour_fidelity(data.golden, top, K)
            lines.append(f"| {f'OPQ{m},' if opq else ''}PQ{m} | {n:,} | {fid['mrr@10']:.4f} | "
                         f"{fid['recall@10']:.4f} | {wall_s:.0f} | {cpu_s:.0f} |")
            print(lines[-1], flush=True)
    return lines


def metric_table(data: Data, cache: PQCache, sample: int) -> list[str]:
    lines = ["| codec | ADC metric | MRR@10 | recall@10 |", "|---|---|---|---|"]
    for m in (32, 64, 128):
        codec = cache.get(m, True, sample)[0]
        codes = codec.encode(data.corpus)
        for metric in ("ip", "l2"):
            fid = metrics.neighbour_fidelity(data.golden, pq_search(data, codec, codes, metric)[0], K)
            lines.append(f"| OPQ{m},PQ{m} | {metric} | {fid['mrr@10']:.4f} | {fid['recall@10']:.4f} |")
    return lines


# ---------------------------------------------------------------- report

def main_table(rows: list[dict]) -> list[str]:
    lines = ["| representation | bytes/vector | MRR@10 | recall@10 | nDCG@10 | STS fidelity | encode us/vector | "
             "search ms/query |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fid = "-" if r["sts_fidelity"] is None else f"{r['sts_fidelity']:.4f}"
        lines.append(f"| {r['name']} | {r['bytes_label']} | {r['mrr@10']:.4f} | {r['recall@10']:.4f} | "
                     f"{r['ndcg@10']:.4f} | {fid} | {r['encode_us']:.2f} | {r['search_ms']:.2f} |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    by = {r["name"]: r for r in rows}
    checks = [("512 B: raw int8 recall@10 >= 0.99", by["raw int8"]["recall@10"] >= 0.99),
              ("128 B: OPQ128,PQ128 recall@10 >= 0.85", by["OPQ128,PQ128"]["recall@10"] >= 0.85),
              ("64 B: OPQ64,PQ64 recall@10 >= 0.75", by["OPQ64,PQ64"]["recall@10"] >= 0.75),
              ("two-stage OPQ64 top-100 -> raw int8 recall@10 >= 0.98",
               by["OPQ64,PQ64 top-100 -> raw int8"]["recall@10"] >= 0.98)]
    for family in ("PCA-128", "AE-128"):
        if f"{family} int8" in by:
            f32, i8 = by[f"{family} float32"], by[f"{family} int8"]
            checks.append((f"{family} int8 within 0.01 of float32 (recall@10 {i8['recall@10'] - f32['recall@10']:+.4f}"
                           f", STS fidelity {i8['sts_fidelity'] - f32['sts_fidelity']:+.4f})",
                           abs(i8["recall@10"] - f32["recall@10"]) <= 0.01
                           and abs(i8["sts_fidelity"] - f32["sts_fidelity"]) <= 0.01))
    return [f"- {text}: **{'met' if ok else 'MISSED'}**" for text, ok in checks]


def choices(rows: list[dict]) -> list[str]:
    lines = []
    for budget in (2048, 1024, 512, 256, 128, 64, 32):
        try:
            chosen = frontier.choose(rows, budget)
            lines.append(f"- {budget} B: {chosen['name']} ({chosen['bytes_label']} B, recall@10 "
                         f"{chosen['recall@10']:.4f})")
        except InputError as e:
            lines.append(f"- {budget} B: {e}")
    return lines


def measure(args) -> tuple[list[dict], dict[str, list[str]]]:
    data = load(args.data_dir, args.max_train)
    pca128 = pca(data.fit, 128)
    reducers = {"raw": (identity, 512, ("float32", "float16", "int8")),
                "PCA-64": (pca(data.fit, 64), 64, ("float16", "int8")),
                "PCA-128": (pca128, 128, ("float32", "float16", "int8")),
                "PCA-256": (pca(data.fit, 256), 256, ("int8",))}
    if not args.no_ae:
        reduce, _, fit_s = ae.train_autoencoder(data.fit, {**ae.SEED, **ae.CONFIGS[AE_CONFIG]}, 30, 1024)
        print(f"autoencoder ready (trained in {fit_s:.0f} s)", flush=True)
        reducers["AE-128"] = (lambda v: np.asarray(reduce(v), dtype=np.float32), 128, ("float32", "int8"))
    rows = dense_rows(data, reducers)
    cache = PQCache(data.fit)
    rows += [pq_row(data, cache, m, args.pq_sample) for m in (32, 64, 128)]
    rows += two_stage_rows(data, cache, pca128, args.pq_sample)
    side = {"calibration": calibration_table(data, pca128), "metric": metric_table(data, cache, args.pq_sample),
            "sample": [] if args.no_sample_table else sample_table(data, cache)}
    return rows, side


def report(rows: list[dict], side: dict[str, list[str]], args, seconds: float) -> str:
    lines = [results.machine_line() + f"; faiss {faiss.__version__}, {args.threads} threads; load average "
             f"{os.getloadavg()[1]:.1f} over the last 5 minutes (times are wall-clock on shared cores). Script: "
             f"`benchmarks/bench_codecs.py --pq-sample {args.pq_sample}`, run time {seconds:.0f} s.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "### Frontier (search: exact cosine on decoded vectors; PQ: faiss ADC, L2)", "",
             *main_table(rows), "", "Targets:", "", *targets(rows), "",
             "Chosen by `frontier.choose` per budget (bytes per vector, two-stage rows at compact + 512):", "",
             *choices(rows), "",
             "### (a) int8 calibration: min/max vs quantile ranges (fitted on the fitting rows)", "",
             *side["calibration"], "", f"### (b) OPQ/PQ search metric (trained on {args.pq_sample:,} rows)", "",
             *side["metric"]]
    if side["sample"]:
        lines += ["", "### (c) PQ training sample size (nested seeded subsets of the fitting rows)", "",
                  *side["sample"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=embedding_cache.DEFAULT_DATA_DIR)
    p.add_argument("--max-train", type=int, default=100_000, help="fitting rows (outside the searched slice)")
    p.add_argument("--pq-sample", type=int, default=100_000, help="OPQ/PQ training rows of the main table")
    p.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1: fastest on the shared 2 cores)")
    p.add_argument("--no-ae", action="store_true", help="leave out the autoencoder rows")
    p.add_argument("--no-sample-table", action="store_true", help="skip side table (c) (slow: 12 trainings)")
    p.add_argument("--plot", type=Path, help="also draw the frontier (PNG), the 128 B choice marked")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' of RESULTS.md")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    (rows, side), seconds = timed(lambda: measure(args))
    text = report(rows, side, args, seconds)
    print(text)
    if args.plot:
        frontier.plot_frontier(rows, frontier.choose(rows, 128)["name"], args.plot)
    if args.write:
        results.write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
