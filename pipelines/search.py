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
import logging
from dataclasses import dataclass

import numpy as np

from core import codecs, files, reducers, search
from core.dataset import KINDS, EmbeddingDataset, iter_batches
from core.encoders import load_encoder
from core.errors import InputError
from core.machine import worker_threads
from core.textnorm import normalize

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


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="shrink search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a reduce (or embed) output directory")
    p.add_argument("--query", action="append", default=[], help="query text (repeatable)")
    p.add_argument("--query_vectors", help=".npy file of raw float32 query vectors [n, 512]")
    p.add_argument("--k", type=int, default=5, help="results per query")
    p.add_argument("--rescore", help="a second stored representation of the same corpus to re-rank with")
    p.add_argument("--candidates", type=int, default=100, help="with --rescore: first-stage candidates per query")
    p.add_argument("--encoder_threads", type=int, default=0, help="0: all cores of this machine")
    return p


def raw_queries(args: argparse.Namespace, corpus: Corpus) -> tuple[list[str], np.ndarray]:
    """(labels, raw vectors) of the queries: texts embedded with the corpus's encoder, or a .npy file."""
    if bool(args.query) == bool(args.query_vectors):
        raise InputError("give --query texts or --query_vectors, one of the two")
    if args.query_vectors:
        with files.open_read(args.query_vectors) as f:
            vectors = np.load(f, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] != corpus.dataset.manifest.get("input_dim", corpus.dataset.dim):
            raise InputError(f"{args.query_vectors}: expected [n, {corpus.dataset.manifest.get('input_dim')}] "
                             f"vectors, got {vectors.shape}")
        return [f"vector {i}" for i in range(len(vectors))], _checked(vectors.astype(np.float32), args.query_vectors)
    empty = [i for i, q in enumerate(args.query) if not normalize(q)]
    if empty:
        raise InputError(f"query {empty[0] + 1} is empty (nothing but spaces or invisible characters)")
    encoder = load_encoder(corpus.dataset.encoder, args.encoder_threads or worker_threads(1))
    return args.query, _checked(encoder.encode([normalize(q) for q in args.query]), "the encoder")


def _checked(vectors: np.ndarray, source: str) -> np.ndarray:
    """Query vectors must be finite and non-zero: a NaN ranks nothing and would return arbitrary rows."""
    bad = ~np.isfinite(vectors).all(axis=1) | ~(np.abs(vectors) > 0).any(axis=1)
    if len(vectors) == 0:
        raise InputError(f"{source}: no query vectors")
    if bad.any():
        raise InputError(f"{source}: query {int(np.argmax(bad)) + 1} holds NaN, Inf or only zeros")
    return vectors


def print_results(labels: list[str], corpus: Corpus, rows: np.ndarray, scores: np.ndarray,
                  texts: list[str] | None) -> None:
    for label, row, score in zip(labels, rows, scores):
        print(f"\nquery: {label}")
        for rank, (r, s) in enumerate(zip(row, score), 1):
            if r < 0:
                continue
            text = texts[r] if texts else "(text not stored)"
            print(f"{rank:3d}. {s:8.4f}  {corpus.ids[r][:16]:<16}  {text}")


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    if args.k < 1 or args.candidates < 1:
        raise InputError("--k and --candidates must be positive")
    corpus = Corpus.load(args.corpus)
    rescore = Corpus.load(args.rescore) if args.rescore else None
    if rescore is not None and set(rescore.ids) != set(corpus.ids):
        raise InputError(f"--rescore {args.rescore} does not hold the same ids as {args.corpus}")
    labels, raw = raw_queries(args, corpus)
    rows, scores = find(corpus, raw, args.k, rescore, args.candidates)
    texts = corpus.texts
    if texts is None and rescore is not None and rescore.texts is not None:  # ids and vectors only: borrow texts
        texts = [rescore.texts[rescore.position[i]] for i in corpus.ids]
    print(f"{len(corpus.ids):,} vectors stored as {corpus.representation.name} "
          f"({corpus.representation.bytes_per_vector} bytes each)" + (f", re-ranked with {rescore.representation.name}"
                                                                       if rescore else ""))
    print_results(labels, corpus, rows, scores, texts)
    return {"ids": [[corpus.ids[r] for r in row if r >= 0] for row in rows], "scores": scores.tolist()}


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.search")
