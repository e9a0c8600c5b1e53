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
from dataclasses import dataclass

import numpy as np

from pipelines.common import config as cfg
from pipelines.common import files, manifests
from pipelines.common.dataset import EmbeddingDataset, iter_batches
from pipelines.common.outputs import OutputDir
from pipelines.common.reducers import Reducer, check_input_dim, load_reducer
from pipelines.evaluation import golden, metrics, sts
from pipelines.evaluation import report as report_io
from pipelines.evaluation.sampling import SmallestKeys, seeded_keys
from transforms.encoders import load_encoder, worker_threads

log = logging.getLogger(__name__)
RAW = "raw"
K = 10


OWNED = ("report.json", "report.md", "*.png")


@dataclass(frozen=True)
class EvaluateConfig:
    embeddings: str
    reducer: tuple[str, ...]
    output: str
    sts_dir: str | None = None
    download: bool = True
    sts_split: str = "test"
    golden_set: str | None = None
    golden_split: str = "test"
    group_field: str = "table_uid"
    queries: int = 1000
    sample: int = 20_000
    holdout_permille: int = 50
    seed: int = 0
    encoder_threads: int = 0
    overwrite: bool = True

    def params(self) -> dict:
        return cfg.params(self, exclude=("output", "encoder_threads", "overwrite"))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, help="embedding dataset (output of `shrink embed`)")
    p.add_argument("--reducer", action="append", required=True, help="reducer artifact (repeatable)")
    p.add_argument("--output", required=True, help="report directory (local or a URL, e.g. gs://...)")
    p.add_argument("--sts_dir", help="directory (local or a URL) with sts-{train,dev,test}.csv; default: the "
                                     "cached archive, downloaded once (checksums pinned) when there is a network")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download the STS benchmark when it is not cached")
    p.add_argument("--sts_split", default="test", choices=["dev", "test"])
    p.add_argument("--golden_set", help="BEIR-layout directory (local or a URL): corpus.jsonl, queries.jsonl, qrels/")
    p.add_argument("--golden_split", default="test")
    p.add_argument("--group_field", default=EvaluateConfig.group_field,
                   help="metadata field grouping golden-set records for within-group ranking")
    p.add_argument("--queries", type=int, default=EvaluateConfig.queries, help="label-free retrieval queries")
    p.add_argument("--sample", type=int, default=EvaluateConfig.sample,
                   help="corpus rows searched: a seeded uniform sample of the whole corpus")
    p.add_argument("--holdout_permille", type=int, default=EvaluateConfig.holdout_permille,
                   help="queries come from rows whose id hashes below this (per mille): the trainer's "
                        "validation split, never trained on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder_threads", type=int, default=0, help="0: all cores of this machine")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=True,
                   help="replace an earlier report in --output")
    return p


def reducer_names(reducers: list[Reducer]) -> list[str]:
    """Short unique names: ``<kind>-<dim>``, with the directory name when ambiguous."""
    names = [f"{r.kind}-{r.output_dim}" for r in reducers]
    return [f"{n} ({os.path.basename(r.path.rstrip('/'))})" if names.count(n) > 1 else n
            for n, r in zip(names, reducers)]


def load_sample(dataset: EmbeddingDataset, size: int, holdout_permille: int, seed: int = 0) -> dict:
    """A seeded uniform sample of ``size`` vectors from the whole dataset, and which are held out.

    Held-out rows are those of the trainer's validation split (id hash below
    ``holdout_permille``): the autoencoder never trained on them, so they make
    honest queries. Reads every listed shard once (counts checked).
    """
    from pipelines.common.dataset import in_holdout

    sample = SmallestKeys(size)
    for batch in iter_batches([dataset]):
        held = in_holdout(batch["id"], holdout_permille).numpy()
        sample.add(seeded_keys(batch["id"], seed), vectors=batch["vector"], held_out=held)
    rows = sample.result()
    if not rows:
        rows = {"vectors": np.zeros((0, dataset.dim), np.float32), "held_out": np.zeros(0, bool)}
    return {**rows, "corpus_rows": sample.seen}


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


