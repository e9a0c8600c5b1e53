"""evaluate: how much does each representation keep, per stored byte? Writes a report.

    shrink evaluate --embeddings out/emb --reducer out/pca --reducer out/ae --output out/report
    shrink evaluate --embeddings out/emb --reducer out/pca --codec out/raw-int8 --codec out/pq64 --output out/report

Representations: the raw vectors (float32: the reference; float16), each
``--reducer`` in float32 and float16, each ``--codec`` artifact (int8 or PQ,
from fit-codec), and two-stage search (a representation of <= 128 bytes
searched first, its top ``--rerank`` re-ranked with a raw int8 codec).
Sections (each skipped with a one-line reason when its data is missing):
- **STS benchmark** (test split): fidelity = Pearson/Spearman between raw
  and stored-vector cosines of the sentence pairs (the reference work's
  measure), and each representation's correlation with the human scores;
- **frontier, label-free**: ``--queries`` held-out rows (the trainer's
  validation split) drawn uniformly at random (seeded) from the whole
  corpus, the whole corpus searched exactly in each representation (stored
  vectors decoded, queries reduced but not quantized), the raw-512 top-10 as
  the golden set: MRR@10, recall@10, nDCG@10, bytes per vector, coding and
  search time; ``frontier.png`` plots recall@10 against bytes;
- **labelled retrieval** on a BEIR-layout golden set (``--golden_set``):
  MRR@10 and nDCG@10, globally and within groups when records carry one.
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

from core import codecs, files, manifests, reducers, search
from core import config as cfg
from core.config import option
from core.dataset import EmbeddingDataset, in_holdout, iter_batches
from core.encoders import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, load_encoder
from core.errors import InputError
from core.evaluation import coded, frontier, golden, metrics, sts
from core.evaluation import report as report_io
from core.evaluation.sampling import SmallestKeys, seeded_keys
from core.logs import Progress
from core.machine import worker_threads
from core.outputs import OutputDir
from core.textnorm import normalize
from pipelines.cli import job_parser, parse_config

log = logging.getLogger(__name__)
RAW = "raw"
K = 10
COMPACT_BYTES = 128  # representations this small get a two-stage row when a raw int8 codec is given


@dataclass(frozen=True)
class EvaluateConfig:
    embeddings: str = option(help="embedding dataset (output of `shrink embed`)")
    reducer: tuple[str, ...] = option(help="reducer artifact (repeatable)")
    output: str = option(help="report directory (local or a URL, e.g. gs://...)")
    codec: tuple[str, ...] = option((), "codec artifact from fit-codec (repeatable)")
    sts_dir: str | None = option(None, "directory (local or a URL) with sts-{train,dev,test}.csv; default: the "
                                       "cached archive, downloaded once (checksums pinned) when there is a network")
    download: bool = option(True, "download the STS benchmark when it is not cached")
    sts_split: str = option("test", "STS benchmark split scored", choices=["dev", "test"])
    golden_set: str | None = option(None, "BEIR-layout directory (local or a URL): corpus.jsonl, queries.jsonl, "
                                          "qrels/")
    golden_split: str = option("test", "golden-set qrels split")
    group_field: str = option("table_uid", "metadata field grouping golden-set records for within-group ranking")
    queries: int = option(1000, "label-free queries (uniform, seeded)")
    rerank: int = option(100, "two-stage: candidates re-ranked per query")
    holdout_permille: int = option(50, "queries come from rows whose id hashes below this (per mille): the "
                                       "trainer's validation split, never trained on")
    budget_bytes: int | None = option(None, "mark the best representation within this many bytes/vector")
    seed: int = option(0, "query sampling seed")
    chunk_rows: int = option(16_384, "corpus rows searched at a time")
    sample_rows: int = option(200_000, "label-free figures on a seeded uniform sample of at most this many corpus "
                                       "rows (0: every row), so evaluate's cost stays flat as the corpus grows")
    encoder_threads: int = option(0, "0: all cores of this machine")
    encoder_precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=list(PRECISIONS))
    overwrite: bool = option(True, "replace an earlier report in --output")

    def params(self) -> dict:
        return cfg.params(self, exclude=("output", "encoder_threads", "encoder_precision", "chunk_rows", "overwrite"))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink evaluate", __doc__, EvaluateConfig)


def reducer_names(loaded: list) -> list[str]:
    """Short unique names: ``<kind>-<dim>``, with the directory name when ambiguous."""
    names = [f"{r.kind}-{r.output_dim}" for r in loaded]
    return [f"{n} ({os.path.basename(r.path.rstrip('/'))})" if names.count(n) > 1 else n
            for n, r in zip(names, loaded)]


def representations(config: EvaluateConfig, dim: int, loaded: list, names: list[str]) -> dict:
    """name -> Representation: raw float32 (named ``raw``) and float16, each reducer at both, each codec."""
    identity = reducers.Identity(dim)
    reps = {RAW: codecs.dense(identity, "raw", "float32"), "raw/float16": codecs.dense(identity, "raw", "float16")}
    for reducer, name in zip(loaded, names):
        reps[name] = codecs.dense(reducer, reducer.kind, "float32")
        reps[f"{name}/float16"] = codecs.dense(reducer, reducer.kind, "float16")
    for path in config.codec:
        rep = codecs.load(path, dim)
        name = rep.name if rep.name not in reps else f"{rep.name} ({os.path.basename(path.rstrip('/'))})"
        reps[name] = rep
    return reps


def encode_texts(encoder, texts: list[str], batch: int = 1024) -> np.ndarray:
    """Texts embedded as ``embed`` embeds them: normalized first (an empty text was dropped by the caller)."""
    texts = [normalize(t) for t in texts]
    return np.concatenate([encoder.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def evaluate_sts(pairs, encoder, reps: dict) -> dict:
    unique = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(unique)}
    raw = encode_texts(encoder, unique)
    ia = np.array([index[a] for a, _, _ in pairs])
    ib = np.array([index[b] for _, b, _ in pairs])
    human = np.array([s for _, _, s in pairs], dtype=np.float64)
    out = {"pairs": len(pairs), "representations": {}, "_cosines": {}}
    for name, rep in reps.items():
        out["representations"][name] = coded.sts_scores(rep, raw[ia], raw[ib], human)
        if rep.precision == "float32":
            decoded = coded.stored(rep, raw)
            out["_cosines"][name] = metrics.paired_cosine(decoded[ia], decoded[ib])
    return out


def evaluate_golden(gs: golden.GoldenSet, encoder, reps: dict, group_field: str) -> dict:
    """Labelled retrieval: documents stored in each representation, searched by ``core.search`` as served.

    Documents that normalize to nothing are left out, as ``embed`` dead-letters them.
    """
    kept = [i for i, text in enumerate(gs.doc_texts) if normalize(text)]
    doc_ids, doc_meta = [gs.doc_ids[i] for i in kept], [gs.doc_meta[i] for i in kept] if gs.doc_meta else []
    docs = encode_texts(encoder, [gs.doc_texts[i] for i in kept])
    queries = encode_texts(encoder, gs.query_texts)
    qrels = [gs.qrels[q] for q in gs.query_ids]
    grouped = bool(doc_meta) and all(group_field in m for m in doc_meta + gs.query_meta)
    groups = {"query_groups": np.array([m[group_field] for m in gs.query_meta]),
              "doc_groups": np.array([m[group_field] for m in doc_meta])} if grouped else {}
    out = {"queries": len(qrels), "documents": len(doc_ids), "documents_empty": len(gs.doc_ids) - len(doc_ids),
           "representations": {}}
    for name, rep in reps.items():
        stored = rep.encode(docs)
        entry = {"global": search.golden_retrieval(rep, stored, queries, doc_ids, qrels, K)}
        if grouped:
            entry["within_group"] = search.golden_retrieval(rep, stored, queries, doc_ids, qrels, K, **groups)
        out["representations"][name] = entry
    return out


@dataclass
class Queries:
    """Label-free queries: raw vectors, their rows in the corpus, and whether they are held out."""
    vectors: np.ndarray
    index: np.ndarray
    held_out: bool
    corpus_rows: int


MIN_HELD_OUT_QUERIES = 50


class SearchedRows:
    """The rows the label-free frontier searches: the whole corpus streamed, or a seeded uniform sample of
    ``sample_rows`` of them held in memory, so evaluate's cost stops growing with the corpus."""

    def __init__(self, dataset: EmbeddingDataset, config: EvaluateConfig):
        self.dataset, self.chunk_rows = dataset, config.chunk_rows
        self.sampled = bool(config.sample_rows) and dataset.records > config.sample_rows
        self.sample = None
        if self.sampled:
            keep = SmallestKeys(config.sample_rows)
            for batch in iter_batches([dataset], config.chunk_rows):
                keep.add(seeded_keys(batch["id"], config.seed + 1), ids=np.asarray(batch["id"], object),
                         vectors=batch["vector"])
            self.sample = keep.result()
        self.rows = len(self.sample["ids"]) if self.sampled else dataset.records

    def batches(self):
        """``{'id': [...], 'vector': [n, dim]}`` chunks, always in the same order."""
        if not self.sampled:
            yield from iter_batches([self.dataset], self.chunk_rows)
            return
        for start in range(0, self.rows, self.chunk_rows):
            yield {"id": list(self.sample["ids"][start:start + self.chunk_rows]),
                   "vector": self.sample["vectors"][start:start + self.chunk_rows]}


