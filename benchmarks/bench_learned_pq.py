"""Learned PQ: does ranking distillation keep more neighbours per byte than faiss OPQ?

Split and measures of bench_codecs.py: OPQ fitted on a seeded sample of the
100,000 financial fitting rows, the 100,000-sentence searched slice, 1,000
held-out queries, label-free recall@10 against the raw 512-d top-10, STS-B
Pearson fidelity, and nDCG@10 of the TAT-QA golden set (test qrels,
documents coded, questions raw, searched by core.search as ``shrink search``
does). Each learned codec starts from the OPQ fit beside it and is fine-tuned
by ``learned_pq.fine_tune`` on the same sample (distillation from the raw
cosines; see that module). References at the same bytes: faiss
4-bit fast-scan PQ (twice the sub-quantizers at half the bits).

Usage: python benchmarks/bench_learned_pq.py [--m 32 64 128] [--ablation] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_codecs as bc  # noqa: E402
import embedding_cache  # noqa: E402
import faiss  # noqa: E402
import results  # noqa: E402

from core import codecs, learned_pq, pq, search  # noqa: E402

TITLE = "Learned PQ: ranking distillation against OPQ"
ABLATION = {  # name -> (schedule change, start from plain PQ instead of OPQ)
    "default (OPQ start, straight-through, learned rotation)": ({}, False),
    "fixed codes, re-encoded every 100 steps": ({"assignment": "fixed"}, False),
    "rotation fixed (codebooks only)": ({"learn_rotation": False}, False),
    "annealed assignment (tau 1.0 -> 0.05)": ({"tau_start": 1.0}, False),
    "64 negatives": ({"negatives": 64}, False),
    "plain PQ start (no OPQ rotation)": ({}, True),
}


def recall(data: bc.Data, codec: pq.PQCodec, metric: str | None = None) -> float:
    """Label-free recall@10 of ADC search over the coded slice (``metric`` overrides the codec's)."""
    top, _ = bc.pq_search(data, codec, codec.encode(data.corpus), metric)
    return bc.metrics.neighbour_fidelity(data.golden, top, bc.K)["recall@10"]


def golden_ndcg(tatqa: tuple, codec: pq.PQCodec | None) -> float:
    """Global nDCG@10 on the TAT-QA golden set: documents stored as ``codec`` codes (raw float32 when None)."""
    gs, docs, queries = tatqa
    qrels = [gs.qrels[q] for q in gs.query_ids]
    if codec is None:
        representation, stored = search.Cosine(docs.shape[1]), docs
    else:
        representation = codecs.Representation("pq", "pq", "pq", codec.code_size, codec=codec)
        stored = codec.encode(docs)
    return search.golden_retrieval(representation, stored, queries, gs.doc_ids, qrels)["ndcg@10"]


def fast_scan(data: bc.Data, sample: np.ndarray, m: int, opq: bool) -> dict:
    """faiss 4-bit fast-scan PQ at ``m`` bytes: 2m sub-quantizers of 16 centroids, inner-product ADC."""
    key = f"{f'OPQ{2 * m},' if opq else ''}PQ{2 * m}x4fs"
    index, fit_s = bc.timed(lambda: _trained(key, sample))
    index.add(data.corpus)
    _, found = index.search(data.corpus[data.queries], bc.K + 1)
    top = bc.drop_self(found, data.queries, bc.K)
    return {"name": key, "bytes": m, "recall@10": bc.metrics.neighbour_fidelity(data.golden, top, bc.K)["recall@10"],
            "sts": None, "ndcg": None, "fit_s": fit_s}


def _trained(key: str, sample: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(sample.shape[1], key, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    return index


def learned_row(data: bc.Data, start: pq.PQCodec, sample: np.ndarray, schedule: learned_pq.Schedule,
                name: str, tatqa: tuple | None = None) -> dict:
    curve: list = []
    tuned, fit_s = bc.timed(lambda: learned_pq.fine_tune(start, sample, schedule, curve))
    queries = np.arange(0, len(sample), len(sample) // 2000)
    loss = [learned_pq.distillation_loss(c, sample, queries, schedule.positives, schedule.negatives,
                                         schedule.temperature) for c in (start, tuned)]
    return {"name": name, "bytes": tuned.code_size, "recall@10": recall(data, tuned),
            "sts": bc.pq_fidelity(data, tuned), "ndcg": golden_ndcg(tatqa, tuned) if tatqa else None,
            "fit_s": fit_s, "curve": curve, "loss": loss}


def frontier(data: bc.Data, cache: bc.PQCache, sample: np.ndarray, m: int, schedule: learned_pq.Schedule,
             tatqa: tuple) -> list:
    opq, fit_s, _ = cache.get(m, True, len(sample))
    rows = [{"name": f"OPQ{m},PQ{m} (L2 ADC)", "bytes": m, "recall@10": recall(data, opq), "fit_s": fit_s,
             "sts": bc.pq_fidelity(data, opq), "ndcg": golden_ndcg(tatqa, opq)},
            {"name": f"OPQ{m},PQ{m} (IP ADC)", "bytes": m, "recall@10": recall(data, opq, "ip"), "fit_s": fit_s,
             "sts": None, "ndcg": None},
            learned_row(data, opq, sample, schedule, f"learned PQ{m} (from OPQ{m})", tatqa)]
    rows += [fast_scan(data, sample, m, opq) for opq in (False, True)]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    return rows


def ablation(data: bc.Data, cache: bc.PQCache, sample: np.ndarray, schedule: learned_pq.Schedule,
             measured: list) -> list:
    """Each variant of ``ABLATION`` at 64 B; the default is the frontier's row when ``measured`` has it."""
    rows = []
    for name, (change, plain) in ABLATION.items():
        start = cache.get(64, not plain, len(sample))[0]
        done = [r for r in measured if r["name"] == "learned PQ64 (from OPQ64)" and not change and not plain]
        row = {**done[0], "name": name} if done else learned_row(data, start, sample, replace(schedule, **change), name)
        row["start_recall"] = recall(data, start, "ip")
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        rows.append(row)
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(rows: list, ablated: list, raw_ndcg: float, args, schedule: learned_pq.Schedule, seconds: float) -> str:
    lines = [results.machine_line() + f"; faiss {faiss.__version__}; load average {os.getloadavg()[1]:.1f}. "
             f"Script: `benchmarks/bench_learned_pq.py --m {' '.join(map(str, args.m))}"
             f"{' --ablation' if args.ablation else ''} --steps {args.steps}`, run time {seconds:.0f} s.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Fine-tuning: {schedule}.", "",
             "| codec | bytes | recall@10 | STS fidelity | TAT-QA nDCG@10 | fit s |", "|---|---:|---:|---:|---:|---:|",
             f"| raw 512-d float32 | 2048 | 1.0000 | 1.0000 | {raw_ndcg:.4f} | - |"]
    lines += [f"| {r['name']} | {r['bytes']} | {r['recall@10']:.4f} | {_fmt(r['sts'], '.4f')} | "
              f"{_fmt(r['ndcg'], '.4f')} | {r['fit_s']:.0f} |" for r in rows]
    for r in rows:
        if "curve" in r:
            lines += ["", f"Training curve of {r['name']} (50-step mean distillation loss): "
                      + ", ".join(f"{t}: {loss:.4f}" for t, loss in r["curve"])
                      + f"; on 2,000 sample queries with hard codes {r['loss'][0]:.4f} before, "
                      f"{r['loss'][1]:.4f} after."]
    if ablated:
        lines += ["", "### Ablation at 64 B (recall@10; start = the codec before fine-tuning, IP ADC)", "",
                  "| variant | start | learned | loss before -> after | fit s |", "|---|---:|---:|---|---:|"]
        lines += [f"| {r['name']} | {r['start_recall']:.4f} | {r['recall@10']:.4f} | "
                  f"{r['loss'][0]:.4f} -> {r['loss'][1]:.4f} | {r['fit_s']:.0f} |" for r in ablated]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=embedding_cache.DEFAULT_DATA_DIR)
    p.add_argument("--sample", type=int, default=50_000, help="fitting rows of OPQ and of the fine-tuning")
    p.add_argument("--m", type=int, nargs="+", default=[32, 64, 128], help="bytes per vector to measure")
    p.add_argument("--steps", type=int, default=learned_pq.Schedule.steps, help="fine-tuning steps")
    p.add_argument("--ablation", action="store_true", help="also the ablation at 64 B (six fine-tunings)")
    p.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' of RESULTS.md")
    args = p.parse_args(argv)
    start = time.monotonic()
    data = bc.load(args.data_dir, 100_000)
    cache = bc.PQCache(data.fit)
    sample = data.fit[np.sort(cache.order[:args.sample])]
    schedule = learned_pq.Schedule(steps=args.steps)
    tatqa = embedding_cache.tatqa(args.data_dir)
    rows = [r for m in args.m for r in frontier(data, cache, sample, m, schedule, tatqa)]
    ablated = ablation(data, cache, sample, schedule, rows) if args.ablation else []
    text = report(rows, ablated, golden_ndcg(tatqa, None), args, schedule, time.monotonic() - start)
    print(text)
    if args.write:
        results.write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
