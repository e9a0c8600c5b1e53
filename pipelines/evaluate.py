"""Evaluate reducers against the raw 512-d vectors and write a report.

    shrink evaluate --embeddings out/emb --reducer out/pca --reducer out/ae --output out/report

Sections (each skipped with a one-line reason when its data is missing):
- **STS benchmark** (test split): fidelity = Pearson/Spearman between raw and
  reduced cosine similarities of the sentence pairs (the reference work's
  metric), and each representation's correlation with the human scores;
- **retrieval fidelity, label-free**: held-out queries (the trainer's
  validation split) searched over a sample of the corpus, the raw-512
  neighbours as the golden set: MRR@10, recall@10, nDCG@10;
- **labelled retrieval** on a BEIR-layout golden set (``--golden_set``):
  MRR@10 and nDCG@10, globally and, when records carry a group field,
  within each group;
- **cost**: bytes per vector and corpus storage (float32/float16), and exact
  top-10 query time in each dimension, measured side by side.
Writes ``report.json``, ``report.md`` and PNG figures into ``--output``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from pipelines.common import artifacts
from pipelines.evaluation import metrics
from pipelines.evaluation import golden, sts
from pipelines.evaluation import report as report_io
from transforms.encoders import load_encoder, worker_threads
from pipelines.common.reducers import Reducer, check_input_dim, load_reducer

log = logging.getLogger(__name__)
RAW = "raw"
K = 10


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", required=True, help="embedding dataset (output of `shrink embed`)")
    parser.add_argument("--reducer", action="append", required=True, help="reducer artifact (repeatable)")
    parser.add_argument("--output", required=True, help="report directory (local or a URL, e.g. gs://...)")
    parser.add_argument("--sts_dir", help="directory (local or a URL) with sts-{train,dev,test}.csv; default: the cached "
                                          "archive, downloaded once when there is a network")
    parser.add_argument("--no_download", action="store_true", help="never download the STS benchmark")
    parser.add_argument("--sts_split", default="test", choices=["dev", "test"])
    parser.add_argument("--golden_set", help="BEIR-layout directory (local or a URL): corpus.jsonl, queries.jsonl, qrels/")
    parser.add_argument("--golden_split", default="test")
    parser.add_argument("--group_field", default="table_uid",
                        help="metadata field grouping golden-set records for within-group ranking")
    parser.add_argument("--queries", type=int, default=1000, help="label-free retrieval queries")
    parser.add_argument("--sample", type=int, default=20_000, help="corpus rows searched")
    parser.add_argument("--holdout_permille", type=int, default=50,
                        help="queries come from rows whose id hashes below this (per mille): the trainer's "
                             "validation split, never trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder_threads", type=int, default=0, help="0: all cores of this machine")
    return parser


def reducer_names(reducers: list[Reducer]) -> list[str]:
    """Short unique names: ``<kind>-<dim>``, with the directory name when ambiguous."""
    names = [f"{r.kind}-{r.output_dim}" for r in reducers]
    return [f"{n} ({os.path.basename(r.path.rstrip('/'))})" if names.count(n) > 1 else n
            for n, r in zip(names, reducers)]


def load_sample(directory: str, size: int, holdout_permille: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` vectors of the dataset (in shard order) and which of them are held out.

    Held-out rows are those of the trainer's validation split (id hash below
    ``holdout_permille``): the autoencoder never trained on them, so they make
    honest queries.
    """
    import tensorflow as tf

    from pipelines.common import records
    from trainer.data import in_split, open_source

    source = open_source(directory)
    spec = records.feature_spec(source.dim, with_text=False)
    vectors, held = [], []
    n = 0
    for batch in tf.data.TFRecordDataset(list(source.files)).batch(4096):
        feats = tf.io.parse_example(batch, spec)
        take = size - n
        vectors.append(feats[records.EMBEDDING].numpy()[:take])
        held.append(in_split(feats[records.ID], True, holdout_permille).numpy()[:take])
        n += len(vectors[-1])
        if n >= size:
            break
    if not vectors:
        return np.zeros((0, source.dim), np.float32), np.zeros(0, bool)
    return np.concatenate(vectors), np.concatenate(held)