def sample_queries(searched: SearchedRows, config: EvaluateConfig) -> Queries:
    """Up to ``config.queries`` rows drawn uniformly (seeded) from the held-out split of the searched rows.

    A small corpus with fewer held-out rows than asked for uses all of them; one
    with fewer than 50 draws from every row instead. One streaming pass.
    """
    held, every = SmallestKeys(config.queries), SmallestKeys(config.queries)
    offset = 0
    for batch in searched.batches():
        keys = seeded_keys(batch["id"], config.seed)
        rows = np.arange(offset, offset + len(keys))
        mask = in_holdout(batch["id"], config.holdout_permille).numpy()
        held.add(keys[mask], vectors=batch["vector"][mask], index=rows[mask])
        every.add(keys, vectors=batch["vector"], index=rows)
        offset += len(keys)
    use_held = held.seen >= min(config.queries, MIN_HELD_OUT_QUERIES, offset)
    chosen = (held if use_held else every).result()
    if not chosen:
        return Queries(np.zeros((0, searched.dataset.dim), np.float32), np.zeros(0, np.int64), use_held, offset)
    return Queries(chosen["vectors"], chosen["index"].astype(np.int64), use_held, offset)


def search_corpus(searched: SearchedRows, reps: dict, queries: Queries, config: EvaluateConfig) -> dict:
    """name -> ``(search.Search, seconds spent coding)`` over the whole corpus, every representation in one pass.

    Each chunk is stored in each representation and searched by the engine ``shrink search`` uses.
    """
    compact = {n for n, r in reps.items() if r.bytes_per_vector <= COMPACT_BYTES}
    searches = {n: search.Search(r, queries.vectors, max(K, config.rerank) if n in compact else K, queries.index)
                for n, r in reps.items()}
    coding = dict.fromkeys(reps, 0.0)
    progress = Progress("rows searched in every representation", searched.rows)
    offset = 0
    for batch in searched.batches():
        for name, engine in searches.items():
            start = time.perf_counter()
            stored = reps[name].encode(batch["vector"])
            coding[name] += time.perf_counter() - start
            engine.add(stored, offset)
        offset += len(batch["id"])
        progress.add(len(batch["id"]))
    return {n: (engine, coding[n]) for n, engine in searches.items()}


