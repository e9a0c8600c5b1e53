"""search: find the sentences nearest to a query in a reduced (or embedded) corpus.

    shrink search --corpus out/reduced --query "oil prices fell after the OPEC meeting"
    shrink search --corpus out/reduced --query "..." --rescore out/reduced_rescore --candidates 100   # two-stage
    shrink search --corpus out/emb --query_vectors queries.npy --k 10

The corpus is any reduce output (float32/float16 vectors, int8 codes, PQ
codes) or an embed output (raw vectors); its manifest says how it is stored.
Query texts are embedded with the corpus's encoder, then reduced (never
quantized); ``--query_vectors`` takes raw 512-d float32 vectors from a
``.npy`` file instead. The search is exact over what is stored, by the same
engine ``shrink evaluate`` measures with (``core.search``): a faiss
inner-product index over the decoded unit vectors (dense), or faiss's
asymmetric search over the stored PQ codes. ``--rescore`` re-ranks the top
``--candidates`` by a second stored representation of the same corpus (e.g.
raw int8). The corpus is held in memory.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
from dataclasses import dataclass

import numpy as np

from core import codecs, files, reducers, search
from core.config import option
from core.dataset import KINDS, EmbeddingDataset, iter_batches
from core.encoders import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, load_encoder
from core.errors import InputError
from core.machine import worker_threads
from core.textnorm import normalize
from pipelines.cli import job_parser, parse_config

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """A stored corpus in memory: ids, texts, the stored rows and how to read them."""
    dataset: EmbeddingDataset
    representation: codecs.Representation
    ids: list[str]
    texts: list[str] | None
    stored: np.ndarray

    @classmethod
    def load(cls, directory: str) -> Corpus:
        dataset = EmbeddingDataset.open(directory, KINDS)
        representation = representation_of(dataset)
        batches = list(iter_batches([dataset], with_text=dataset.has_text))
        ids = [i for b in batches for i in b["id"]]
        texts = [t for b in batches for t in b["text"]] if dataset.has_text else None
        width = representation.bytes_per_vector if representation.codes else dataset.dim
        stored = np.concatenate([b["vector"] for b in batches]) if batches else np.zeros((0, width))
        if representation.precision == "int8":
            stored = stored.view(np.int8)
        elif representation.precision == "float16":
            stored = stored.astype(np.float16)  # the values are float16 already; readers widen them
        return cls(dataset, representation, ids, texts, stored)

    @functools.cached_property
    def position(self) -> dict[str, int]:
        return {id_: i for i, id_ in enumerate(self.ids)}

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Decoded float vectors of some stored rows (a re-ranking stage's lookup)."""
        return self.representation.decode(self.stored[rows])


def representation_of(dataset: EmbeddingDataset) -> codecs.Representation:
    """How the dataset's rows are stored: raw float32 for an embed output, its manifest's for a reduce output."""
    if dataset.kind == "embeddings":
        return codecs.dense(reducers.Identity(dataset.dim), "raw", "float32")
    return codecs.from_summary(dataset.manifest.get("representation"), dataset.directory,
                               int(dataset.manifest["input_dim"]))