def encode_texts(encoder, texts: list[str], batch: int = 1024) -> np.ndarray:
    return np.concatenate([encoder.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def evaluate_sts(pairs, encoder, reducers, names) -> dict:
    unique = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(unique)}
    raw = encode_texts(encoder, unique)
    ia = np.array([index[a] for a, _, _ in pairs])
    ib = np.array([index[b] for _, b, _ in pairs])
    scores = np.array([s for _, _, s in pairs], dtype=np.float64)
    spaces = {RAW: raw, **{n: r(raw) for n, r in zip(names, reducers)}}
    out = {"pairs": len(pairs), "representations": {}}
    for name, vecs in spaces.items():
        entry = {"human": metrics.human_correlation(vecs[ia], vecs[ib], scores)}
        if name != RAW:
            entry["fidelity"] = metrics.sts_fidelity(raw[ia], raw[ib], vecs[ia], vecs[ib])
        out["representations"][name] = entry
    out["_cosines"] = {name: metrics.paired_cosine(v[ia], v[ib]) for name, v in spaces.items()}
    return out


def evaluate_corpus(sample: np.ndarray, held_out: np.ndarray, reducers, names, queries: int,
                    seed: int) -> dict:
    """Label-free retrieval: held-out queries over the sample, raw-512 neighbours as the golden set."""
    pool = np.flatnonzero(held_out) if held_out.any() else np.arange(len(sample))
    n_q = min(queries, len(pool))
    q_idx = np.sort(np.random.default_rng(seed).choice(pool, size=n_q, replace=False))
    raw_top, _ = metrics.top_k(sample[q_idx], sample, K, exclude=q_idx)
    out = {"corpus_rows": int(len(sample)), "queries": int(n_q), "held_out": bool(held_out.any()),
           "representations": {}}
    for name, reducer in zip(names, reducers):
        reduced = reducer(sample)
        red_top, _ = metrics.top_k(reduced[q_idx], reduced, K, exclude=q_idx)
        out["representations"][name] = metrics.neighbour_fidelity(raw_top, red_top, K)
    return out


def evaluate_golden(golden: golden.GoldenSet, encoder, reducers, names, group_field: str) -> dict:
    docs = encode_texts(encoder, golden.doc_texts)
    queries = encode_texts(encoder, golden.query_texts)
    qrels = [golden.qrels[q] for q in golden.query_ids]
    grouped = all(group_field in m for m in golden.doc_meta + golden.query_meta) and golden.doc_meta
    out = {"queries": len(qrels), "documents": len(golden.doc_ids), "representations": {}}
    spaces = {RAW: (docs, queries), **{n: (r(docs), r(queries)) for n, r in zip(names, reducers)}}
    for name, (d, q) in spaces.items():
        entry = {"global": metrics.golden_retrieval(q, d, golden.doc_ids, qrels, K)}
        if grouped:
            entry["within_group"] = metrics.golden_retrieval(
                q, d, golden.doc_ids, qrels, K,
                query_groups=np.array([m[group_field] for m in golden.query_meta]),
                doc_groups=np.array([m[group_field] for m in golden.doc_meta]))
        out["representations"][name] = entry
    return out


def evaluate_cost(sample: np.ndarray, reducers, names, corpus_size: int, seed: int) -> dict:
    """Bytes, storage and exact top-10 time per query, timed back to back on the same queries."""
    q_idx = np.random.default_rng(seed + 1).choice(len(sample), size=min(200, len(sample)), replace=False)
    spaces = {RAW: sample, **{n: r(sample) for n, r in zip(names, reducers)}}
    out = {"corpus_vectors": corpus_size, "search_rows": int(len(sample)), "timed_queries": int(len(q_idx)),
           "representations": {}}
    for name, vecs in spaces.items():
        dim = vecs.shape[1]
        unit = metrics.normalize_rows(vecs)
        metrics.top_k(unit[q_idx[:10]], unit, K)  # warm-up
        start = time.perf_counter()
        metrics.top_k(unit[q_idx], unit, K)
        per_query = (time.perf_counter() - start) / max(len(q_idx), 1)
        out["representations"][name] = {
            "dim": dim, "bytes_per_vector_float32": 4 * dim, "bytes_per_vector_float16": 2 * dim,
            "corpus_bytes_float32": 4 * dim * corpus_size, "corpus_bytes_float16": 2 * dim * corpus_size,
            "top10_ms_per_query": round(per_query * 1000, 4)}
    return out


def pick_best(report: dict, names: list[str]) -> str | None:
    """The reducer with the best mean of the headline scores available.

    Headline scores: STS fidelity (Pearson; how the reference judged) and
    label-free nDCG@10 on the user's own corpus (what retrieval will feel).
    """
    scores: dict[str, list[float]] = {n: [] for n in names}
    sts = report.get("sts", {}).get("representations", {})
    corpus = report.get("corpus_retrieval", {}).get("representations", {})
    for n in names:
        if n in sts:
            scores[n].append(sts[n]["fidelity"]["pearson"])
        if n in corpus:
            scores[n].append(corpus[n][f"ndcg@{K}"])
    if not any(scores.values()):
        return None
    return max(names, key=lambda n: float(np.mean(scores[n])) if scores[n] else -1.0)


def run(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    source_manifest = artifacts.read_manifest(args.embeddings, "embeddings")
    dim = int(source_manifest["dim"])
    reducers = [load_reducer(p) for p in args.reducer]
    for r in reducers:
        check_input_dim(r, dim, args.embeddings)
    names = reducer_names(reducers)
    artifacts.makedirs(args.output)
    encoder = load_encoder(source_manifest["encoder"], args.encoder_threads or worker_threads(1))

    report: dict = {"embeddings": args.embeddings, "encoder": source_manifest["encoder"], "input_dim": dim,
                    "reducers": {n: r.summary() for n, r in zip(names, reducers)}, "skipped": {}}
    cosines = None
    try:
        splits = sts.load_sts(args.sts_dir, download=not args.no_download)
        report["sts"] = evaluate_sts(splits[args.sts_split], encoder, reducers, names)
        report["sts"]["split"] = args.sts_split
        cosines = report["sts"].pop("_cosines")
    except sts.DataUnavailableError as e:
        report["skipped"]["sts"] = str(e)
        log.warning("skipping STS: %s", e)

    sample, held_out = load_sample(args.embeddings, args.sample, args.holdout_permille)
    if len(sample) >= 2 * K + 1:
        report["corpus_retrieval"] = evaluate_corpus(sample, held_out, reducers, names, args.queries, args.seed)
        report["cost"] = evaluate_cost(sample, reducers, names, int(source_manifest["counts"]["embedded"]),
                                       args.seed)
    else:
        report["skipped"]["corpus_retrieval"] = f"only {len(sample)} vectors in {args.embeddings}; need {2 * K + 1}"

    if args.golden_set:
        golden = golden.load_golden_set(args.golden_set, args.golden_split)
        report["golden_set"] = {"path": args.golden_set, "split": args.golden_split,
                                **evaluate_golden(golden, encoder, reducers, names, args.group_field)}
    else:
        report["skipped"]["golden_set"] = "no --golden_set given"

    report["best_reducer"] = pick_best(report, names)
    if report["best_reducer"]:
        report["best_reducer_path"] = reducers[names.index(report["best_reducer"])].path
    report["figures"] = report_io.write_figures(report, cosines, args.output)
    artifacts.write_text(artifacts.join(args.output, "report.json"), json.dumps(report, indent=2, sort_keys=True))
    artifacts.write_text(artifacts.join(args.output, "report.md"), report_io.markdown(report))
    log.info("report written to %s (best reducer: %s)", args.output, report["best_reducer"])
    return report


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.evaluate")