def _timings(engine: search.Search, coding_s: float, rows: int) -> dict:
    return {"encode_us_per_vector": round(1e6 * coding_s / max(rows, 1), 3),
            "search_ms_per_query": round(1e3 * engine.search_s / max(len(engine.queries), 1), 3)}


def rerank(searched: SearchedRows, queries: Queries, firsts: dict, fine) -> dict:
    """name -> top-K after re-ranking each first stage's candidates with the ``fine`` representation."""
    wanted = np.unique(np.concatenate([c[c >= 0] for c in firsts.values()]))
    found: dict[int, np.ndarray] = {}
    offset = 0
    for batch in searched.batches():
        rows = np.arange(offset, offset + len(batch["id"]))
        hit = np.isin(rows, wanted)
        if hit.any():
            found.update(zip(rows[hit].tolist(), coded.stored(fine, batch["vector"][hit])))
        offset += len(batch["id"])
    lookup = lambda idx: np.stack([found[int(i)] for i in idx]) if len(idx) else np.zeros((0, fine.dim))  # noqa: E731
    return {name: search.rerank(c, fine.query(queries.vectors), lookup, K)[0] for name, c in firsts.items()}


def frontier_section(dataset: EmbeddingDataset, reps: dict, config: EvaluateConfig, report: dict) -> None:
    """Label-free quality, bytes and time of every representation (and two-stage rows) into ``report``."""
    if dataset.records < 2 * K + 1:
        report["skipped"]["frontier"] = f"only {dataset.records} vectors in {config.embeddings}; need {2 * K + 1}"
        return
    searched = SearchedRows(dataset, config)
    queries = sample_queries(searched, config)
    searches = search_corpus(searched, reps, queries, config)
    tops = {name: engine.result()[0] for name, (engine, _) in searches.items()}
    golden_top = tops[RAW]
    rows = [_row(name, reps[name], metrics.neighbour_fidelity(golden_top, tops[name][:, :K], K),
                 _timings(engine, coding_s, searched.rows), report) for name, (engine, coding_s) in searches.items()]
    fine = next((n for n, r in reps.items() if r.family == "raw" and r.precision == "int8"), None)
    firsts = {n: tops[n] for n in tops if reps[n].bytes_per_vector <= COMPACT_BYTES}
    if fine and firsts:
        for name, top in rerank(searched, queries, firsts, reps[fine]).items():
            rows.append(_two_stage_row(name, fine, reps, metrics.neighbour_fidelity(golden_top, top, K), config,
                                       report))
    report["frontier"] = {"queries": int(len(queries.index)), "held_out": queries.held_out,
                          "corpus_rows": dataset.records, "searched_rows": searched.rows,
                          "sampled": searched.sampled, "rows": rows}