def sts_section(config: EvaluateConfig, encoder, reducers, names, report: dict) -> dict | None:
    """The STS section into ``report`` (or the reason it is skipped); the pair cosines for the figures."""
    try:
        splits = sts.load_sts(config.sts_dir, download_missing=config.download)
    except sts.DataUnavailableError as e:
        report["skipped"]["sts"] = str(e)
        log.warning("skipping STS: %s", e)
        return None
    report["sts"] = {**evaluate_sts(splits[config.sts_split], encoder, reducers, names), "split": config.sts_split}
    return report["sts"].pop("_cosines")


def corpus_sections(config: EvaluateConfig, dataset: EmbeddingDataset, reducers, names, report: dict) -> None:
    """Label-free retrieval and cost on a uniform sample of the corpus (or the reason they are skipped)."""
    sample = load_sample(dataset, config.sample, config.holdout_permille, config.seed)
    vectors = sample["vectors"]
    if len(vectors) < 2 * K + 1:
        report["skipped"]["corpus_retrieval"] = f"only {len(vectors)} vectors in {config.embeddings}; need {2 * K + 1}"
        return
    report["corpus_retrieval"] = evaluate_corpus(vectors, sample["held_out"], reducers, names, config.queries,
                                                 config.seed)
    report["corpus_retrieval"]["corpus_size"] = sample["corpus_rows"]
    report["cost"] = evaluate_cost(vectors, reducers, names, dataset.records, config.seed)


def run(config: EvaluateConfig, options=None) -> dict:
    """Score the reducers and write the report into ``config.output``; returns the report."""
    dataset = EmbeddingDataset.open(config.embeddings)
    reducers = [load_reducer(p) for p in config.reducer]
    for r in reducers:
        check_input_dim(r, dataset.dim, config.embeddings)
    names = reducer_names(reducers)
    params = {**config.params(), "embeddings_fingerprint": dataset.fingerprint,
              "reducers": [r.manifest.get("fingerprint") for r in reducers]}
    out = OutputDir(config.output, "report", manifests.fingerprint(params), OWNED)
    with out.claim(config.overwrite):
        encoder = load_encoder(dataset.encoder, config.encoder_threads or worker_threads(1))
        report: dict = {"embeddings": config.embeddings, "encoder": dataset.encoder, "input_dim": dataset.dim,
                        "reducers": {n: r.summary() for n, r in zip(names, reducers)}, "skipped": {}}
        cosines = sts_section(config, encoder, reducers, names, report)
        corpus_sections(config, dataset, reducers, names, report)
        if config.golden_set:
            gs = golden.load_golden_set(config.golden_set, config.golden_split)
            report["golden_set"] = {"path": config.golden_set, "split": config.golden_split,
                                    **evaluate_golden(gs, encoder, reducers, names, config.group_field)}
        else:
            report["skipped"]["golden_set"] = "no --golden_set given"
        report["best_reducer"] = pick_best(report, names)
        if report["best_reducer"]:
            report["best_reducer_path"] = reducers[names.index(report["best_reducer"])].path
        report["figures"] = report_io.write_figures(report, cosines, config.output)
        files.write_text(files.join(config.output, "report.json"), json.dumps(report, indent=2, sort_keys=True))
        files.write_text(files.join(config.output, "report.md"), report_io.markdown(report))
        out.commit({**params, "best_reducer": report["best_reducer"],
                    "best_reducer_path": report.get("best_reducer_path")})
    log.info("report written to %s (best reducer: %s)", config.output, report["best_reducer"])
    return report


def main(argv: list[str] | None = None) -> dict:
    return run(cfg.from_namespace(EvaluateConfig, make_parser().parse_args(argv)))


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.evaluate")