def find(corpus: Corpus, raw_queries: np.ndarray, k: int, rescore: Corpus | None = None,
         candidates: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(row indices [q, k], scores [q, k]) of the nearest stored rows; two-stage when ``rescore`` is given.

    Scores: cosine for dense representations, negative squared L2 for PQ (faiss's ADC distance); after
    re-ranking, cosine in the re-ranking representation.
    """
    first_k = min(max(k, candidates) if rescore else k, len(corpus.ids))
    rows, scores = search.search(corpus.representation, corpus.stored, raw_queries, max(first_k, 1))
    if rescore is None:
        return rows[:, :k], scores[:, :k]
    position = np.array([rescore.position[i] for i in corpus.ids])
    fine_rows, fine_scores = search.rerank(np.where(rows >= 0, position[np.maximum(rows, 0)], -1),
                                           rescore.representation.query(raw_queries), rescore.vectors, k)
    back = np.argsort(position)  # rescore row -> corpus row
    return np.where(fine_rows >= 0, back[np.maximum(fine_rows, 0)], -1), fine_scores


@dataclass(frozen=True)
class SearchConfig:
    corpus: str = option(help="a reduce (or embed) output directory")
    query: tuple[str, ...] = option((), "query text (repeatable)")
    queries_file: str | None = option(None, "file of queries: one text per line, or JSON Lines objects with "
                                            "'text' (and optional 'id')")
    query_vectors: str | None = option(None, ".npy file of raw float32 query vectors [n, input dim]")
    k: int = option(5, "results per query")
    rescore: str | None = option(None, "a second stored representation of the same corpus to re-rank with")
    candidates: int = option(100, "with --rescore: first-stage candidates per query")
    format: str = option("table", "output: a table for people, or JSON / JSON Lines for programs (docs/search.md)",
                         choices=["table", "json", "jsonl"])
    encoder_threads: int = option(0, "0: all cores of this machine")
    encoder_precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=list(PRECISIONS))


def make_parser() -> argparse.ArgumentParser:
    return job_parser("shrink search", __doc__, SearchConfig)


@dataclass
class Queries:
    """What is searched for: an id and a label per query, and the raw vectors."""
    ids: list[str]
    labels: list[str]
    vectors: np.ndarray


def read_queries(config: SearchConfig, corpus: Corpus) -> Queries:
    """Texts (flags or a file) embedded with the corpus's encoder after embed's normalization, or a .npy file."""
    if sum(map(bool, (config.query, config.queries_file, config.query_vectors))) != 1:
        raise InputError("give --query texts, a --queries_file or --query_vectors, one of the three")
    if config.query_vectors:
        vectors = _npy(config.query_vectors, int(corpus.dataset.manifest.get("input_dim", corpus.dataset.dim)))
        names = [str(i) for i in range(len(vectors))]
        return Queries(names, [f"vector {i}" for i in names], vectors)
    ids, texts = _texts(config)
    empty = [i for i, q in enumerate(texts) if not normalize(q)]
    if empty:
        raise InputError(f"query {ids[empty[0]]} is empty (nothing but spaces or invisible characters)")
    threads = config.encoder_threads or worker_threads(1)
    encoder = load_encoder(corpus.dataset.encoder, threads, config.encoder_precision)
    return Queries(ids, texts, _checked(encoder.encode([normalize(q) for q in texts]), "the encoder"))


def _texts(config: SearchConfig) -> tuple[list[str], list[str]]:
    """(ids, texts) of the text queries: numbered from 1 unless a JSON Lines file gives ids."""
    if not config.queries_file:
        return [str(i) for i in range(1, len(config.query) + 1)], list(config.query)
    lines = [line for line in files.read_text(config.queries_file).splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith("{"):
        return [str(i) for i in range(1, len(lines) + 1)], lines
    ids, texts = [], []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise InputError(f"{config.queries_file} line {n} is not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{config.queries_file} line {n} has no 'text' string")
        ids.append(str(row.get("id", n)))
        texts.append(row["text"])
    return ids, texts


def _npy(path: str, dim: int) -> np.ndarray:
    with files.open_read(path) as f:
        try:
            vectors = np.load(f, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path} is not a .npy array file: {e}") from None
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"{path}: expected [n, {dim}] vectors, got {vectors.shape}")
    return _checked(vectors.astype(np.float32), path)


def _checked(vectors: np.ndarray, source: str) -> np.ndarray:
    """Query vectors must be finite and non-zero: a NaN ranks nothing and would return arbitrary rows."""
    bad = ~np.isfinite(vectors).all(axis=1) | ~(np.abs(vectors) > 0).any(axis=1)
    if len(vectors) == 0:
        raise InputError(f"{source}: no query vectors")
    if bad.any():
        raise InputError(f"{source}: query {int(np.argmax(bad)) + 1} holds NaN, Inf or only zeros")
    return vectors


def results(queries: Queries, corpus: Corpus, rows: np.ndarray, scores: np.ndarray,
            texts: list[str] | None) -> list[dict]:
    """One entry per query: its id and text, and its hits (rank, full id, score and, where stored, text)."""
    out = []
    for query_id, label, row, score in zip(queries.ids, queries.labels, rows, scores):
        hits = [{"rank": rank, "id": corpus.ids[r], "score": round(float(s), 6),
                 **({"text": texts[r]} if texts else {})}
                for rank, (r, s) in enumerate(zip(row, score), 1) if r >= 0]
        out.append({"query_id": query_id, "query": label, "hits": hits})
    return out


def show(entries: list[dict], fmt: str, header: dict) -> None:
    if fmt == "json":
        print(json.dumps({**header, "results": entries}, ensure_ascii=False, indent=2))
    elif fmt == "jsonl":
        print("\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries))
    else:
        print(f"{header['vectors']:,} vectors stored as {header['representation']} ({header['bytes_per_vector']} "
              f"bytes each)" + (f", re-ranked with {header['rescored_with']}" if header.get("rescored_with") else ""))
        for entry in entries:
            print(f"\nquery {entry['query_id']}: {entry['query']}")
            for hit in entry["hits"]:
                print(f"{hit['rank']:3d}. {hit['score']:8.4f}  {hit['id']}  {hit.get('text', '(text not stored)')}")


def main(argv: list[str] | None = None) -> list[dict]:
    config = parse_config(make_parser(), SearchConfig, argv, beam=False)[0]
    if config.k < 1 or config.candidates < 1:
        raise InputError("--k and --candidates must be positive")
    corpus = Corpus.load(config.corpus)
    rescore = Corpus.load(config.rescore) if config.rescore else None
    if rescore is not None and set(rescore.ids) != set(corpus.ids):
        raise InputError(f"--rescore {config.rescore} does not hold the same ids as {config.corpus}")
    queries = read_queries(config, corpus)
    rows, scores = find(corpus, queries.vectors, config.k, rescore, config.candidates)
    texts = corpus.texts
    if texts is None and rescore is not None and rescore.texts is not None:  # ids and vectors only: borrow texts
        texts = [rescore.texts[rescore.position[i]] for i in corpus.ids]
    entries = results(queries, corpus, rows, scores, texts)
    show(entries, config.format, {"corpus": config.corpus, "representation": corpus.representation.name,
                                  "bytes_per_vector": corpus.representation.bytes_per_vector,
                                  "vectors": len(corpus.ids), "k": config.k,
                                  "rescored_with": rescore.representation.name if rescore else None})
    return entries


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.search")