def _row(name: str, rep, fidelity: dict, timings: dict, report: dict) -> dict:
    sts_entry = report.get("sts", {}).get("representations", {}).get(name, {})
    golden_entry = report.get("golden_set", {}).get("representations", {}).get(name, {})
    return {"name": name, "family": rep.family, "precision": rep.precision, "bytes_per_vector": rep.bytes_per_vector,
            **{k: fidelity[k] for k in ("mrr@10", "recall@10", "ndcg@10", "recall@10_ci95")}, **timings,
            "sts_fidelity": sts_entry.get("fidelity", {}).get("pearson", 1.0 if name == RAW else None),
            "golden_ndcg@10": golden_entry.get("global", {}).get("ndcg@10")}


def _two_stage_row(first: str, fine: str, reps: dict, fidelity: dict, config: EvaluateConfig, report: dict) -> dict:
    """A two-stage row: its stored bytes are both representations'; its STS fidelity is the re-ranker's."""
    row = _row(fine, reps[fine], fidelity, {}, report)
    row.update({"name": f"{first} > {fine}", "family": "two-stage", "golden_ndcg@10": None, "rerank": config.rerank,
                "precision": f"{reps[first].precision} + {reps[fine].precision}",
                "bytes_per_vector": reps[first].bytes_per_vector + reps[fine].bytes_per_vector,
                "bytes_detail": f"{reps[first].bytes_per_vector} + {reps[fine].bytes_per_vector}"})
    return row


def specs(reps: dict, report: dict) -> dict:
    """name -> how ``reduce`` writes it: ``{reducer (or codec artifact), dtype}``, or two-stage ``{stages}``."""
    out = {name: {"reducer": rep.artifact or rep.reducer.path, "digest": (rep.source() or (None, "identity"))[1],
                  "dtype": rep.precision if rep.precision in ("float32", "float16") else "float32"}
           for name, rep in reps.items()}
    for row in report.get("frontier", {}).get("rows", []):
        if row["family"] == "two-stage":
            out[row["name"]] = {"stages": row["name"].split(" > ")}
    return out


def pick_best(report: dict, names: list[str]) -> str | None:
    """The reducer (float32) with the best mean of the headline scores available.

    Headline scores: STS fidelity (Pearson; how the reference judged) and
    label-free nDCG@10 on the user's own corpus (what retrieval will feel).
    """
    rows = {r["name"]: r for r in report.get("frontier", {}).get("rows", [])}
    scores = {n: [v for v in (rows.get(n, {}).get("sts_fidelity"), rows.get(n, {}).get("ndcg@10")) if v is not None]
              for n in names}
    sts_scores = report.get("sts", {}).get("representations", {})
    for n in names:
        if n not in rows and n in sts_scores:
            scores[n].append(sts_scores[n]["fidelity"]["pearson"])
    if not any(scores.values()):
        return None
    return max(names, key=lambda n: float(np.mean(scores[n])) if scores[n] else -1.0)


def choose_and_summarize(report: dict, config: EvaluateConfig) -> None:
    """Mark the representation to store: the best within ``--budget_bytes``, else the best reducer's float32.

    Also the one line on what the same bytes would buy with the best representation evaluated.
    """
    rows = report.get("frontier", {}).get("rows", [])
    if not rows:
        return
    if config.budget_bytes is not None:
        report["chosen"] = frontier.choose(rows, config.budget_bytes)["name"]
        return
    current = next((r for r in rows if r["name"] == report.get("best_reducer")), None)
    if current is None:
        return
    report["chosen"] = current["name"]
    best = frontier.choose(rows, current["bytes_per_vector"])
    if best["name"] != current["name"]:
        report["same_bytes_line"] = (
            f"At {current['bytes_per_vector']} bytes/vector ({current['name']}, float32: recall@10 "
            f"{current['recall@10']:.3f}), {best['name']} keeps recall@10 {best['recall@10']:.3f}; "
            f"see the frontier below, or run with --budget_bytes {current['bytes_per_vector']}.")


def check(config: EvaluateConfig) -> None:
    """Bad numbers fail before any work, in one line."""
    for flag in ("queries", "rerank", "chunk_rows"):
        if getattr(config, flag) < 1:
            raise InputError(f"--{flag} must be positive, got {getattr(config, flag)}")
    if config.sample_rows and config.sample_rows < 2 * K + 1:
        raise InputError(f"--sample_rows must be 0 (every row) or at least {2 * K + 1}, got {config.sample_rows}")


def run(config: EvaluateConfig, options=None) -> dict:
    """Score every representation and write the report into ``config.output``; returns the report."""
    check(config)
    dataset = EmbeddingDataset.open(config.embeddings)
    loaded = [reducers.load_reducer(p) for p in config.reducer]
    for r in loaded:
        reducers.check_input_dim(r, dataset.dim, config.embeddings)
    names = reducer_names(loaded)
    reps = representations(config, dataset.dim, loaded, names)
    params = {**config.params(), "embeddings_digest": dataset.digest,
              "artifacts": [manifests.identity(p)["digest"] for p in (*config.reducer, *config.codec)]}
    reads = [config.embeddings, *config.reducer, *config.codec, config.sts_dir, config.golden_set]
    out = OutputDir(config.output, "report", manifests.fingerprint(params), reads)
    with out.claim(config.overwrite):
        encoder = load_encoder(dataset.encoder, config.encoder_threads or worker_threads(1), config.encoder_precision)
        report = {"embeddings": config.embeddings, "encoder": dataset.encoder, "input_dim": dataset.dim,
                  "reducers": {n: r.summary() for n, r in zip(names, loaded)}, "skipped": {}}
        cosines = _sts_section(config, encoder, reps, report)
        _golden_section(config, encoder, reps, report)
        frontier_section(dataset, reps, config, report)
        report["specs"] = specs(reps, report)
        report["best_reducer"] = pick_best(report, names)
        if report["best_reducer"]:
            report["best_reducer_path"] = loaded[names.index(report["best_reducer"])].path
        choose_and_summarize(report, config)
        report["figures"] = report_io.write_figures(report, cosines, names, config.output)
        files.write_text(files.join(config.output, "report.json"), json.dumps(report, indent=2, sort_keys=True))
        files.write_text(files.join(config.output, "report.md"), report_io.markdown(report))
        out.commit({**params, **{k: report.get(k) for k in ("best_reducer", "best_reducer_path", "chosen")}})
    log.info("report written to %s (best reducer: %s%s)", config.output, report["best_reducer"],
             f"; chosen: {report['chosen']}" if report.get("chosen") else "")
    return report


def _sts_section(config: EvaluateConfig, encoder, reps: dict, report: dict) -> dict | None:
    try:
        splits = sts.load_sts(config.sts_dir, download_missing=config.download)
    except sts.DataUnavailableError as e:
        report["skipped"]["sts"] = str(e)
        log.warning("skipping STS: %s", e)
        return None
    report["sts"] = {**evaluate_sts(splits[config.sts_split], encoder, reps), "split": config.sts_split}
    return report["sts"].pop("_cosines")


def _golden_section(config: EvaluateConfig, encoder, reps: dict, report: dict) -> None:
    if not config.golden_set:
        report["skipped"]["golden_set"] = "no --golden_set given"
        return
    gs = golden.load_golden_set(config.golden_set, config.golden_split)
    report["golden_set"] = {"path": config.golden_set, "split": config.golden_split,
                            **evaluate_golden(gs, encoder, reps, config.group_field)}



def main(argv: list[str] | None = None) -> dict:
    return run(parse_config(make_parser(), EvaluateConfig, argv, beam=False)[0])


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.evaluate")
